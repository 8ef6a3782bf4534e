//! latchd's NLM over real sockets: a server host and a client host in two
//! network namespaces, the client with Debian's rpcbind and a stand-in for
//! its lock manager that receives GRANTED callbacks and `_RES` answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use latch_nlm::proto::*;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const SERVER_IP: &str = "10.201.0.1";
const CLIENT_IP: &str = "10.201.0.2";
const SERVER_IP6: &str = "fd00:201::1";
const CLIENT_IP6: &str = "fd00:201::2";

fn server_addr() -> SocketAddr {
    format!("{SERVER_IP}:4045").parse().unwrap()
}

struct World {
    server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
    latchd: Option<Daemon>,
    _rpcbind: Daemon,
}

fn xid() -> u32 {
    static X: AtomicU32 = AtomicU32::new(0x4000);
    X.fetch_add(1, Ordering::Relaxed)
}

impl World {
    fn new(cfg: &str) -> World {
        let (server, client) = (Netns::new(), Netns::new());
        link(&server, &client, SERVER_IP, CLIENT_IP);
        for (ns, ip) in [(&server, SERVER_IP6), (&client, CLIENT_IP6)] {
            run_ok(std::process::Command::new("ip").args([
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                "veth0",
                "nodad",
            ]));
        }
        // sm-notify and statd turn addresses into names: give both hosts some.
        for ns in [&server, &client] {
            ns.hosts(&[(CLIENT_IP, "client"), (SERVER_IP, "server")]);
        }
        let dir = tempdir();
        let rpcbind =
            client.spawn_private_run(&["rpcbind", "-f", "-w"], &dir.path().join("rpcbind.log"));
        for _ in 0..100 {
            if client
                .run_beside(&rpcbind, &["rpcinfo", "-p"])
                .status
                .success()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut w = World {
            server,
            client,
            dir,
            latchd: None,
            _rpcbind: rpcbind,
        };
        w.start_latchd(cfg);
        w
    }

    fn start_latchd(&mut self, cfg: &str) {
        let path = self.dir.path().join("latchd.toml");
        std::fs::write(&path, format!("[nsm]\nnames = [\"{SERVER_IP}\"]\n{cfg}\n")).unwrap();
        let state = self.dir.path().join("state");
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut d = self.server.spawn_private_run(
            &[
                LATCHD,
                "--config",
                path.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ],
            &self.dir.path().join(format!("latchd-{n}.log")),
        );
        wait_ready(
            &self.server,
            "127.0.0.1:4045".parse().unwrap(),
            PROGRAM,
            4,
            &mut d,
        );
        self.latchd = Some(d);
    }

    fn kill_latchd(&mut self) {
        let mut d = self.latchd.take().unwrap();
        d.child.kill().unwrap();
        d.child.wait().unwrap();
    }

    fn log(&self) -> String {
        self.latchd
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }

    /// A stand-in for the client's lock manager, registered with the
    /// client's rpcbind for NLM versions 1, 3 and 4.
    fn client_lockd(&self, drop_granted: u32) -> NlmListener {
        let l = NlmListener::start(&self.client, drop_granted);
        for v in [1, 3, 4] {
            rpcb_set(&self.client, PROGRAM, v, l.port);
        }
        l
    }

    fn udp(&self) -> Client {
        let s = self
            .client
            .enter(|| UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap());
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Client::Udp(s, server_addr())
    }

    fn udp6(&self) -> Client {
        let s = self
            .client
            .enter(|| UdpSocket::bind(format!("[{CLIENT_IP6}]:0")).unwrap());
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Client::Udp(s, format!("[{SERVER_IP6}]:4045").parse().unwrap())
    }

    fn tcp(&self, v6: bool) -> Client {
        let to: SocketAddr = if v6 {
            format!("[{SERVER_IP6}]:4045")
        } else {
            format!("{SERVER_IP}:4045")
        }
        .parse()
        .unwrap();
        Client::Tcp(self.client.tcp(to).unwrap())
    }
}

enum Client {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl Client {
    /// Calls and returns the results; panics on an RPC-level error.
    fn call_xid(&mut self, xid: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
        let msg = call_bytes(xid, PROGRAM, vers, proc_, args);
        let reply = match self {
            Client::Udp(s, to) => udp_call_retry(s, *to, &msg),
            Client::Tcp(t) => tcp_call(t, &msg).expect("TCP reply"),
        };
        results(&reply).to_vec()
    }

    fn call(&mut self, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
        self.call_xid(xid(), vers, proc_, args)
    }

    fn lock(&mut self, vers: u32, a: &LockArgs) -> Stat {
        decode::<Res>(&self.call(vers, LOCK, &encode(a, vers)), vers)
            .unwrap()
            .stat
    }

    fn unlock(&mut self, vers: u32, l: &Lock) -> Stat {
        let a = UnlockArgs {
            cookie: cookie(b"u"),
            lock: l.clone(),
        };
        decode::<Res>(&self.call(vers, UNLOCK, &encode(&a, vers)), vers)
            .unwrap()
            .stat
    }

    fn test(&mut self, vers: u32, l: &Lock, excl: bool) -> TestRes {
        let a = TestArgs {
            cookie: cookie(b"t"),
            exclusive: excl,
            lock: l.clone(),
        };
        decode::<TestRes>(&self.call(vers, TEST, &encode(&a, vers)), vers).unwrap()
    }

    fn cancel(&mut self, vers: u32, l: &Lock, excl: bool) -> Stat {
        let a = CancArgs {
            cookie: cookie(b"c"),
            block: true,
            exclusive: excl,
            lock: l.clone(),
        };
        decode::<Res>(&self.call(vers, CANCEL, &encode(&a, vers)), vers)
            .unwrap()
            .stat
    }
}

fn cookie(b: &[u8]) -> Netobj {
    Netobj::from_slice(b).unwrap()
}

fn lk(host: &str, svid: u32, fh: &[u8], offset: u64, len: u64) -> Lock {
    Lock {
        caller_name: Name::from_text(host).unwrap(),
        fh: Netobj::from_slice(fh).unwrap(),
        oh: Netobj::from_slice(format!("{host}-{svid}").as_bytes()).unwrap(),
        svid,
        offset,
        len,
    }
}

fn la(l: &Lock, excl: bool, block: bool) -> LockArgs {
    LockArgs {
        cookie: cookie(b"k"),
        block,
        exclusive: excl,
        lock: l.clone(),
        reclaim: false,
        state: 0,
    }
}

/// What the client's lock manager was called with.
#[derive(Debug, Clone)]
struct Got {
    vers: u32,
    proc_: u32,
    args: Vec<u8>,
    at: Instant,
}

/// Answers GRANTED with `granted` (after ignoring the first `drop_granted`
/// of them, as if they were lost) and everything else with void.
struct NlmListener {
    port: u16,
    calls: std::sync::mpsc::Receiver<Got>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl NlmListener {
    fn start(ns: &Netns, drop_granted: u32) -> NlmListener {
        let s = ns.enter(|| UdpSocket::bind("0.0.0.0:0").unwrap());
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = s.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut dropped = 0;
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(call) = latch_oncrpc::msg::parse_call(&buf[..n]) else {
                    continue;
                };
                let got = Got {
                    vers: call.vers,
                    proc_: call.proc_,
                    args: call.args.to_vec(),
                    at: Instant::now(),
                };
                let _ = tx.send(got);
                let mut w = latch_xdr::Writer::new();
                latch_oncrpc::msg::write_accepted_prefix(&mut w, call.xid);
                w.put_u32(0);
                if call.proc_ == GRANTED {
                    if dropped < drop_granted {
                        dropped += 1;
                        continue;
                    }
                    let a: TestArgs = decode(call.args, call.vers).unwrap();
                    Res {
                        cookie: a.cookie,
                        stat: Stat::Granted,
                    }
                    .encode_v(&mut w, call.vers);
                }
                let _ = s.send_to(w.as_bytes(), from);
            }
        });
        NlmListener {
            port,
            calls: rx,
            stop,
        }
    }

    /// The next call of procedure `proc_`, skipping others.
    fn next_of(&self, proc_: u32, secs: u64) -> Option<Got> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.calls.recv_timeout(left) {
                Ok(g) if g.proc_ == proc_ => return Some(g),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for NlmListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn share_args(host: &str, access: u32, mode: u32) -> ShareArgs {
    ShareArgs {
        cookie: cookie(b"s"),
        share: ShareLock {
            caller_name: Name::from_text(host).unwrap(),
            // "sA<tag>" and "sB<tag>" share a file; other tags do not.
            fh: Netobj::from_slice(format!("shared-{}", &host[2..]).as_bytes()).unwrap(),
            oh: Netobj::from_slice(host.as_bytes()).unwrap(),
            mode,
            access,
        },
        reclaim: false,
    }
}

/// The whole protocol, once per version and transport and address family.
fn every_procedure(c: &mut Client, vers: u32, tag: &str) {
    let fh = format!("file-{tag}");
    let fh = fh.as_bytes();
    let (a, b) = (lk("hostA", 1, fh, 0, 100), lk("hostB", 2, fh, 50, 100));
    assert!(c.call(vers, NULL, &[]).is_empty());
    assert_eq!(c.test(vers, &a, true).stat, Stat::Granted, "{tag}");
    let res: Res = decode(
        &c.call(vers, LOCK, &encode(&la(&a, true, false), vers)),
        vers,
    )
    .unwrap();
    assert_eq!(
        (res.stat, res.cookie.as_bytes()),
        (Stat::Granted, &b"k"[..]),
        "{tag}"
    );
    let t = c.test(vers, &b, false);
    assert_eq!(t.stat, Stat::Denied, "{tag}");
    assert_eq!(
        t.holder.as_ref().map(|h| (h.svid, h.offset, h.len)),
        Some((1, 0, 100))
    );
    assert_eq!(c.lock(vers, &la(&b, false, false)), Stat::Denied, "{tag}");
    assert_eq!(
        c.cancel(vers, &b, false),
        Stat::Granted,
        "cancel of nothing: {tag}"
    );
    assert_eq!(c.unlock(vers, &a), Stat::Granted, "{tag}");
    assert_eq!(c.lock(vers, &la(&b, false, false)), Stat::Granted, "{tag}");
    assert_eq!(c.unlock(vers, &b), Stat::Granted, "{tag}");
    if vers >= 3 {
        let sh = |c: &mut Client, a: &ShareArgs, p| {
            decode::<ShareRes>(&c.call(vers, p, &encode(a, vers)), vers).unwrap()
        };
        let s1 = share_args(&format!("sA{tag}"), 3, 2);
        let r = sh(c, &s1, SHARE);
        assert_eq!(
            (r.stat, r.cookie.as_bytes()),
            (Stat::Granted, &b"s"[..]),
            "{tag}"
        );
        assert_eq!(
            sh(c, &share_args(&format!("sB{tag}"), 2, 0), SHARE).stat,
            Stat::Denied,
            "{tag}"
        );
        assert_eq!(sh(c, &s1, UNSHARE).stat, Stat::Granted, "{tag}");
        assert_eq!(
            sh(c, &share_args(&format!("sB{tag}"), 2, 0), SHARE).stat,
            Stat::Granted,
            "{tag}"
        );
        let n = lk("hostN", 3, fh, 0, 1);
        let r: Res = decode(
            &c.call(vers, NM_LOCK, &encode(&la(&n, true, true), vers)),
            vers,
        )
        .unwrap();
        assert_eq!(r.stat, Stat::Granted, "{tag}");
        let fa = FreeAllArgs {
            name: latch_xdr::XdrString::from_text("hostN").unwrap(),
            state: 2,
        };
        assert!(c.call(vers, FREE_ALL, &encode(&fa, vers)).is_empty());
        assert_eq!(
            c.test(vers, &lk("hostZ", 9, fh, 0, 1), true).stat,
            Stat::Granted,
            "FREE_ALL freed: {tag}"
        );
    }
}

#[test]
fn every_procedure_of_every_version_over_udp_and_tcp_on_ipv4_and_ipv6() {
    let w = World::new("");
    for vers in [1, 2, 3, 4] {
        every_procedure(&mut w.udp(), vers, &format!("udp4-v{vers}"));
        every_procedure(&mut w.tcp(false), vers, &format!("tcp4-v{vers}"));
        every_procedure(&mut w.udp6(), vers, &format!("udp6-v{vers}"));
        every_procedure(&mut w.tcp(true), vers, &format!("tcp6-v{vers}"));
    }
}

#[test]
fn a_blocked_lock_is_granted_by_callback_to_the_clients_lock_manager() {
    let w = World::new("");
    let lockd = w.client_lockd(0);
    let mut c = w.udp();
    let (a, b) = (lk("h1", 1, b"f", 0, 0), lk("h2", 2, b"f", 10, 5));
    for vers in [4, 1] {
        assert_eq!(c.lock(vers, &la(&a, true, false)), Stat::Granted);
        assert_eq!(c.lock(vers, &la(&b, true, true)), Stat::Blocked);
        let unlocked = Instant::now();
        assert_eq!(c.unlock(vers, &a), Stat::Granted);
        let g = lockd
            .next_of(GRANTED, 10)
            .unwrap_or_else(|| panic!("no GRANTED: {}", w.log()));
        assert_eq!(g.vers, vers, "called back in the version of the LOCK");
        let args: TestArgs = decode(&g.args, g.vers).unwrap();
        assert_eq!(
            (
                args.lock.svid,
                args.lock.offset,
                args.lock.len,
                args.exclusive
            ),
            (2, 10, 5, true)
        );
        assert_eq!(args.lock.oh.as_bytes(), b"h2-2");
        eprintln!(
            "v{vers}: release to GRANTED received in {:?}",
            g.at - unlocked
        );
        // h2 now holds it.
        assert_eq!(
            c.test(vers, &lk("h3", 3, b"f", 10, 1), true).stat,
            Stat::Denied
        );
        assert_eq!(c.unlock(vers, &b), Stat::Granted);
    }
}

#[test]
fn a_lost_callback_is_retried_and_the_clients_retransmitted_lock_is_granted() {
    let w = World::new("");
    // The first two GRANTED callbacks are "lost".
    let lockd = w.client_lockd(2);
    let mut c = w.udp();
    let (a, b) = (lk("h1", 1, b"f", 0, 0), lk("h2", 2, b"f", 0, 0));
    c.lock(4, &la(&a, true, false));
    assert_eq!(c.lock(4, &la(&b, true, true)), Stat::Blocked);
    c.unlock(4, &a);
    let first = lockd.next_of(GRANTED, 10).expect("a first GRANTED");
    // The client re-sends its blocked LOCK, as Linux does every 30 s.
    assert_eq!(c.lock(4, &la(&b, true, true)), Stat::Granted);
    // The server keeps trying until the client acknowledges (the third).
    let second = lockd.next_of(GRANTED, 10).expect("a retry");
    let third = lockd.next_of(GRANTED, 10).expect("another retry");
    assert_eq!(first.args, second.args, "same callback, same cookie");
    assert_eq!(second.args, third.args);
    assert!(lockd.next_of(GRANTED, 3).is_none(), "acknowledged: no more");
}

#[test]
fn cancel_racing_with_the_grant_leaves_no_lock_behind() {
    let w = World::new("");
    let lockd = w.client_lockd(100);
    let mut c = w.udp();
    let (a, b) = (lk("h1", 1, b"f", 0, 0), lk("h2", 2, b"f", 0, 0));
    c.lock(4, &la(&a, true, false));
    assert_eq!(c.lock(4, &la(&b, true, true)), Stat::Blocked);
    c.unlock(4, &a);
    lockd.next_of(GRANTED, 10).expect("GRANTED on its way");
    // h2 gave up (a signal) before the callback reached it.
    assert_eq!(c.cancel(4, &b, true), Stat::Granted);
    assert_eq!(
        c.test(4, &lk("h3", 3, b"f", 0, 0), true).stat,
        Stat::Granted,
        "h2 holds nothing"
    );
    assert_eq!(
        c.lock(4, &la(&lk("h3", 3, b"f", 0, 0), true, false)),
        Stat::Granted
    );
}

#[test]
fn async_msg_flows_answer_with_res_calls_and_granted_msg() {
    let w = World::new("");
    let lockd = w.client_lockd(0);
    let mut c = w.udp();
    let (a, b) = (lk("h1", 1, b"f", 0, 0), lk("h2", 2, b"f", 0, 0));
    let mut msg = la(&a, true, false);
    msg.cookie = cookie(b"m1");
    c.call(4, LOCK_MSG, &encode(&msg, 4));
    let r = lockd.next_of(LOCK_RES, 10).unwrap();
    let res: Res = decode(&r.args, 4).unwrap();
    assert_eq!(
        (res.stat, res.cookie.as_bytes()),
        (Stat::Granted, &b"m1"[..])
    );
    let t = TestArgs {
        cookie: cookie(b"m2"),
        exclusive: true,
        lock: b.clone(),
    };
    c.call(4, TEST_MSG, &encode(&t, 4));
    let r: TestRes = decode(&lockd.next_of(TEST_RES, 10).unwrap().args, 4).unwrap();
    assert_eq!((r.stat, r.cookie.as_bytes()), (Stat::Denied, &b"m2"[..]));
    let mut bm = la(&b, true, true);
    bm.cookie = cookie(b"m3");
    c.call(4, LOCK_MSG, &encode(&bm, 4));
    let r: Res = decode(&lockd.next_of(LOCK_RES, 10).unwrap().args, 4).unwrap();
    assert_eq!(r.stat, Stat::Blocked);
    let u = UnlockArgs {
        cookie: cookie(b"m4"),
        lock: a,
    };
    c.call(4, UNLOCK_MSG, &encode(&u, 4));
    let g = lockd
        .next_of(GRANTED_MSG, 10)
        .expect("GRANTED_MSG for a LOCK_MSG client");
    let ga: TestArgs = decode(&g.args, 4).unwrap();
    // The client answers with GRANTED_RES carrying the server's cookie.
    let ack = Res {
        cookie: ga.cookie,
        stat: Stat::Granted,
    };
    c.call(4, GRANTED_RES, &encode(&ack, 4));
    assert!(lockd.next_of(GRANTED_MSG, 3).is_none(), "acknowledged");
    let cm = CancArgs {
        cookie: cookie(b"m5"),
        block: false,
        exclusive: true,
        lock: b,
    };
    c.call(4, CANCEL_MSG, &encode(&cm, 4));
    let r: Res = decode(&lockd.next_of(CANCEL_RES, 10).unwrap().args, 4).unwrap();
    assert_eq!(r.cookie.as_bytes(), b"m5");
}

#[test]
fn a_retransmission_after_a_state_change_is_answered_from_the_cache() {
    let w = World::new("");
    let mut c = w.udp();
    let (a, b) = (lk("h1", 1, b"f", 0, 0), lk("h2", 2, b"f", 0, 0));
    c.lock(4, &la(&a, true, false));
    let args = encode(&la(&b, true, false), 4);
    let first = c.call_xid(99, 4, LOCK, &args);
    c.unlock(4, &a);
    let again = c.call_xid(99, 4, LOCK, &args);
    assert_eq!(first, again);
    assert_eq!(decode::<Res>(&again, 4).unwrap().stat, Stat::Denied);
    // A retransmitted UNLOCK after someone else locked: still "granted",
    // and it does not unlock the newcomer's lock.
    let ua = encode(
        &UnlockArgs {
            cookie: cookie(b"u"),
            lock: a.clone(),
        },
        4,
    );
    c.call_xid(100, 4, UNLOCK, &ua);
    assert_eq!(c.lock(4, &la(&b, true, false)), Stat::Granted);
    c.call_xid(100, 4, UNLOCK, &ua);
    assert_eq!(c.test(4, &lk("h3", 3, b"f", 0, 0), true).stat, Stat::Denied);
}

#[test]
fn reboot_detected_by_state_number_drops_old_locks() {
    let w = World::new("");
    let mut c = w.udp();
    let mut old = la(&lk("h1", 1, b"f1", 0, 0), true, false);
    old.state = 11;
    assert_eq!(c.lock(4, &old), Stat::Granted);
    let mut new = la(&lk("h1", 7, b"f2", 0, 0), true, false);
    new.state = 13;
    assert_eq!(c.lock(4, &new), Stat::Granted);
    assert_eq!(
        c.test(4, &lk("h3", 3, b"f1", 0, 0), true).stat,
        Stat::Granted
    );
    assert_eq!(
        c.test(4, &lk("h3", 3, b"f2", 0, 0), true).stat,
        Stat::Denied
    );
}

#[test]
fn after_a_crash_only_reclaims_are_accepted_and_grace_ends_early() {
    let mut w = World::new("[nlm]\ngrace_ms = 60000");
    let mut c = w.udp();
    let a = lk("h1", 1, b"f", 0, 0);
    assert_eq!(c.lock(4, &la(&a, true, false)), Stat::Granted);
    w.kill_latchd();
    let restarted = Instant::now();
    w.start_latchd("[nlm]\ngrace_ms = 60000");
    let mut c = w.udp();
    let other = lk("h2", 2, b"f", 0, 0);
    assert_eq!(c.lock(4, &la(&other, true, false)), Stat::DeniedGracePeriod);
    assert_eq!(c.test(4, &other, true).stat, Stat::DeniedGracePeriod);
    let mut re = la(&a, true, false);
    re.reclaim = true;
    assert_eq!(c.lock(4, &re), Stat::Granted);
    // h1 is back to business: its recovery is over, and it was the only
    // host, so grace ends long before its 60 s.
    let mut ended = false;
    while restarted.elapsed() < Duration::from_secs(20) {
        if c.lock(4, &la(&other, true, false)) != Stat::DeniedGracePeriod {
            ended = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ended, "grace did not end early: {}", w.log());
    assert_eq!(
        c.lock(4, &la(&other, true, false)),
        Stat::Denied,
        "the reclaimed lock holds"
    );
    eprintln!("grace ended {:?} after the restart", restarted.elapsed());
}

/// rpc.statd from nfs-common as latchd's status monitor: a lock makes statd
/// monitor the client, and sm-notify announcing the client's reboot frees
/// its locks.
#[test]
fn with_the_system_rpc_statd_a_clients_reboot_frees_its_locks() {
    let (server, client) = (Netns::new(), Netns::new());
    link(&server, &client, SERVER_IP, CLIENT_IP);
    client.hosts(&[(CLIENT_IP, "client"), (SERVER_IP, "server")]);
    server.hosts(&[(CLIENT_IP, "client"), (SERVER_IP, "server")]);
    let dir = tempdir();
    let sm = dir.path().join("statd");
    for sub in ["sm", "sm.bak"] {
        std::fs::create_dir_all(sm.join(sub)).unwrap();
    }
    let rpcbind =
        server.spawn_private_run(&["rpcbind", "-f", "-w"], &dir.path().join("rpcbind.log"));
    std::thread::sleep(Duration::from_millis(300));
    let statd = server.spawn_beside(
        &rpcbind,
        &[
            "rpc.statd",
            "-F",
            "-d",
            "-L",
            "-P",
            sm.to_str().unwrap(),
            "-n",
            "server",
        ],
        &dir.path().join("statd.log"),
    );
    assert!(
        wait_listed(&server, &rpcbind, "100024").1,
        "{}",
        statd.log_text()
    );
    let state = dir.path().join("state");
    let mut d = server.spawn_beside(
        &rpcbind,
        &[
            LATCHD,
            "--rpcbind",
            "system",
            "--state-dir",
            state.to_str().unwrap(),
            "--config",
            &{
                let p = dir.path().join("l.toml");
                std::fs::write(&p, "[nsm]\nmode = \"system\"\n").unwrap();
                p.to_str().unwrap().to_string()
            },
        ],
        &dir.path().join("latchd.log"),
    );
    wait_ready(
        &server,
        "127.0.0.1:4045".parse().unwrap(),
        PROGRAM,
        4,
        &mut d,
    );
    let s = client.enter(|| UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap());
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut c = Client::Udp(s, server_addr());
    let l = lk("client", 1, b"f", 0, 0);
    assert_eq!(c.lock(4, &la(&l, true, false)), Stat::Granted);
    // statd now monitors "client" (it writes a file per monitored host).
    let mut monitored = false;
    for _ in 0..100 {
        if std::fs::read_dir(sm.join("sm")).unwrap().count() > 0 {
            monitored = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        monitored,
        "statd was not asked to monitor: {}\n{}",
        statd.log_text(),
        d.log_text()
    );
    // The client reboots: its sm-notify tells the server's statd.
    let cdir = dir.path().join("client-sm");
    let crpcbind =
        client.spawn_private_run(&["rpcbind", "-f", "-w"], &dir.path().join("crpcbind.log"));
    std::thread::sleep(Duration::from_millis(300));
    client_monitors(&client, &crpcbind, &cdir, "server");
    let out = sm_notify(&client, &crpcbind, &cdir, CLIENT_IP, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut freed = false;
    for _ in 0..100 {
        if c.test(4, &lk("other", 2, b"f", 0, 0), true).stat == Stat::Granted {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        freed,
        "locks not freed:\nstatd: {}\nlatchd: {}",
        statd.log_text(),
        d.log_text()
    );
}

/// Latch's own NSM: the lock makes it monitor the client; the client's
/// sm-notify frees the locks.
#[test]
fn with_latchs_own_nsm_a_clients_sm_notify_frees_its_locks() {
    let w = World::new("");
    w.client
        .hosts(&[(CLIENT_IP, "client"), (SERVER_IP, "server")]);
    let mut c = w.udp();
    let l = lk(CLIENT_IP, 1, b"f", 0, 0);
    assert_eq!(c.lock(4, &la(&l, true, false)), Stat::Granted);
    // Give the monitor request (off the lock path) a moment.
    let store = w.dir.path().join("state").join("nsm");
    let mut monitored = false;
    for _ in 0..100 {
        let p = latch_nsm::store::FileStore::open(&store)
            .and_then(|mut s| latch_nsm::Storage::load(&mut s));
        if p.is_ok_and(|p| !p.monitored.is_empty()) {
            monitored = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(monitored, "{}", w.log());
    client_reboots(&w);
    assert!(freed(&mut c, b"f"), "locks not freed: {}", w.log());
}

/// The client "reboots": its rpc.statd records the server, then sm-notify
/// tells the server. The client's new NSM state.
fn client_reboots(w: &World) -> u32 {
    let cdir = w.dir.path().join("client-sm");
    client_monitors(&w.client, &w._rpcbind, &cdir, SERVER_IP);
    let out = sm_notify(&w.client, &w._rpcbind, &cdir, CLIENT_IP, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = std::fs::read(cdir.join("state")).unwrap();
    u32::from_ne_bytes(raw[..4].try_into().unwrap())
}

/// Whether `file` comes free for another owner within ten seconds.
fn freed(c: &mut Client, file: &[u8]) -> bool {
    for _ in 0..100 {
        if c.test(4, &lk("other", 2, file, 0, 0), true).stat == Stat::Granted {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Latch's own NSM keeps a reboot notice about a client nobody watches
/// yet. When a LOCK of the client's start before that (late in the
/// network) then makes the lock manager watch it, the notice is delivered,
/// marked late: that lock goes, a copy of such a LOCK is refused, and the
/// new start's is granted (seed 0x2176d).
#[test]
fn with_latchs_own_nsm_a_notice_before_the_watch_is_delivered_late() {
    let w = World::new("");
    w.client
        .hosts(&[(CLIENT_IP, "client"), (SERVER_IP, "server")]);
    let state = client_reboots(&w);
    assert!(state >= 3, "client state {state}");
    let mut c = w.udp();
    let mut old = la(&lk(CLIENT_IP, 1, b"f", 0, 0), true, false);
    old.state = state - 2;
    assert_eq!(c.lock(4, &old), Stat::Granted, "{}", w.log());
    assert!(
        freed(&mut c, b"f"),
        "the late notice freed nothing: {}",
        w.log()
    );
    let mut copy = la(&lk(CLIENT_IP, 3, b"g", 0, 0), true, false);
    copy.state = state - 2;
    assert_eq!(
        c.lock(4, &copy),
        Stat::Denied,
        "a request of the dead start"
    );
    let mut new = la(&lk(CLIENT_IP, 1, b"h", 0, 0), true, false);
    new.state = state;
    assert_eq!(c.lock(4, &new), Stat::Granted);
    assert_eq!(
        c.test(4, &lk("other", 2, b"h", 0, 0), true).stat,
        Stat::Denied,
        "the new start's lock stays"
    );
}

/// Makes a real rpc.statd on the client monitor `server` (as the client's
/// kernel does when it first locks there), leaving the record in `dir` that
/// sm-notify reads after the client "reboots"; then stops that statd.
fn client_monitors(client: &Netns, rpcbind: &Daemon, dir: &Path, server: &str) {
    for sub in ["sm", "sm.bak"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let mut statd = client.spawn_beside(
        rpcbind,
        &[
            "rpc.statd",
            "-F",
            "-d",
            "-L",
            "-P",
            dir.to_str().unwrap(),
            "-n",
            "client",
        ],
        &dir.join("statd.log"),
    );
    let port = if wait_listed(client, rpcbind, "100024").1 {
        rpcb_getport(client, 100_024, 1)
    } else {
        0
    };
    assert_ne!(port, 0, "client statd did not start: {}", statd.log_text());
    let cs = reserved_udp(client, "127.0.0.1");
    let mon = latch_xdr::to_bytes(&latch_nsm::proto::Mon {
        mon_id: latch_nsm::proto::MonId {
            mon_name: latch_xdr::XdrString::from_text(server).unwrap(),
            my_id: latch_nsm::proto::MyId {
                my_name: latch_xdr::XdrString::from_text("localhost").unwrap(),
                my_prog: PROGRAM,
                my_vers: 3,
                my_proc: SM_NOTIFY,
            },
        },
        priv_: Default::default(),
    });
    let r = udp_call_retry(
        &cs,
        SocketAddr::new("127.0.0.1".parse().unwrap(), port),
        &call_bytes(1, 100_024, 1, 2, &mon),
    );
    let res: latch_nsm::proto::SmStatRes = latch_xdr::from_bytes(results(&r)).unwrap();
    assert_eq!(
        res.res_stat,
        latch_nsm::proto::STAT_SUCC,
        "{}",
        statd.log_text()
    );
    statd.terminate();
}
