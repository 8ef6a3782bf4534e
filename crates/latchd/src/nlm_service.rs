//! Drives the sans-IO NLM server: serves it as program 100021, and carries
//! out its actions (GRANTED callbacks, `_RES` answers, status-monitor
//! requests) in tasks of their own, so one slow client stalls nobody.

use crate::nsm_service::Outbound;
use latch_io::portmap::getport;
use latch_io::CallError;
use latch_nlm::client::{CallFailure, ClientAction};
use latch_nlm::proto::{self, Res};
use latch_nlm::{Action, NlmServer};
use latch_nsm::proto as sm;
use latch_oncrpc::client::RetryPolicy;
use latch_oncrpc::{CallContext, Outcome, Program, RpcError};
use latch_xdr::Writer;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

pub type Core = Arc<Mutex<NlmServer>>;

/// One datagram per GRANTED, answered within 2 s or counted unanswered;
/// the core decides whether and when to send it again.
const GRANTED_ONCE: RetryPolicy = RetryPolicy {
    first_timeout: Duration::from_secs(2),
    max_timeout: Duration::from_secs(2),
    deadline: Duration::from_secs(2),
};

pub fn lock(core: &Core) -> std::sync::MutexGuard<'_, NlmServer> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server as an RPC program; wakes the driver when a call left work.
pub struct NlmProgram {
    pub core: Core,
    pub wake: Arc<Notify>,
}

impl Program for NlmProgram {
    fn number(&self) -> u32 {
        proto::PROGRAM
    }

    fn versions(&self) -> (u32, u32) {
        NlmServer::VERSIONS
    }

    fn is_cached(&self, _vers: u32, proc_: u32) -> bool {
        NlmServer::is_cached_proc(proc_)
    }

    fn call(&mut self, ctx: &CallContext<'_>, args: &[u8], res: &mut Writer) -> Outcome {
        // The shell read the clock just before: one read fewer per call.
        let t0 = ctx.now;
        let mut s = lock(&self.core);
        let out = s.call(ctx, args, res);
        if s.has_actions() {
            self.wake.notify_one();
        }
        drop(s);
        crate::metrics::observe_nlm(ctx.proc_, t0.elapsed());
        out
    }
}

/// Where clients' NLM listens, remembered briefly so that a callback costs
/// one round trip, not two.
#[derive(Default)]
struct PortCache {
    ports: HashMap<(IpAddr, u32), (u16, Instant)>,
}

const PORT_TTL: Duration = Duration::from_secs(30);
const PORT_CACHE_MAX: usize = 4096;

pub struct Driver {
    pub core: Core,
    pub wake: Arc<Notify>,
    pub out: Arc<Outbound>,
    pub local_rpcbind_port: u16,
    /// Local programs' connections, for the client side's answers.
    pub routes: crate::local::Routes,
    /// Talk to remote servers over TCP rather than UDP.
    pub client_tcp: bool,
    ports: Mutex<PortCache>,
}

const MAX_IN_FLIGHT: usize = 256;
const TICK: Duration = Duration::from_millis(100);

impl Driver {
    pub fn new(
        core: Core,
        wake: Arc<Notify>,
        out: Arc<Outbound>,
        local_rpcbind_port: u16,
        routes: crate::local::Routes,
        client_tcp: bool,
    ) -> Self {
        Driver {
            core,
            wake,
            out,
            local_rpcbind_port,
            routes,
            client_tcp,
            ports: Mutex::new(PortCache::default()),
        }
    }

    pub async fn run(self: Arc<Self>) {
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let (actions, client_actions) = {
                let mut s = lock(&self.core);
                s.tick(Instant::now());
                (s.take_actions(), s.take_client_actions())
            };
            for a in client_actions {
                if let ClientAction::Local { conn, event } = a {
                    crate::local::route(&self.routes, conn, event);
                    continue;
                }
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    me.carry_out_client(a).await;
                    drop(permit);
                });
            }
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
            let _ = tokio::time::timeout(TICK, self.wake.notified()).await;
        }
    }

    async fn carry_out(&self, a: Action) {
        match a {
            Action::Call {
                to,
                vers,
                proc_,
                args,
                grant,
            } => {
                // The core resends a GRANTED itself, with backoff, for as
                // long as the grant stands; a copy resent here after the
                // core withdrew it (the client rebooted, its locks went to
                // someone else) could reach the client's next incarnation.
                let once = matches!(proc_, proto::GRANTED | proto::GRANTED_MSG);
                let r = self
                    .call_client_with(to, vers, proc_, &args, once.then_some(GRANTED_ONCE))
                    .await;
                if let Some(id) = grant {
                    let stat = r
                        .ok()
                        .and_then(|res| proto::decode::<Res>(&res, vers).ok())
                        .map(|r| r.stat);
                    let mut s = lock(&self.core);
                    s.call_result(id, stat, Instant::now());
                    if s.has_actions() {
                        self.wake.notify_one();
                    }
                }
            }
            Action::Monitor { name } => {
                self.monitor(&name, sm::SM_MON).await;
            }
            Action::Unmonitor { name } => {
                self.monitor(&name, sm::SM_UNMON).await;
            }
        }
    }

    async fn carry_out_client(&self, a: ClientAction) {
        match a {
            ClientAction::Call {
                token,
                server,
                vers,
                proc_,
                args,
            } => {
                let r = self
                    .call_server(server, vers, proc_, &args)
                    .await
                    .map_err(|e| match e {
                        CallError::Rpc(e) => CallFailure::Rpc(e),
                        CallError::Timeout => {
                            CallFailure::Transport(format!("server {server} does not answer"))
                        }
                        e => CallFailure::Transport(format!("server {server}: {e}")),
                    });
                let mut s = lock(&self.core);
                s.client_reply(token, r, Instant::now());
                if s.has_actions() {
                    self.wake.notify_one();
                }
            }
            // LOCKs to that server wait for this answer.
            ClientAction::Monitor { name } => {
                let ok = self.monitor(&name, sm::SM_MON).await;
                let mut s = lock(&self.core);
                s.client.monitor_result(&name, ok);
                if s.has_actions() {
                    self.wake.notify_one();
                }
            }
            ClientAction::Local { conn, event } => crate::local::route(&self.routes, conn, event),
        }
    }

    /// A call to a remote NLM server on behalf of a local program: UDP, or
    /// TCP if configured (a connection per call keeps it simple; the port
    /// mapper lookup is cached).
    async fn call_server(
        &self,
        ip: IpAddr,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        if !self.client_tcp {
            return self.call_client(ip, vers, proc_, args).await;
        }
        let port = self.lookup_nlm(ip, vers, true).await?;
        let t = latch_io::RpcClient::tcp(SocketAddr::new(ip, port), true).await?;
        t.call(None, proto::PROGRAM, vers, proc_, args).await
    }

    /// The port of NLM `vers` on `ip`, from that host's port mapper.
    async fn lookup_nlm(&self, ip: IpAddr, vers: u32, tcp: bool) -> Result<u16, CallError> {
        let c = self
            .out
            .for_ip(ip)
            .ok_or(CallError::Rpc(RpcError::ProgUnavail))?;
        getport(
            c,
            ip,
            latch_oncrpc::rpcbind::PORT,
            proto::PROGRAM,
            vers,
            tcp,
        )
        .await?
        .ok_or(CallError::Rpc(RpcError::ProgUnavail))
    }

    async fn port_of(&self, ip: IpAddr, vers: u32) -> Result<u16, CallError> {
        if let Some((p, at)) = self.ports_lock().ports.get(&(ip, vers)) {
            if at.elapsed() < PORT_TTL {
                return Ok(*p);
            }
        }
        let port = self.lookup_nlm(ip, vers, false).await?;
        let mut cache = self.ports_lock();
        if cache.ports.len() >= PORT_CACHE_MAX {
            cache.ports.clear();
        }
        cache.ports.insert((ip, vers), (port, Instant::now()));
        Ok(port)
    }

    fn ports_lock(&self) -> std::sync::MutexGuard<'_, PortCache> {
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One call to a client's NLM over UDP (the machine does the retrying).
    async fn call_client(
        &self,
        ip: IpAddr,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        self.call_client_with(ip, vers, proc_, args, None).await
    }

    /// [`call_client`](Self::call_client), with `policy` instead of the
    /// outgoing socket's own retransmissions if given.
    async fn call_client_with(
        &self,
        ip: IpAddr,
        vers: u32,
        proc_: u32,
        args: &[u8],
        policy: Option<RetryPolicy>,
    ) -> Result<Vec<u8>, CallError> {
        let port = self.port_of(ip, vers).await?;
        let c = self
            .out
            .for_ip(ip)
            .ok_or(CallError::Rpc(RpcError::ProgUnavail))?;
        let r = c
            .call_with(
                policy.unwrap_or(c.policy),
                Some(SocketAddr::new(ip, port)),
                proto::PROGRAM,
                vers,
                proc_,
                args,
            )
            .await;
        if r.is_err() {
            // The client may have restarted on another port.
            self.ports_lock().ports.remove(&(ip, vers));
        }
        r
    }

    /// SM_MON or SM_UNMON `name` at the local status monitor, asking it to
    /// call NLM version 3 procedure 16 back (what rpc.statd accepts).
    /// Whether the status monitor took the request (a few tries).
    async fn monitor(&self, name: &[u8], proc_: u32) -> bool {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let args = if proc_ == sm::SM_MON {
            latch_xdr::to_bytes(&proto::monitor_args(name))
        } else {
            latch_xdr::to_bytes(&proto::monitor_id(name))
        };
        for attempt in 0..5u32 {
            let r: Result<(), CallError> = async {
                let port = getport(
                    self.out_v4(),
                    lo,
                    self.local_rpcbind_port,
                    sm::PROGRAM,
                    sm::VERSION,
                    false,
                )
                .await?
                .ok_or(CallError::Rpc(RpcError::ProgUnavail))?;
                let res = self
                    .out_v4()
                    .call(
                        Some(SocketAddr::new(lo, port)),
                        sm::PROGRAM,
                        sm::VERSION,
                        proc_,
                        &args,
                    )
                    .await?;
                if proc_ == sm::SM_MON {
                    let r: sm::SmStatRes =
                        latch_xdr::from_bytes(&res).map_err(|_| CallError::Malformed)?;
                    if r.res_stat != sm::STAT_SUCC {
                        return Err(CallError::Rpc(RpcError::SystemErr));
                    }
                }
                Ok(())
            }
            .await;
            match r {
                Ok(()) => return true,
                Err(e) => {
                    tracing::debug!(host = %String::from_utf8_lossy(name), attempt, error = %e, "status monitor request failed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        tracing::warn!(host = %String::from_utf8_lossy(name), "the status monitor did not take the request; the host's reboot will not free its locks");
        false
    }

    fn out_v4(&self) -> &latch_io::RpcClient {
        self.out.v4()
    }
}
