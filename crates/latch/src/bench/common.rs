//! Closed-loop load generation shared by the benchmarks: each of K clients
//! is an OS thread with its own socket and one call in flight, so the figure
//! is the server's, not a client library's.

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    pub p50_us: u64,
    pub p99_us: u64,
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

/// Runs K closed-loop workers for `dur`; `make(i)` builds worker i's
/// operation, which says whether it succeeded. Latencies are per operation.
pub(crate) fn closed_loop<F>(
    k: usize,
    dur: Duration,
    make: impl Fn(usize) -> Result<F>,
) -> Result<Cell>
where
    F: FnMut() -> Result<bool> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut ops = Vec::with_capacity(k);
    for i in 0..k {
        ops.push(make(i)?);
    }
    let start = Instant::now();
    let handles: Vec<_> = ops
        .into_iter()
        .map(|mut op| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<(u64, u64, Histogram<u64>)> {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let (mut ok, mut err) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    if op()? {
                        ok += 1;
                        h.record(t0.elapsed().as_micros().max(1) as u64)?;
                    } else {
                        err += 1;
                    }
                }
                Ok((ok, err, h))
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut calls, mut errors) = (0, 0);
    for h in handles {
        let (ok, err, hist) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        calls += ok;
        errors += err;
        total.add(hist)?;
    }
    Ok(Cell {
        calls,
        errors,
        secs: start.elapsed().as_secs_f64(),
        p50_us: total.value_at_quantile(0.5),
        p99_us: total.value_at_quantile(0.99),
    })
}

/// K closed-loop clients calling NULL on `t`.
pub fn measure_null(t: Target, proto: Proto, k: usize, dur: Duration) -> Result<Cell> {
    closed_loop(k, dur, |i| {
        let mut c =
            Conn::open(t.addr, proto).with_context(|| format!("connecting to {}", t.addr))?;
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
    })
}
