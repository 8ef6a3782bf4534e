//! Finding a port mapper, registering with it, and running our own when the
//! host has none.

use crate::config::{Config, RpcbindMode};
use anyhow::{bail, Context, Result};
use latch_io::{server, Endpoint, RpcClient, ServerHandle, ServerLimits};
use latch_oncrpc::drc::Drc;
use latch_oncrpc::rpcbind::{self, Netid, Rpcb, RpcbindServer};
use latch_oncrpc::{Dispatcher, Transport};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The registration owner we record, as the C daemons record "superuser".
const OWNER: &str = "latchd";

/// Where our registrations go, so shutdown can take them back. Our own
/// rpcbind is registered with over loopback exactly like the host's, so both
/// paths are one.
pub struct Registrar {
    rpcbind: Option<SocketAddr>,
    embedded: Option<ServerHandle>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
}

/// Whether a port mapper answers NULL on loopback. TCP, so that "nobody
/// listens" is known at once from the refused connection.
pub async fn probe(port: u16) -> bool {
    let addr = loopback(port);
    let Ok(mut c) = RpcClient::tcp(addr, false).await else {
        return false;
    };
    c.policy.deadline = Duration::from_secs(2);
    c.null(None, rpcbind::PROGRAM, 2).await.is_ok()
}

/// Decides which port mapper to use and, for the embedded one, starts it.
pub async fn start(cfg: &Config, limits: ServerLimits) -> Result<Registrar> {
    let port = cfg.rpcbind.port;
    let embedded = match cfg.rpcbind.mode {
        RpcbindMode::None => {
            return Ok(Registrar {
                rpcbind: None,
                embedded: None,
            })
        }
        RpcbindMode::System => {
            if !probe(port).await {
                bail!("no rpcbind answers on 127.0.0.1:{port} (rpcbind.mode = \"system\")");
            }
            false
        }
        RpcbindMode::Embedded => true,
        RpcbindMode::Auto => !probe(port).await,
    };
    if !embedded {
        tracing::info!(port, "registering with the host's rpcbind");
        return Ok(Registrar {
            rpcbind: Some(loopback(port)),
            embedded: None,
        });
    }
    let mut d = Dispatcher::new(Drc::new(1, 0));
    d.register(Box::new(RpcbindServer::new()));
    let mut ips = cfg.listen.clone();
    // Registrations are accepted from loopback only, so ours must listen there.
    if !ips.iter().any(|ip| ip.is_loopback() || ip.is_unspecified()) {
        ips.push(Ipv4Addr::LOCALHOST.into());
    }
    let endpoints: Vec<Endpoint> = ips
        .iter()
        .map(|ip| Endpoint {
            addr: SocketAddr::new(*ip, port),
            udp: true,
            tcp: true,
        })
        .collect();
    let server = server::serve(
        Arc::new(Mutex::new(d)),
        &endpoints,
        cfg.rpcbind.unix_socket.as_deref(),
        limits,
    )
    .with_context(|| format!("starting the embedded rpcbind on port {port}"))?;
    tracing::info!(port, "no rpcbind found: serving our own");
    let own = server.bound.clone();
    let reg = Registrar {
        rpcbind: Some(loopback(port)),
        embedded: Some(server),
    };
    // The port mapper lists itself, as rpcbind does.
    reg.register(rpcbind::PROGRAM, &[2, 3, 4], &own).await?;
    Ok(reg)
}

fn entries(prog: u32, versions: &[u32], bound: &[(Transport, SocketAddr)]) -> Vec<Rpcb> {
    let mut out = Vec::new();
    for &vers in versions {
        for (t, addr) in bound {
            let netid = Netid::for_addr(*t == Transport::Tcp, addr);
            out.push(Rpcb::new(prog, vers, netid, *addr, OWNER));
        }
    }
    out
}

impl Registrar {
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Registers `prog` at every bound socket, replacing stale registrations
    /// a previous (crashed) instance may have left.
    pub async fn register(
        &self,
        prog: u32,
        versions: &[u32],
        bound: &[(Transport, SocketAddr)],
    ) -> Result<()> {
        let Some(addr) = self.rpcbind else {
            return Ok(());
        };
        let c = RpcClient::tcp(addr, true)
            .await
            .with_context(|| format!("connecting to rpcbind at {addr}"))?;
        for r in &entries(prog, versions, bound) {
            let args = rpcbind::rpcb_args(r);
            c.call(None, rpcbind::PROGRAM, 4, rpcbind::PROC_UNSET, &args)
                .await?;
            let res = c
                .call(None, rpcbind::PROGRAM, 4, rpcbind::PROC_SET, &args)
                .await?;
            if rpcbind::decode_bool(&res) != Some(true) {
                bail!("rpcbind at {addr} refused to register {r:?}");
            }
        }
        Ok(())
    }

    /// Takes back every registration of `prog` (at shutdown).
    pub async fn unregister(&self, prog: u32, versions: &[u32], bound: &[(Transport, SocketAddr)]) {
        let Some(addr) = self.rpcbind else {
            return;
        };
        let Ok(c) = RpcClient::tcp(addr, true).await else {
            tracing::warn!(%addr, "cannot reach rpcbind to unregister");
            return;
        };
        for r in &entries(prog, versions, bound) {
            let args = rpcbind::rpcb_args(r);
            let res = c.call(None, rpcbind::PROGRAM, 4, rpcbind::PROC_UNSET, &args);
            if let Err(e) = res.await {
                tracing::warn!(error = %e, "unregistering");
            }
        }
    }

    pub async fn shutdown(self) {
        if let Some(server) = self.embedded {
            server.shutdown().await;
        }
    }
}
