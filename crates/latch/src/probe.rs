//! `latch probe SERVER`: what a server speaks (its rpcbind's list, the NLM
//! versions and the NSM with their ports), NULL round-trip times per NLM
//! version and transport, and a short self-test on a private file handle:
//! TEST (granted), LOCK (granted), TEST by another owner (denied), UNLOCK
//! (granted). Ends with one line, "OK: ..." or "FAIL: ...", and an exit code
//! per failure class.

use crate::bench::common::word;
use latch_nlm::proto::{
    self as nlm, decode, encode, LockArgs, Netobj, Res, Stat, TestArgs, TestRes,
};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

/// Exit codes (documented in the README).
pub mod exit {
    /// No answer from the server's rpcbind (or the name does not resolve).
    pub const UNREACHABLE: i32 = 20;
    /// rpcbind answers but lists no NLM (100021).
    pub const NLM_NOT_REGISTERED: i32 = 21;
    /// NLM is listed, but no version answers NULL (refused or silent).
    pub const VERSION_REFUSED: i32 = 22;
    /// The lock self-test gave a wrong answer (or none).
    pub const SELF_TEST_FAILED: i32 = 23;
}

const PMAP_PROG: u32 = 100_000;
const NSM_PROG: u32 = 100_024;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    prog: u32,
    vers: u32,
    prot: u32,
    port: u32,
}

fn call_msg(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + args.len());
    for w in [xid, 0, 2, prog, vers, proc_, 0, 0, 0, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(args);
    v
}

/// What an RPC reply said.
#[derive(Debug)]
enum Reply {
    Success(Vec<u8>),
    /// accept_stat PROG_MISMATCH with the versions supported.
    Mismatch(u32, u32),
    /// Denied, or another accept_stat.
    Refused(String),
}

fn parse_reply(b: &[u8], xid: u32) -> Option<Reply> {
    if word(b, 0)? != xid || word(b, 1)? != 1 {
        return None;
    }
    if word(b, 2)? != 0 {
        return Some(Reply::Refused("call denied".into()));
    }
    let verf_len = word(b, 4)? as usize;
    let at = 5 + verf_len.div_ceil(4);
    let stat = word(b, at)?;
    Some(match stat {
        0 => Reply::Success(b.get((at + 1) * 4..)?.to_vec()),
        2 => Reply::Mismatch(word(b, at + 1)?, word(b, at + 2)?),
        1 => Reply::Refused("program unavailable".into()),
        3 => Reply::Refused("procedure unavailable".into()),
        4 => Reply::Refused("garbage arguments".into()),
        s => Reply::Refused(format!("accept_stat {s}")),
    })
}

fn next_xid() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static X: AtomicU32 = AtomicU32::new(0);
    if X.load(Ordering::Relaxed) == 0 {
        X.store(latch_io::xid_seed() | 1, Ordering::Relaxed);
    }
    X.fetch_add(1, Ordering::Relaxed)
}

/// One call over UDP, retried `tries` times with `wait` each.
fn udp_call(
    to: SocketAddr,
    prog: u32,
    vers: u32,
    proc_: u32,
    args: &[u8],
    tries: u32,
    wait: Duration,
) -> std::io::Result<Option<Reply>> {
    let any: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(to)?;
    s.set_read_timeout(Some(wait))?;
    let xid = next_xid();
    let msg = call_msg(xid, prog, vers, proc_, args);
    let mut buf = vec![0u8; 65536];
    for _ in 0..tries {
        s.send(&msg)?;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match s.recv(&mut buf) {
                Ok(n) => {
                    if let Some(r) = parse_reply(&buf[..n], xid) {
                        return Ok(Some(r));
                    }
                }
                // ICMP port unreachable: nobody listens.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
                Err(_) => break,
            }
        }
    }
    Ok(None)
}

fn tcp_call(to: SocketAddr, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Option<Reply> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let xid = next_xid();
    let msg = call_msg(xid, prog, vers, proc_, args);
    let mut rec = (0x8000_0000u32 | msg.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(&msg);
    s.write_all(&rec).ok()?;
    let mut body = Vec::new();
    loop {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).ok()?;
        let mark = u32::from_be_bytes(h);
        let len = (mark & 0x7fff_ffff) as usize;
        if body.len() + len > 1 << 20 {
            return None;
        }
        let start = body.len();
        body.resize(start + len, 0);
        s.read_exact(&mut body[start..]).ok()?;
        if mark & 0x8000_0000 != 0 {
            break;
        }
    }
    parse_reply(&body, xid)
}

/// PMAPPROC_DUMP's list.
fn parse_dump(b: &[u8]) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut i = 0;
    while word(b, i) == Some(1) && out.len() < 4096 {
        let (Some(prog), Some(vers), Some(prot), Some(port)) = (
            word(b, i + 1),
            word(b, i + 2),
            word(b, i + 3),
            word(b, i + 4),
        ) else {
            break;
        };
        out.push(Mapping {
            prog,
            vers,
            prot,
            port,
        });
        i += 5;
    }
    out
}

fn resolve(server: &str) -> Option<IpAddr> {
    if let Ok(ip) = server.parse() {
        return Some(ip);
    }
    (server, 0).to_socket_addrs().ok()?.next().map(|a| a.ip())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn our_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // when the name fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "latch-probe".into()
    } else {
        name
    }
}

/// Runs the probe; returns the exit code.
pub fn run(server: &str) -> i32 {
    let fail = |code: i32, msg: String| {
        println!("FAIL: {msg}");
        code
    };
    let Some(ip) = resolve(server) else {
        return fail(
            exit::UNREACHABLE,
            format!("{server}: cannot resolve the name"),
        );
    };
    let pmap = SocketAddr::new(ip, 111);
    let t0 = Instant::now();
    let dump = match udp_call(pmap, PMAP_PROG, 2, 4, &[], 3, Duration::from_secs(1)) {
        Ok(Some(Reply::Success(b))) => parse_dump(&b),
        Ok(Some(r)) => {
            return fail(
                exit::UNREACHABLE,
                format!("{pmap}: rpcbind refused DUMP ({r:?})"),
            )
        }
        Ok(None) => {
            return fail(
                exit::UNREACHABLE,
                format!(
                    "{pmap}: no answer from rpcbind (server down, firewalled, or no port mapper)"
                ),
            )
        }
        Err(e) => return fail(exit::UNREACHABLE, format!("{pmap}: {e}")),
    };
    println!(
        "rpcbind at {pmap}: {} registrations ({})",
        dump.len(),
        ms(t0.elapsed())
    );
    let mut nlm: Vec<Mapping> = dump
        .iter()
        .copied()
        .filter(|m| m.prog == nlm::PROGRAM)
        .collect();
    nlm.sort_by_key(|m| (m.vers, m.prot));
    let nsm: Vec<Mapping> = dump
        .iter()
        .copied()
        .filter(|m| m.prog == NSM_PROG)
        .collect();
    let proto = |p: u32| match p {
        IPPROTO_UDP => "udp",
        IPPROTO_TCP => "tcp",
        _ => "?",
    };
    for m in &nlm {
        println!("  NLM v{} {} port {}", m.vers, proto(m.prot), m.port);
    }
    if nsm.is_empty() {
        println!("  NSM (100024): not registered (reboot recovery will not work)");
    }
    for m in &nsm {
        println!("  NSM v{} {} port {}", m.vers, proto(m.prot), m.port);
    }
    if nlm.is_empty() {
        return fail(
            exit::NLM_NOT_REGISTERED,
            format!("{server}: rpcbind lists no NLM (100021): is the lock manager running?"),
        );
    }
    // NULL per version and transport.
    let mut working: Vec<(u32, SocketAddr)> = Vec::new();
    let mut refused = Vec::new();
    for m in &nlm {
        let Ok(port) = u16::try_from(m.port) else {
            continue;
        };
        let to = SocketAddr::new(ip, port);
        let t = Instant::now();
        let r = match m.prot {
            IPPROTO_UDP => udp_call(
                to,
                nlm::PROGRAM,
                m.vers,
                nlm::NULL,
                &[],
                3,
                Duration::from_millis(700),
            )
            .ok()
            .flatten(),
            IPPROTO_TCP => tcp_call(to, nlm::PROGRAM, m.vers, nlm::NULL, &[]),
            _ => continue,
        };
        let took = t.elapsed();
        match r {
            Some(Reply::Success(_)) => {
                println!("  NULL v{} {}: {}", m.vers, proto(m.prot), ms(took));
                if m.prot == IPPROTO_UDP {
                    working.push((m.vers, to));
                }
            }
            Some(Reply::Mismatch(lo, hi)) => {
                println!(
                    "  NULL v{} {}: version refused (server has {lo}..{hi})",
                    m.vers,
                    proto(m.prot)
                );
                refused.push(m.vers);
            }
            Some(Reply::Refused(why)) => {
                println!("  NULL v{} {}: {why}", m.vers, proto(m.prot));
                refused.push(m.vers);
            }
            None => {
                println!("  NULL v{} {}: no answer", m.vers, proto(m.prot));
                refused.push(m.vers);
            }
        }
    }
    // The self-test speaks the highest of 4, 3, 1 that answered over UDP.
    let Some(&(vers, to)) = [4, 3, 1]
        .iter()
        .find_map(|v| working.iter().find(|(w, _)| w == v))
    else {
        return fail(
            exit::VERSION_REFUSED,
            format!("{server}: no NLM version (4, 3 or 1) answers NULL over UDP"),
        );
    };
    match self_test(to, vers) {
        Ok(took) => {
            println!(
                "OK: {server} speaks NLM v{}{}; TEST/LOCK/TEST/UNLOCK over v{vers} UDP in {}",
                nlm.iter()
                    .map(|m| m.vers.to_string())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join("/v"),
                if nsm.is_empty() {
                    ", no NSM"
                } else {
                    " and NSM"
                },
                ms(took)
            );
            0
        }
        Err(e) => fail(
            exit::SELF_TEST_FAILED,
            format!("{server}: self-test over NLM v{vers}: {e}"),
        ),
    }
}

fn self_test(to: SocketAddr, vers: u32) -> Result<Duration, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let fh = format!("latch-probe-{}-{nanos:08x}", std::process::id());
    let caller = our_name();
    let obj = |b: &[u8]| Netobj::from_slice(b).map_err(|_| "handle too long".to_string());
    let name = nlm::Name::from_text(&caller).map_err(|_| "host name too long".to_string())?;
    let lock = |svid: u32| -> Result<nlm::Lock, String> {
        Ok(nlm::Lock {
            caller_name: name.clone(),
            fh: obj(fh.as_bytes())?,
            oh: obj(format!("latch-probe-{svid}").as_bytes())?,
            svid,
            offset: 0,
            len: 0,
        })
    };
    let (mine, other) = (lock(1)?, lock(2)?);
    let cookie = obj(b"probe")?;
    let call = |proc_: u32, args: Vec<u8>| -> Result<Vec<u8>, String> {
        match udp_call(
            to,
            nlm::PROGRAM,
            vers,
            proc_,
            &args,
            4,
            Duration::from_millis(700),
        ) {
            Ok(Some(Reply::Success(b))) => Ok(b),
            Ok(Some(r)) => Err(format!("{r:?}")),
            Ok(None) => Err("no answer".into()),
            Err(e) => Err(e.to_string()),
        }
    };
    let test = |l: &nlm::Lock, what: &str| -> Result<Stat, String> {
        let a = TestArgs {
            cookie: cookie.clone(),
            exclusive: true,
            lock: l.clone(),
        };
        let r: TestRes = decode(&call(nlm::TEST, encode(&a, vers))?, vers)
            .map_err(|e| format!("{what}: undecodable answer: {e:?}"))?;
        Ok(r.stat)
    };
    let expect = |what: &str, got: Stat, want: Stat| -> Result<(), String> {
        if got == want {
            println!("  {what}: {got:?}");
            Ok(())
        } else if got == Stat::DeniedGracePeriod {
            Err(format!(
                "{what}: the server is in its grace period (try again later)"
            ))
        } else {
            Err(format!("{what}: expected {want:?}, got {got:?}"))
        }
    };
    let t = Instant::now();
    expect(
        "TEST on a private file",
        test(&mine, "TEST")?,
        Stat::Granted,
    )?;
    let la = LockArgs {
        cookie: cookie.clone(),
        block: false,
        exclusive: true,
        lock: mine.clone(),
        reclaim: false,
        state: 0,
    };
    let r: Res = decode(&call(nlm::LOCK, encode(&la, vers))?, vers)
        .map_err(|e| format!("LOCK: undecodable answer: {e:?}"))?;
    expect("LOCK", r.stat, Stat::Granted)?;
    let other_test = test(&other, "TEST");
    let ua = nlm::UnlockArgs { cookie, lock: mine };
    let unlock: Result<Res, String> = call(nlm::UNLOCK, encode(&ua, vers))
        .and_then(|b| decode(&b, vers).map_err(|e| format!("UNLOCK: undecodable answer: {e:?}")));
    // Report the second TEST only after unlocking, so a failure leaves no lock.
    expect("TEST by another owner", other_test?, Stat::Denied)?;
    expect("UNLOCK", unlock?.stat, Stat::Granted)?;
    Ok(t.elapsed())
}
