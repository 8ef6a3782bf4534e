//! Closed-loop load generation shared by the benchmarks: each of K clients
//! is an OS thread with its own socket and one call in flight, so the figure
//! is the server's, not a client library's. Two things to compare (NULL and
//! LOCK+UNLOCK, or two servers) are measured in alternating slices of the
//! same run by the same threads.

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A program to ping: where, which program and version.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub addr: SocketAddr,
    pub prog: u32,
    pub vers: u32,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    /// `ADDR:PORT[/PROG/VERS]`, e.g. `127.0.0.1:4045/100021/4`.
    fn from_str(s: &str) -> Result<Target> {
        let mut parts = s.split('/');
        let addr = parts.next().unwrap_or_default();
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("{addr:?} is not ADDR:PORT"))?;
        let prog = parts
            .next()
            .map_or(Ok(100_021), str::parse)
            .context("program")?;
        let vers = parts.next().map_or(Ok(4), str::parse).context("version")?;
        Ok(Target { addr, prog, vers })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Cell {
    pub calls: u64,
    pub errors: u64,
    pub secs: f64,
    /// Latency percentiles, microseconds (recorded in nanoseconds, so
    /// short round trips are not rounded to whole microseconds).
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

impl Cell {
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.secs
    }
}

pub(crate) fn null_call(xid: u32, t: &Target) -> Vec<u8> {
    let mut v = Vec::with_capacity(44);
    for w in [xid, 0, 2, t.prog, t.vers, 0, 0, 0, 0, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

/// The word at `i` of a reply.
pub(crate) fn word(reply: &[u8], i: usize) -> Option<u32> {
    reply
        .get(i * 4..i * 4 + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A successful accepted reply to `xid`.
pub(crate) fn is_success(reply: &[u8], xid: u32) -> bool {
    let w = |i| word(reply, i);
    w(0) == Some(xid) && w(1) == Some(1) && w(2) == Some(0) && w(5) == Some(0)
}

/// A client's connection to one server.
pub(crate) enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl Conn {
    pub(crate) fn open(addr: SocketAddr, proto: Proto) -> Result<Conn> {
        Ok(match proto {
            Proto::Udp => {
                let any: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0".parse()?
                } else {
                    "[::]:0".parse()?
                };
                let s = UdpSocket::bind(any)?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                Conn::Udp(s, addr)
            }
            Proto::Tcp => {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                Conn::Tcp(s)
            }
        })
    }

    /// One round trip of `msg` (whose xid is `xid`): the reply's length in
    /// `buf`, or `None` if none came (UDP: within the read timeout).
    pub(crate) fn round_trip(
        &mut self,
        msg: &[u8],
        xid: u32,
        buf: &mut [u8],
    ) -> Result<Option<usize>> {
        match self {
            Conn::Udp(s, to) => {
                s.send_to(msg, *to)?;
                loop {
                    match s.recv(buf) {
                        // A late reply to an earlier, timed-out call: skip it.
                        Ok(n) if n >= 4 && buf[..4] != xid.to_be_bytes() => continue,
                        Ok(n) => return Ok(Some(n)),
                        Err(_) => return Ok(None),
                    }
                }
            }
            Conn::Tcp(s) => {
                let mut rec = Vec::with_capacity(msg.len() + 4);
                rec.extend_from_slice(&(0x8000_0000u32 | msg.len() as u32).to_be_bytes());
                rec.extend_from_slice(msg);
                s.write_all(&rec)?;
                let mut h = [0u8; 4];
                s.read_exact(&mut h)?;
                let len = (u32::from_be_bytes(h) & 0x7fff_ffff) as usize;
                if len > buf.len() {
                    bail!("reply of {len} bytes");
                }
                s.read_exact(&mut buf[..len])?;
                Ok(Some(len))
            }
        }
    }

    /// A call retransmitted (same xid) until answered, at most `tries` times.
    pub(crate) fn call(
        &mut self,
        msg: &[u8],
        xid: u32,
        buf: &mut [u8],
        tries: u32,
    ) -> Result<usize> {
        for _ in 0..tries {
            if let Some(n) = self.round_trip(msg, xid, buf)? {
                return Ok(n);
            }
        }
        bail!("no answer after {tries} tries")
    }
}

/// How long each side runs before the workers switch to the other. Short:
/// on a shared machine, round trips switch between a fast and a slow mode
/// (where the scheduler puts our threads and other tenants') for tens to
/// hundreds of milliseconds at a time; in slices of 200 ms one side could
/// get most of the fast periods, and its p50, pooled over calls, would be
/// the fast mode's while the other side's was the slow one's.
pub const SLICE: Duration = Duration::from_millis(20);

/// What one worker saw of one side.
struct Tally {
    ok: u64,
    err: u64,
    /// Time from the start of the worker's first operation in a slice to
    /// the end of its last, summed over slices.
    busy: Duration,
    hist: Histogram<u64>,
}

impl Tally {
    fn new() -> Result<Tally> {
        Ok(Tally {
            ok: 0,
            err: 0,
            busy: Duration::ZERO,
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
        })
    }
}

/// Runs K closed-loop workers, each with two operations `a` and `b` (from
/// `make(i)`), alternately: every worker runs `a` for a slice of time, then
/// every worker runs `b`, and so on until each side has had `dur`. Each
/// operation says whether it succeeded; latencies are per operation.
///
/// Measuring the two sides interleaved in short slices, rather than one
/// after the other, makes whatever else the machine is doing weigh on both
/// alike, so their ratio means something even on a busy host. Workers start
/// each slice together and finish their last operation before the next one
/// begins. Every operation started within the slice counts, and a side's
/// rate is its operations over the time its workers were busy with them
/// (each from its first start to its last end in a slice), so neither the
/// wait at the barrier nor an operation cut at the slice's end weighs more
/// on the side whose operations take longer.
pub(crate) fn alternating<A, B>(
    k: usize,
    dur: Duration,
    make: impl Fn(usize) -> Result<(A, B)>,
) -> Result<(Cell, Cell)>
where
    A: FnMut() -> Result<bool> + Send + 'static,
    B: FnMut() -> Result<bool> + Send + 'static,
{
    let rounds = (dur.as_nanos() / SLICE.as_nanos()).max(1) as u32;
    let mut ops = Vec::with_capacity(k);
    for i in 0..k {
        ops.push(make(i)?);
    }
    let barrier = Arc::new(Barrier::new(k + 1));
    // Which side runs (0: a, 1: b, 2: stop), and the slice's end.
    let side = Arc::new(AtomicUsize::new(0));
    let epoch = Instant::now();
    let deadline_ns = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let handles: Vec<_> = ops
        .into_iter()
        .map(|(mut a, mut b)| {
            let (barrier, side, deadline_ns, failure) = (
                barrier.clone(),
                side.clone(),
                deadline_ns.clone(),
                failure.clone(),
            );
            std::thread::spawn(move || -> Result<[Tally; 2]> {
                let mut tally = [Tally::new()?, Tally::new()?];
                let mut alive = true;
                loop {
                    barrier.wait();
                    let s = side.load(Ordering::Acquire);
                    if s > 1 {
                        return Ok(tally);
                    }
                    let deadline =
                        epoch + Duration::from_nanos(deadline_ns.load(Ordering::Acquire));
                    let mut span: Option<(Instant, Instant)> = None;
                    while alive {
                        let t0 = Instant::now();
                        if t0 >= deadline {
                            break;
                        }
                        let r = if s == 0 { a() } else { b() };
                        let t1 = Instant::now();
                        span = Some((span.map_or(t0, |(first, _)| first), t1));
                        let t = &mut tally[s];
                        match r {
                            Ok(true) => {
                                t.ok += 1;
                                t.hist.record((t1 - t0).as_nanos().max(1) as u64)?;
                            }
                            Ok(false) => t.err += 1,
                            Err(e) => {
                                // Keep meeting the others at the barrier,
                                // idle; the error ends the measurement.
                                alive = false;
                                failure
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .get_or_insert(e);
                            }
                        }
                    }
                    if let Some((first, last)) = span {
                        tally[s].busy += last - first;
                    }
                    barrier.wait();
                }
            })
        })
        .collect();
    for round in 0..2 * rounds {
        side.store((round % 2) as usize, Ordering::Release);
        let end = epoch.elapsed() + SLICE;
        deadline_ns.store(end.as_nanos() as u64, Ordering::Release);
        barrier.wait();
        barrier.wait();
    }
    side.store(2, Ordering::Release);
    barrier.wait();
    let mut sum = [Tally::new()?, Tally::new()?];
    for h in handles {
        let t = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        for (s, t) in sum.iter_mut().zip(t) {
            s.ok += t.ok;
            s.err += t.err;
            s.busy += t.busy;
            s.hist.add(t.hist)?;
        }
    }
    if let Some(e) = failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return Err(e);
    }
    // K closed loops: the rate is K over the mean time an operation took
    // its worker, so `secs` is the mean busy time of a worker.
    let [a, b] = sum.map(|t| Cell {
        calls: t.ok,
        errors: t.err,
        secs: (t.busy.as_secs_f64() / k.max(1) as f64).max(f64::MIN_POSITIVE),
        p50_us: t.hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: t.hist.value_at_quantile(0.99) as f64 / 1000.0,
        mean_us: t.hist.mean() / 1000.0,
    });
    Ok((a, b))
}

/// A closed-loop client's NULL call to `t`, over its own connection.
pub(crate) fn null_op(
    t: Target,
    proto: Proto,
    i: usize,
) -> Result<impl FnMut() -> Result<bool> + Send + 'static> {
    let mut c = Conn::open(t.addr, proto).with_context(|| format!("connecting to {}", t.addr))?;
    let mut buf = vec![0u8; 65536];
    let mut xid = (i as u32) << 24;
    Ok(move || -> Result<bool> {
        xid = xid.wrapping_add(1);
        let msg = null_call(xid, &t);
        Ok(match c.round_trip(&msg, xid, &mut buf)? {
            Some(n) => is_success(&buf[..n], xid),
            None => false,
        })
    })
}
