//! `latch bench null`: NULL round trips per second against a target server
//! and a reference server (e.g. the system rpcbind) in the same run.
//!
//! Each of K clients is an OS thread with its own socket and one call in
//! flight (a closed loop), so the figure is the server's, not a client
//! library's. The two servers are measured alternately, cell by cell, so a
//! noisy neighbour hurts both alike.

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

fn null_call(xid: u32, t: &Target) -> Vec<u8> {
    let mut v = Vec::with_capacity(44);
    for w in [xid, 0, 2, t.prog, t.vers, 0, 0, 0, 0, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

/// A successful accepted reply to `xid`.
fn is_success(reply: &[u8], xid: u32) -> bool {
    let w = |i: usize| {
        reply
            .get(i * 4..i * 4 + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    w(0) == Some(xid) && w(1) == Some(1) && w(2) == Some(0) && w(5) == Some(0)
}

enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl Conn {
    fn open(t: &Target, proto: Proto) -> Result<Conn> {
        Ok(match proto {
            Proto::Udp => {
                let any: SocketAddr = if t.addr.is_ipv4() {
                    "0.0.0.0:0".parse()?
                } else {
                    "[::]:0".parse()?
                };
                let s = UdpSocket::bind(any)?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                Conn::Udp(s, t.addr)
            }
            Proto::Tcp => {
                let s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(2))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                Conn::Tcp(s)
            }
        })
    }

    /// One round trip; false on timeout or a bad reply.
    fn round_trip(&mut self, msg: &[u8], xid: u32, buf: &mut [u8]) -> Result<bool> {
        match self {
            Conn::Udp(s, to) => {
                s.send_to(msg, *to)?;
                loop {
                    match s.recv(buf) {
                        // A late reply to an earlier, timed-out call: skip it.
                        Ok(n) if buf[..4] != xid.to_be_bytes() && n >= 4 => continue,
                        Ok(n) => return Ok(is_success(&buf[..n], xid)),
                        Err(_) => return Ok(false),
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
                Ok(is_success(&buf[..len], xid))
            }
        }
    }
}

/// Runs K closed-loop clients against `t` for `dur`.
pub fn measure(t: Target, proto: Proto, k: usize, dur: Duration) -> Result<Cell> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::with_capacity(k);
    for _ in 0..k {
        conns.push(Conn::open(&t, proto).with_context(|| format!("connecting to {}", t.addr))?);
    }
    let start = Instant::now();
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<(u64, u64, Histogram<u64>)> {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let (mut ok, mut err) = (0u64, 0u64);
                let mut buf = vec![0u8; 65536];
                let mut xid = (i as u32) << 24;
                while !stop.load(Ordering::Relaxed) {
                    xid = xid.wrapping_add(1);
                    let msg = null_call(xid, &t);
                    let t0 = Instant::now();
                    if c.round_trip(&msg, xid, &mut buf)? {
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

/// The whole table: every transport and K, target and reference alternately.
pub fn run(
    target: Target,
    reference: Option<Target>,
    protos: &[Proto],
    ks: &[usize],
    dur: Duration,
) -> Result<()> {
    println!(
        "{:<4} {:>3} {:>12} {:>8} {:>8} {:>12} {:>8} {:>8} {:>7}",
        "", "K", "target/s", "p50us", "p99us", "reference/s", "p50us", "p99us", "ratio"
    );
    for &proto in protos {
        for &k in ks {
            let a = measure(target, proto, k, dur)?;
            let b = reference.map(|r| measure(r, proto, k, dur)).transpose()?;
            let name = if proto == Proto::Udp { "udp" } else { "tcp" };
            match b {
                Some(b) => println!(
                    "{:<4} {:>3} {:>12.0} {:>8} {:>8} {:>12.0} {:>8} {:>8} {:>7.2}",
                    name,
                    k,
                    a.rate(),
                    a.p50_us,
                    a.p99_us,
                    b.rate(),
                    b.p50_us,
                    b.p99_us,
                    a.rate() / b.rate()
                ),
                None => println!(
                    "{:<4} {:>3} {:>12.0} {:>8} {:>8}",
                    name,
                    k,
                    a.rate(),
                    a.p50_us,
                    a.p99_us
                ),
            }
            if a.errors > 0 {
                println!("     ({} calls to the target went unanswered)", a.errors);
            }
        }
    }
    Ok(())
}
