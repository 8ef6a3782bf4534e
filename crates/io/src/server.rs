//! Serving a [`Dispatcher`] over UDP and TCP.
//!
//! The dispatcher is shared behind a mutex that is held only while one call is
//! handled (no await inside), so the sans-IO core stays single-threaded and
//! deterministic while sockets are served concurrently.
//!
//! TCP connections are bounded: when the limit is reached, the connection that
//! has been quiet longest is closed to make room (as Linux's sunrpc does), so
//! a crowd of idle connections cannot lock real clients out. A connection that
//! sends nothing for `idle_timeout` (a half record included) is closed.

use crate::sock;
use latch_oncrpc::record::{self, RecordDecoder};
use latch_oncrpc::{Dispatcher, Transport};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

pub type SharedDispatcher = Arc<Mutex<Dispatcher>>;

/// Where to listen: an address (port 0 for any) and which transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub udp: bool,
    pub tcp: bool,
}

/// Bounds on what the network can make us hold.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub max_record: usize,
    /// Tasks receiving on each UDP socket (one per core is plenty).
    pub udp_workers: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(120),
            // NLM and NSM messages are a few KiB at most; rpcbind DUMP of a
            // full table is the largest thing we answer.
            max_record: 256 * 1024,
            udp_workers: 2,
        }
    }
}

/// Live counters.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections: AtomicU64,
    pub accepted: AtomicU64,
    pub evicted: AtomicU64,
    pub idle_closed: AtomicU64,
    pub record_errors: AtomicU64,
}

/// A running server: its bound addresses, counters, and the way to stop it.
pub struct ServerHandle {
    /// Every socket actually bound, with its transport.
    pub bound: Vec<(Transport, SocketAddr)>,
    pub stats: Arc<ServerStats>,
    unix_path: Option<std::path::PathBuf>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl ServerHandle {
    /// Stops accepting and closes every connection; waits for the tasks.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The port bound for `transport` on the family of `v6`.
    pub fn port(&self, transport: Transport, v6: bool) -> Option<u16> {
        self.bound
            .iter()
            .find(|(t, a)| *t == transport && a.is_ipv6() == v6)
            .map(|(_, a)| a.port())
    }
}

/// Binds every endpoint (and an AF_LOCAL socket at `unix`, if given) and
/// starts serving `dispatcher`.
pub fn serve(
    dispatcher: SharedDispatcher,
    endpoints: &[Endpoint],
    unix: Option<&std::path::Path>,
    limits: ServerLimits,
) -> io::Result<ServerHandle> {
    let (tx, rx) = watch::channel(false);
    let stats = Arc::new(ServerStats::default());
    let mut tasks = JoinSet::new();
    let mut bound = Vec::new();
    let conns = Arc::new(Mutex::new(ConnTable::default()));
    let epoch = Instant::now();
    for ep in endpoints {
        if ep.udp {
            let s = Arc::new(sock::udp(ep.addr)?);
            let local = s.local_addr()?;
            bound.push((Transport::Udp, local));
            for _ in 0..limits.udp_workers.max(1) {
                let (s, d, rx) = (s.clone(), dispatcher.clone(), rx.clone());
                tasks.spawn(udp_loop(s, d, rx));
            }
        }
        if ep.tcp {
            // With a UDP socket on port 0, use the same port for TCP if free.
            let mut addr = ep.addr;
            if addr.port() == 0 {
                if let Some((_, a)) = bound.iter().rev().find(|(_, a)| a.ip() == addr.ip()) {
                    addr.set_port(a.port());
                }
            }
            let l =
                sock::tcp_listener(addr, 1024).or_else(|_| sock::tcp_listener(ep.addr, 1024))?;
            bound.push((Transport::Tcp, l.local_addr()?));
            let ctx = TcpCtx {
                dispatcher: dispatcher.clone(),
                limits,
                stats: stats.clone(),
                conns: conns.clone(),
                epoch,
                shutdown: rx.clone(),
            };
            tasks.spawn(accept_loop(Listener::Tcp(l), ctx));
        }
    }
    if let Some(path) = unix {
        let l = unix_listener(path)?;
        let ctx = TcpCtx {
            dispatcher: dispatcher.clone(),
            limits,
            stats: stats.clone(),
            conns: conns.clone(),
            epoch,
            shutdown: rx.clone(),
        };
        tasks.spawn(accept_loop(Listener::Unix(l), ctx));
    }
    Ok(ServerHandle {
        bound,
        stats,
        unix_path: unix.map(std::path::Path::to_path_buf),
        shutdown: tx,
        tasks,
    })
}

/// Binds an AF_LOCAL stream socket at `path`, replacing a stale socket file
/// but never a live one (another port mapper still answering there).
fn unix_listener(path: &std::path::Path) -> io::Result<tokio::net::UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    // Anyone may query a port mapper, as with the C rpcbind's socket.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

fn handle(
    d: &SharedDispatcher,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    t: Transport,
    bytes: &[u8],
) -> Option<Vec<u8>> {
    let now = Instant::now();
    let wall = crate::wall_secs();
    // Parsed before the lock is taken: the lock is held for less.
    let call = latch_oncrpc::msg::parse_call(bytes);
    // A panic while handling would poison the lock; the dispatcher's state
    // is still consistent per call, so keep serving.
    let mut d = d.lock().unwrap_or_else(PoisonError::into_inner);
    d.handle_parsed(call, peer, local, t, now, wall)
}

async fn udp_loop(s: Arc<UdpSocket>, d: SharedDispatcher, mut stop: watch::Receiver<bool>) {
    let local = s.local_addr().ok().filter(|a| !a.ip().is_unspecified());
    // Larger than any UDP datagram, so nothing is silently cut.
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = tokio::select! {
            r = s.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP errors from earlier sends surface here; keep serving.
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        if let Some(reply) = handle(&d, peer, local, Transport::Udp, &buf[..n]) {
            let _ = s.send_to(&reply, peer).await;
        }
    }
}

/// Open connections, for eviction at the limit.
#[derive(Default)]
struct ConnTable {
    next_id: u64,
    open: HashMap<u64, ConnEntry>,
}

struct ConnEntry {
    last_active_ms: Arc<AtomicU64>,
    close: Arc<Notify>,
}

#[derive(Clone)]
struct TcpCtx {
    dispatcher: SharedDispatcher,
    limits: ServerLimits,
    stats: Arc<ServerStats>,
    conns: Arc<Mutex<ConnTable>>,
    epoch: Instant,
    shutdown: watch::Receiver<bool>,
}

impl TcpCtx {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a new connection, evicting the quietest one at the limit.
    fn admit(&self) -> (u64, Arc<AtomicU64>, Arc<Notify>) {
        let mut t = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        while t.open.len() >= self.limits.max_connections.max(1) {
            let Some(victim) = t
                .open
                .iter()
                .min_by_key(|(_, e)| e.last_active_ms.load(Ordering::Relaxed))
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some(e) = t.open.remove(&victim) {
                e.close.notify_one();
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let active = Arc::new(AtomicU64::new(self.now_ms()));
        let close = Arc::new(Notify::new());
        t.open.insert(
            id,
            ConnEntry {
                last_active_ms: active.clone(),
                close: close.clone(),
            },
        );
        (id, active, close)
    }

    fn release(&self, id: u64) {
        let mut t = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        t.open.remove(&id);
    }
}

/// A stream listener: TCP, or AF_LOCAL for the port mapper's local socket.
enum Listener {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

/// An accepted stream of either kind.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

impl Listener {
    /// Accepts a connection. AF_LOCAL peers have no address; they are given
    /// a loopback one (trusted like loopback) whose port tells connections
    /// apart in the duplicate request cache.
    async fn accept(
        &self,
        n: u64,
    ) -> io::Result<(Box<dyn Stream>, SocketAddr, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                let local = s.local_addr().ok();
                Ok((Box::new(s), peer, local))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                let port = (n % 65535 + 1) as u16;
                let peer = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port);
                Ok((Box::new(s), peer, None))
            }
        }
    }
}

async fn accept_loop(l: Listener, ctx: TcpCtx) {
    let mut stop = ctx.shutdown.clone();
    let mut conns = JoinSet::new();
    let mut n = 0u64;
    loop {
        n += 1;
        let accepted = tokio::select! {
            r = l.accept(n) => r,
            _ = stop.changed() => break,
            // Reap finished connection tasks so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer, local) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let (id, active, close) = ctx.admit();
        let c = ctx.clone();
        conns.spawn(async move {
            c.stats.connections.fetch_add(1, Ordering::Relaxed);
            let _ = connection(stream, peer, local, &c, &active, &close).await;
            c.stats.connections.fetch_sub(1, Ordering::Relaxed);
            c.release(id);
        });
    }
    conns.shutdown().await;
}

async fn connection(
    mut stream: Box<dyn Stream>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    ctx: &TcpCtx,
    active: &AtomicU64,
    close: &Notify,
) -> io::Result<()> {
    let mut stop = ctx.shutdown.clone();
    let mut decoder = RecordDecoder::new(ctx.limits.max_record);
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        let n = tokio::select! {
            r = tokio::time::timeout(ctx.limits.idle_timeout, stream.read(&mut buf)) => match r {
                Ok(r) => r?,
                Err(_) => {
                    ctx.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            },
            _ = close.notified() => return Ok(()),
            _ = stop.changed() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        active.store(ctx.now_ms(), Ordering::Relaxed);
        decoder.extend(&buf[..n]);
        loop {
            match decoder.next_record() {
                Ok(Some(rec)) => {
                    if let Some(reply) = handle(&ctx.dispatcher, peer, local, Transport::Tcp, &rec)
                    {
                        record::push_frame(&mut out, &reply);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    ctx.stats.record_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "closing connection");
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        // Replies to pipelined calls go out in one write.
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}
