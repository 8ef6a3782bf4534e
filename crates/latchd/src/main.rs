//! latchd: the Latch lock manager daemon.

mod config;
mod portmap;
mod programs;

use anyhow::{Context, Result};
use clap::Parser;
use config::{Config, RpcbindMode};
use latch_io::{server, Endpoint, ServerLimits};
use latch_oncrpc::drc::Drc;
use latch_oncrpc::Dispatcher;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "Latch: a network lock manager (NLM + NSM)")]
struct Args {
    /// TOML configuration file (every key optional).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Override `listen`.
    #[arg(long, value_delimiter = ',')]
    listen: Option<Vec<IpAddr>>,
    /// Override `nlm_port`.
    #[arg(long)]
    nlm_port: Option<u16>,
    /// Override `nsm_port`.
    #[arg(long)]
    nsm_port: Option<u16>,
    /// Override `rpcbind.mode` (auto, system, embedded, none).
    #[arg(long)]
    rpcbind: Option<String>,
    /// Override `rpcbind.port`.
    #[arg(long)]
    rpcbind_port: Option<u16>,
    /// Parse the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

fn load(args: &Args) -> Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(l) = &args.listen {
        cfg.listen = l.clone();
    }
    if let Some(p) = args.nlm_port {
        cfg.nlm_port = p;
    }
    if args.nsm_port.is_some() {
        cfg.nsm_port = args.nsm_port;
    }
    if let Some(m) = &args.rpcbind {
        let text = format!("[rpcbind]\nmode = {m:?}\n");
        cfg.rpcbind.mode = Config::parse(&text, "--rpcbind")?.rpcbind.mode;
    }
    if let Some(p) = args.rpcbind_port {
        cfg.rpcbind.port = p;
    }
    Ok(cfg)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = load(&args)?;
    if args.check_config {
        println!("{cfg:#?}");
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.level))
        .context("log.level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(cfg))
}

fn limits(cfg: &Config) -> ServerLimits {
    ServerLimits {
        max_connections: cfg.limits.max_connections,
        idle_timeout: Duration::from_millis(cfg.limits.idle_timeout_ms),
        max_record: cfg.limits.max_record_bytes,
        ..ServerLimits::default()
    }
}

fn endpoints(cfg: &Config, port: u16) -> Vec<Endpoint> {
    cfg.listen
        .iter()
        .map(|ip| Endpoint {
            addr: SocketAddr::new(*ip, port),
            udp: true,
            tcp: true,
        })
        .collect()
}

async fn run(cfg: Config) -> Result<()> {
    match latch_io::sock::raise_nofile_limit() {
        Ok(n) => tracing::debug!(nofile = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let limits = limits(&cfg);
    let registrar = portmap::start(&cfg, limits).await?;

    let new_dispatcher = || Dispatcher::new(Drc::new(cfg.limits.drc_entries, cfg.limits.drc_bytes));
    let mut d = new_dispatcher();
    d.register(Box::new(programs::NullOnly::nlm()));
    let separate_nsm = cfg.nsm_port.is_some_and(|p| p != cfg.nlm_port);
    if !separate_nsm {
        d.register(Box::new(programs::NullOnly::nsm()));
    }
    let nlm = server::serve(
        Arc::new(Mutex::new(d)),
        &endpoints(&cfg, cfg.nlm_port),
        None,
        limits,
    )
    .with_context(|| format!("binding the NLM port {}", cfg.nlm_port))?;
    let nsm = match cfg.nsm_port.filter(|_| separate_nsm) {
        Some(port) => {
            let mut d = new_dispatcher();
            d.register(Box::new(programs::NullOnly::nsm()));
            Some(
                server::serve(
                    Arc::new(Mutex::new(d)),
                    &endpoints(&cfg, port),
                    None,
                    limits,
                )
                .with_context(|| format!("binding the NSM port {port}"))?,
            )
        }
        None => None,
    };
    let nsm_bound = nsm.as_ref().map_or(&nlm.bound, |s| &s.bound).clone();
    let nlm_bound = nlm.bound.clone();
    let regs = [
        (
            programs::NLM_PROGRAM,
            &programs::NLM_VERSIONS[..],
            &nlm_bound,
        ),
        (
            programs::NSM_PROGRAM,
            &programs::NSM_VERSIONS[..],
            &nsm_bound,
        ),
    ];
    for (prog, vers, bound) in regs {
        registrar.register(prog, vers, bound).await?;
    }
    tracing::info!(
        nlm = ?nlm_bound,
        nsm = ?nsm_bound,
        rpcbind = if registrar.is_embedded() { "embedded" } else if cfg.rpcbind.mode == RpcbindMode::None { "none" } else { "system" },
        "latchd ready"
    );

    wait_for_signal().await?;
    tracing::info!("shutting down");
    for (prog, vers, bound) in regs {
        registrar.unregister(prog, vers, bound).await;
    }
    nlm.shutdown().await;
    if let Some(n) = nsm {
        n.shutdown().await;
    }
    registrar.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
