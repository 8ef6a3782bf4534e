//! Drives the sans-IO status monitor: serves it as program 100024 and carries
//! out its actions (SM_NOTIFY to peers, callbacks to local programs, name
//! resolution) without ever blocking the request path.

use latch_io::portmap::getport;
use latch_io::{CallError, RpcClient};
use latch_nsm::proto::{self, StatChge, Status};
use latch_nsm::{Action, FileStore, Monitor};
use latch_oncrpc::client::RetryPolicy;
use latch_oncrpc::{CallContext, Outcome, Program};
use latch_xdr::{Writer, XdrString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

pub type Core = Arc<Mutex<Monitor<FileStore>>>;

pub fn lock(core: &Core) -> std::sync::MutexGuard<'_, Monitor<FileStore>> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The monitor as an RPC program: calls go to the shared core, and the
/// driver is woken when they leave work behind.
pub struct NsmProgram {
    pub core: Core,
    pub wake: Arc<Notify>,
}

impl Program for NsmProgram {
    fn number(&self) -> u32 {
        proto::PROGRAM
    }

    fn versions(&self) -> (u32, u32) {
        (proto::VERSION, proto::VERSION)
    }

    fn call(&mut self, ctx: &CallContext<'_>, args: &[u8], res: &mut Writer) -> Outcome {
        let mut m = lock(&self.core);
        let out = m.call(ctx, args, res);
        if m.has_actions() {
            self.wake.notify_one();
        }
        out
    }
}

/// One UDP socket per address family for every outgoing call, from a
/// reserved port when root (statd and lockd trust only those).
pub struct Outbound {
    v4: RpcClient,
    v6: Option<RpcClient>,
}

impl Outbound {
    pub fn new() -> std::io::Result<Self> {
        let v4 = RpcClient::udp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0), true)?;
        let v6 = RpcClient::udp(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0), true).ok();
        let mut o = Outbound { v4, v6 };
        let policy = RetryPolicy {
            first_timeout: Duration::from_millis(300),
            max_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(5),
        };
        o.v4.policy = policy;
        if let Some(c) = o.v6.as_mut() {
            c.policy = policy;
        }
        Ok(o)
    }

    pub fn v4(&self) -> &RpcClient {
        &self.v4
    }

    pub fn for_ip(&self, ip: IpAddr) -> Option<&RpcClient> {
        if ip.is_ipv4() {
            Some(&self.v4)
        } else {
            self.v6.as_ref()
        }
    }
}

/// What the driver needs besides the monitor.
pub struct Driver {
    pub core: Core,
    pub wake: Arc<Notify>,
    pub out: Arc<Outbound>,
    pub local_rpcbind_port: u16,
    pub notify_timeout: Duration,
    /// Told when a host has been told of our restart (or given up on), so
    /// the client side may send it SHAREs.
    pub announced: Option<crate::nlm_service::Core>,
}

/// Bound on outgoing work in flight.
const MAX_IN_FLIGHT: usize = 64;

impl Driver {
    /// Runs until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let actions = lock(&self.core).take_actions();
            for a in actions {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    me.carry_out(a).await;
                    drop(permit);
                });
            }
            self.wake.notified().await;
        }
    }

    async fn carry_out(&self, a: Action) {
        match a {
            Action::Resolve { host } => {
                let addrs = resolve(&host).await;
                if !addrs.is_empty() {
                    lock(&self.core).learn_addrs(&host, &addrs);
                }
            }
            Action::Callback {
                prog,
                vers,
                proc_,
                args,
            } => self.callback(prog, vers, proc_, &args).await,
            Action::Notify {
                host,
                addrs,
                names,
                state,
            } => {
                if self.notify(&host, &addrs, &names, state).await {
                    lock(&self.core).notify_done(&host);
                    tracing::info!(host = %String::from_utf8_lossy(&host), "told of our restart");
                } else {
                    tracing::warn!(host = %String::from_utf8_lossy(&host), "gave up telling it of our restart");
                }
                if let Some(nlm) = &self.announced {
                    crate::nlm_service::lock(nlm).client.announced(&host);
                }
            }
        }
    }

    /// Calls a local program back; a few tries, then gives up (the program
    /// is gone or broken, and nothing we hold depends on it).
    async fn callback(&self, prog: u32, vers: u32, proc_: u32, args: &Status) {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let bytes = latch_xdr::to_bytes(args);
        for attempt in 0..5u32 {
            let r: Result<(), CallError> = async {
                let port = getport(&self.out.v4, lo, self.local_rpcbind_port, prog, vers, false)
                    .await?
                    .ok_or(CallError::Rpc(latch_oncrpc::RpcError::ProgUnavail))?;
                let to = SocketAddr::new(lo, port);
                self.out
                    .v4
                    .call(Some(to), prog, vers, proc_, &bytes)
                    .await?;
                Ok(())
            }
            .await;
            match r {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(prog, vers, proc_, attempt, error = %e, "callback failed");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
        tracing::warn!(prog, vers, proc_, "callback abandoned");
    }

    /// Tells `host` we restarted, retrying with backoff until it answers or
    /// the notify timeout passes. True if it answered.
    async fn notify(&self, host: &[u8], addrs: &[IpAddr], names: &[Vec<u8>], state: u32) -> bool {
        let start = Instant::now();
        let mut delay = Duration::from_millis(500);
        loop {
            let mut ips = addrs.to_vec();
            for ip in resolve(host).await {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            for ip in ips {
                match self.notify_at(ip, names, state).await {
                    Ok(()) => return true,
                    Err(e) => tracing::debug!(%ip, error = %e, "SM_NOTIFY failed"),
                }
            }
            if start.elapsed() >= self.notify_timeout {
                return false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }

    /// SM_NOTIFY for each of our names to the statd at `ip`: over UDP, or
    /// over TCP if it has no UDP port.
    async fn notify_at(&self, ip: IpAddr, names: &[Vec<u8>], state: u32) -> Result<(), CallError> {
        let c = self
            .out
            .for_ip(ip)
            .ok_or(CallError::Io(std::io::ErrorKind::Unsupported.into()))?;
        let args = |name: &Vec<u8>| {
            latch_xdr::to_bytes(&StatChge {
                mon_name: XdrString::new(name.clone()).unwrap_or_default(),
                state,
            })
        };
        let (p, v, n) = (proto::PROGRAM, proto::VERSION, proto::SM_NOTIFY);
        if let Some(port) = getport(c, ip, latch_oncrpc::rpcbind::PORT, p, v, false).await? {
            for name in names {
                c.call(Some(SocketAddr::new(ip, port)), p, v, n, &args(name))
                    .await?;
            }
            return Ok(());
        }
        let port = getport(c, ip, latch_oncrpc::rpcbind::PORT, p, v, true)
            .await?
            .ok_or(CallError::Rpc(latch_oncrpc::RpcError::ProgUnavail))?;
        let t = RpcClient::tcp(SocketAddr::new(ip, port), true).await?;
        for name in names {
            t.call(None, p, v, n, &args(name)).await?;
        }
        Ok(())
    }
}

/// The addresses `host` names: itself if it is an address, else a lookup
/// (bounded in time; an unknown name gives none).
pub async fn resolve(host: &[u8]) -> Vec<IpAddr> {
    let Ok(name) = std::str::from_utf8(host) else {
        return Vec::new();
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return vec![ip];
    }
    let lookup = tokio::net::lookup_host((name, 0));
    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
        Ok(Ok(addrs)) => {
            let mut v: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            v.dedup();
            v.truncate(16);
            v
        }
        _ => Vec::new(),
    }
}

/// This host's name, for SM_NOTIFY when none is configured.
pub fn hostname() -> Vec<u8> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which we pass.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return b"localhost".to_vec();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    buf[..end].to_vec()
}
