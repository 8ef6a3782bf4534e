//! `latch bench lock`: LOCK+UNLOCK pairs per second with K clients, on
//! distinct files, on distinct ranges of one file, and contended on one
//! range (each pair waits for its GRANTED callback), with the same server's
//! NULL rate measured in the same run as the ceiling.
//!
//! A pair is two round trips, so the ceiling for pairs is half the NULL
//! rate. The same client threads alternate between two NULL calls back to
//! back and pairs, over one connection each, in slices of each cell (see
//! [`alternating`]), so both figures see the same machine. Per cell:
//! pairs/s and pair latency, NULL calls/s and the p50 of two NULL round
//! trips (`2NULL50`), `rate` = pairs/s / (NULL/s / 2), `lat` = pair p50
//! / `2NULL50`, and `mlat`, the same ratio of mean latencies.
//! For the contended case the hand-off time is also reported: from the
//! moment the holder sends UNLOCK to the moment the next waiter's GRANTED
//! arrives.

use super::common::{alternating, is_success, null_call, word, Cell, Conn, Proto, Target};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use latch_nlm::proto::{self as nlm, LockArgs, Netobj, Res, Stat, TestArgs, UnlockArgs};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Files,
    Ranges,
    Contended,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Files => "files",
            Workload::Ranges => "ranges",
            Workload::Contended => "contended",
        }
    }
}

/// What every worker shares.
struct Shared {
    server: SocketAddr,
    caller: String,
    /// Makes file names unique per measurement, so nothing left from one
    /// cell (a lock whose UNLOCK was cut short) disturbs the next.
    cell: u32,
    callbacks: Option<Arc<Callbacks>>,
}

const VERS: u32 = 4;

fn call_bytes(xid: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + args.len());
    for w in [xid, 0, 2, nlm::PROGRAM, VERS, proc_, 0, 0, 0, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(args);
    v
}

/// The NLM status in a reply to `xid`, if it is a successful one.
fn status(reply: &[u8], xid: u32) -> Option<Stat> {
    if word(reply, 0)? != xid || word(reply, 5)? != 0 {
        return None;
    }
    nlm::decode::<Res>(reply.get(24..)?, VERS)
        .ok()
        .map(|r| r.stat)
}

fn lock_of(sh: &Shared, w: Workload, i: usize) -> nlm::Lock {
    let (file, offset) = match w {
        Workload::Files => (format!("bench-{}-file-{i}", sh.cell), 0),
        Workload::Ranges => ("bench-ranges".to_string(), i as u64 * 100),
        Workload::Contended => ("bench-contended".to_string(), 0),
    };
    let file = format!("{file}-{}", sh.cell);
    nlm::Lock {
        caller_name: nlm::Name::from_text(&sh.caller).unwrap_or_default(),
        fh: Netobj::from_slice(file.as_bytes()).unwrap_or_default(),
        oh: Netobj::from_slice(format!("bench-{i}").as_bytes()).unwrap_or_default(),
        svid: u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1),
        offset,
        len: 10,
    }
}

/// Receives GRANTED callbacks for the contended workload: a UDP socket
/// registered with this host's rpcbind as NLM version 4.
struct Callbacks {
    waiters: Mutex<HashMap<u32, Sender<()>>>,
    /// When the current holder sent its UNLOCK (ns since `epoch`).
    last_unlock_ns: AtomicU64,
    epoch: Instant,
    handoff: Mutex<Histogram<u64>>,
}

impl Callbacks {
    fn start(rpcbind: SocketAddr) -> Result<Arc<Callbacks>> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        let port = sock.local_addr()?.port();
        let cb = Arc::new(Callbacks {
            waiters: Mutex::new(HashMap::new()),
            last_unlock_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            handoff: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        });
        register(rpcbind, port, true)?;
        let me = cb.clone();
        std::thread::spawn(move || me.serve(sock));
        Ok(cb)
    }

    fn serve(&self, sock: UdpSocket) {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(call) = latch_oncrpc::msg::parse_call(&buf[..n]) else {
                continue;
            };
            if call.proc_ != nlm::GRANTED {
                continue;
            }
            let Ok(args) = nlm::decode::<TestArgs>(call.args, call.vers) else {
                continue;
            };
            let at = self.epoch.elapsed().as_nanos() as u64;
            let mut w = latch_xdr::Writer::new();
            latch_oncrpc::msg::write_accepted_prefix(&mut w, call.xid);
            w.put_u32(0);
            nlm::Versioned::encode_v(
                &Res {
                    cookie: args.cookie.clone(),
                    stat: Stat::Granted,
                },
                &mut w,
                call.vers,
            );
            let _ = sock.send_to(w.as_bytes(), from);
            let since = at.saturating_sub(self.last_unlock_ns.load(Ordering::Relaxed));
            if let Ok(mut h) = self.handoff.lock() {
                let _ = h.record((since / 1000).max(1));
            }
            let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(tx) = waiters.get(&args.lock.svid) {
                let _ = tx.send(());
            }
        }
    }

    fn subscribe(&self, svid: u32) -> Receiver<()> {
        let (tx, rx) = channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(svid, tx);
        rx
    }

    fn take_handoffs(&self) -> Option<(u64, u64, u64)> {
        let mut h = self.handoff.lock().unwrap_or_else(PoisonError::into_inner);
        let out =
            (!h.is_empty()).then(|| (h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99)));
        h.reset();
        out
    }
}

/// Registers (or, with `set == false`, removes) NLM v4 over UDP at `port`
/// with the port mapper at `rpcbind`, from a reserved port when possible.
fn register(rpcbind: SocketAddr, port: u16, set: bool) -> Result<()> {
    let sock = (600..1024)
        .rev()
        .find_map(|p| UdpSocket::bind(("0.0.0.0", p)).ok())
        .map_or_else(|| UdpSocket::bind("0.0.0.0:0"), Ok)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut c = Conn::Udp(sock, rpcbind);
    let mut buf = vec![0u8; 1024];
    let mapping = |p: u32| {
        let mut v = Vec::new();
        for w in [nlm::PROGRAM, VERS, 17, p] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v
    };
    let rpc = |xid: u32, proc_: u32, args: &[u8]| {
        let mut v = Vec::new();
        for w in [xid, 0, 2, 100_000, 2, proc_, 0, 0, 0, 0] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(args);
        v
    };
    c.call(&rpc(1, 2, &mapping(0)), 1, &mut buf, 5)?;
    if set {
        let n = c.call(&rpc(2, 1, &mapping(u32::from(port))), 2, &mut buf, 5)?;
        if word(&buf[..n], 6) != Some(1) {
            bail!("rpcbind at {rpcbind} refused to register the callback listener");
        }
    }
    Ok(())
}

static XID: AtomicU32 = AtomicU32::new(1);

fn next_xid(i: usize) -> u32 {
    XID.fetch_add(1, Ordering::Relaxed) ^ ((i as u32) << 24)
}

/// K workers doing NULL calls and LOCK+UNLOCK pairs, alternately: the
/// NULL cell, then the pairs cell.
fn measure(
    sh: &Arc<Shared>,
    w: Workload,
    proto: Proto,
    k: usize,
    dur: Duration,
) -> Result<(Cell, Cell)> {
    let null_target = Target {
        addr: sh.server,
        prog: nlm::PROGRAM,
        vers: VERS,
    };
    alternating(k, dur, |i| {
        // NULL calls and pairs go over one connection (one socket): the
        // server reads both through the same task and the client waits on
        // the same socket, so `lat` compares the calls, not where a VM
        // happened to place two connections' wake-ups (with separate
        // connections, K=1 NULL round trips ran at 13 or at 75 µs from run
        // to run over TCP while the pairs' stayed at 75).
        let conn = Arc::new(Mutex::new(
            Conn::open(sh.server, proto).with_context(|| format!("connecting to {}", sh.server))?,
        ));
        // Two NULL round trips back to back, shaped as a pair is: round
        // trip times on a VM are bimodal (a woken vCPU answers in about 14
        // or about 75 µs), and the median of one call against the median of
        // a sum of two compares different things.
        let null = {
            let conn = conn.clone();
            let mut buf = vec![0u8; 256];
            move || -> Result<bool> {
                let mut c = conn.lock().unwrap_or_else(PoisonError::into_inner);
                for _ in 0..2 {
                    let xid = next_xid(i);
                    match c.round_trip(&null_call(xid, &null_target), xid, &mut buf)? {
                        Some(n) if is_success(&buf[..n], xid) => {}
                        _ => return Ok(false),
                    }
                }
                Ok(true)
            }
        };
        let lock = lock_of(sh, w, i);
        let contended = w == Workload::Contended;
        let granted = match (&sh.callbacks, contended) {
            (Some(cb), true) => Some((cb.clone(), cb.subscribe(lock.svid))),
            _ => None,
        };
        let lock_args = nlm::encode(
            &LockArgs {
                cookie: Netobj::from_slice(b"bench").unwrap_or_default(),
                block: contended,
                exclusive: true,
                lock: lock.clone(),
                reclaim: false,
                state: 0,
            },
            VERS,
        );
        let unlock_args = nlm::encode(
            &UnlockArgs {
                cookie: Netobj::from_slice(b"bench").unwrap_or_default(),
                lock,
            },
            VERS,
        );
        let mut buf = vec![0u8; 65536];
        let pair = move || -> Result<bool> {
            let mut c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            let xid = next_xid(i);
            let n = c.call(&call_bytes(xid, nlm::LOCK, &lock_args), xid, &mut buf, 20)?;
            match (status(&buf[..n], xid), &granted) {
                (Some(Stat::Granted), _) => {}
                (Some(Stat::Blocked), Some((_, rx))) => {
                    if rx.recv_timeout(Duration::from_secs(10)).is_err() {
                        bail!("no GRANTED callback within 10 s");
                    }
                }
                (s, _) => bail!("LOCK answered {s:?}"),
            }
            if let Some((cb, _)) = &granted {
                cb.last_unlock_ns
                    .store(cb.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            let xid = next_xid(i);
            let n = c.call(
                &call_bytes(xid, nlm::UNLOCK, &unlock_args),
                xid,
                &mut buf,
                20,
            )?;
            Ok(status(&buf[..n], xid) == Some(Stat::Granted))
        };
        Ok((null, pair))
    })
}

pub struct Options {
    pub server: SocketAddr,
    /// The caller name we send (this host's name or address).
    pub caller: String,
    /// This host's port mapper, where the GRANTED listener registers.
    pub rpcbind: SocketAddr,
    pub workloads: Vec<Workload>,
    pub protos: Vec<Proto>,
    pub ks: Vec<usize>,
    pub dur: Duration,
}

pub fn run(o: &Options) -> Result<()> {
    let callbacks = if o.workloads.contains(&Workload::Contended) {
        Some(Callbacks::start(o.rpcbind).context("starting the GRANTED listener")?)
    } else {
        None
    };
    println!(
        "{:<10} {:<4} {:>3} {:>8} {:>6} {:>6} {:>8} {:>6} {:>6} {:>6} {:>6} {:>9} {:>9}",
        "workload",
        "",
        "K",
        "pairs/s",
        "p50us",
        "p99us",
        "NULL/s",
        "2NULL50",
        "rate",
        "lat",
        "mlat",
        "handoff50",
        "handoff99"
    );
    let mut cell = 0;
    for &w in &o.workloads {
        for &proto in &o.protos {
            for &k in &o.ks {
                cell += 1;
                let sh = Arc::new(Shared {
                    server: o.server,
                    caller: o.caller.clone(),
                    cell,
                    callbacks: callbacks.clone(),
                });
                if let Some(cb) = &callbacks {
                    cb.take_handoffs();
                }
                let (null, pairs) = measure(&sh, w, proto, k, o.dur)?;
                let handoff = callbacks.as_ref().and_then(|cb| cb.take_handoffs());
                let (h50, h99) = match (w, handoff) {
                    (Workload::Contended, Some((_, a, b))) => (a.to_string(), b.to_string()),
                    _ => ("-".into(), "-".into()),
                };
                println!(
                    "{:<10} {:<4} {:>3} {:>8.0} {:>6.0} {:>6.0} {:>8.0} {:>6.1} {:>6.2} {:>6.2} {:>6.2} {:>9} {:>9}",
                    w.name(),
                    proto.name(),
                    k,
                    pairs.rate(),
                    pairs.p50_us,
                    pairs.p99_us,
                    2.0 * null.rate(),
                    null.p50_us,
                    pairs.rate() / null.rate(),
                    pairs.p50_us / null.p50_us,
                    pairs.mean_us / null.mean_us,
                    h50,
                    h99
                );
                if pairs.errors > 0 || null.errors > 0 {
                    println!(
                        "    ({} pairs failed, {} NULL pairs unanswered)",
                        pairs.errors, null.errors
                    );
                }
            }
        }
    }
    if callbacks.is_some() {
        let _ = register(o.rpcbind, 0, false);
    }
    Ok(())
}
