//! latchd: the Latch lock manager daemon.

mod admin;
use latchd::config;
mod local;
mod metrics;
mod nlm_service;
mod nsm_service;
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

/// Large blocks (a big lock table's index) on huge pages: see `latch_alloc`.
#[global_allocator]
static ALLOC: latch_alloc::HugePages = latch_alloc::HugePages::new();

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
    /// Override `state_dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Override `admin_socket` ("" = none).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Override `local_socket` ("" = none).
    #[arg(long)]
    local_socket: Option<PathBuf>,
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
    if let Some(d) = &args.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(p) = &args.local_socket {
        cfg.local_socket = (!p.as_os_str().is_empty()).then(|| p.clone());
    }
    if let Some(p) = &args.admin_socket {
        cfg.admin_socket = (!p.as_os_str().is_empty()).then(|| p.clone());
    }
    Ok(cfg)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = load(&args)?;
    // Before any table exists: the choice applies to blocks mapped later.
    ALLOC.set_advise(cfg.huge_pages);
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
    // The state number is bumped before anything is answered (seed 002).
    let nsm = start_nsm(&cfg)?;
    let registrar = portmap::start(&cfg, limits).await?;

    let new_dispatcher = || Dispatcher::new(Drc::new(cfg.limits.drc_entries, cfg.limits.drc_bytes));
    let nsm_program = |n: &NsmParts| {
        Box::new(nsm_service::NsmProgram {
            core: n.core.clone(),
            wake: n.wake.clone(),
        })
    };
    let outbound = Arc::new(nsm_service::Outbound::new().context("outgoing RPC socket")?);
    let nlm_core = start_nlm(&cfg)?;
    let nlm_wake = Arc::new(tokio::sync::Notify::new());
    let routes: local::Routes = Arc::default();
    if let Some(n) = &nsm {
        // Our own LOCKs carry our NSM state, so servers can tell our reboots.
        let state = nsm_service::lock(&n.core).state();
        nlm_service::lock(&nlm_core).client.set_nsm_state(state);
        nlm_service::lock(&nlm_core).set_boot(state);
        nlm_service::lock(&nlm_core).set_own_state(state);
        let to_tell: Vec<Vec<u8>> = nsm_service::lock(&n.core)
            .to_notify()
            .map(<[u8]>::to_vec)
            .collect();
        nlm_service::lock(&nlm_core)
            .client
            .set_announcing(to_tell.iter().map(Vec::as_slice));
    } else {
        // The system's statd keeps the state number; any value that differs
        // from one start to the next does for GRANTED cookies.
        nlm_service::lock(&nlm_core).set_boot(boot_nonce());
    }
    let mut d = new_dispatcher();
    d.register(Box::new(nlm_service::NlmProgram {
        core: nlm_core.clone(),
        wake: nlm_wake.clone(),
    }));
    let separate_nsm = cfg.nsm_port.is_some_and(|p| p != cfg.nlm_port);
    if let (false, Some(n)) = (separate_nsm, &nsm) {
        d.register(nsm_program(n));
    }
    let nlm_dispatcher = Arc::new(Mutex::new(d));
    let nlm = server::serve(
        nlm_dispatcher.clone(),
        &endpoints(&cfg, cfg.nlm_port),
        None,
        limits,
    )
    .with_context(|| format!("binding the NLM port {}", cfg.nlm_port))?;
    let nsm_server = match (cfg.nsm_port.filter(|_| separate_nsm), &nsm) {
        (Some(port), Some(n)) => {
            let mut d = new_dispatcher();
            d.register(nsm_program(n));
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
        _ => None,
    };
    let nsm_bound = nsm_server.as_ref().map_or(&nlm.bound, |s| &s.bound).clone();
    let nlm_bound = nlm.bound.clone();
    let mut regs = vec![(
        programs::NLM_PROGRAM,
        &programs::NLM_VERSIONS[..],
        &nlm_bound,
    )];
    // With the host's rpc.statd as the monitor, 100024 is statd's.
    if nsm.is_some() {
        regs.push((
            programs::NSM_PROGRAM,
            &programs::NSM_VERSIONS[..],
            &nsm_bound,
        ));
    }
    for &(prog, vers, bound) in &regs {
        registrar.register(prog, vers, bound).await?;
    }
    let driver = nsm.as_ref().map(|n| {
        let d = Arc::new(nsm_service::Driver {
            core: n.core.clone(),
            wake: n.wake.clone(),
            out: outbound.clone(),
            local_rpcbind_port: cfg.rpcbind.port,
            notify_timeout: Duration::from_millis(cfg.nsm.notify_timeout_ms),
            announced: Some(nlm_core.clone()),
        });
        tokio::spawn(d.run())
    });
    let nlm_driver = tokio::spawn(
        Arc::new(nlm_service::Driver::new(
            nlm_core.clone(),
            nlm_wake.clone(),
            outbound.clone(),
            cfg.rpcbind.port,
            routes.clone(),
            cfg.client.transport == "tcp",
        ))
        .run(),
    );
    let local = match &cfg.local_socket {
        Some(path) => {
            let svc = Arc::new(local::LocalService {
                core: nlm_core.clone(),
                wake: nlm_wake.clone(),
                routes: routes.clone(),
            });
            Some(
                svc.spawn(path, cfg.local_socket_mode)
                    .with_context(|| format!("binding the local socket {}", path.display()))?,
            )
        }
        None => None,
    };
    admin::spawn(
        cfg.admin_socket.as_deref(),
        cfg.metrics_listen,
        admin::Parts {
            nlm: nlm_core.clone(),
            nsm: nsm.as_ref().map(|n| n.core.clone()),
            servers: std::iter::once(("nlm", nlm.stats.clone()))
                .chain(nsm_server.as_ref().map(|s| ("nsm", s.stats.clone())))
                .collect(),
            dispatchers: vec![("nlm", nlm_dispatcher.clone())],
        },
    );
    tracing::info!(
        nsm_state = nsm.as_ref().map(|n| nsm_service::lock(&n.core).state()),
        grace = nlm_service::lock(&nlm_core).in_grace(),
        nlm = ?nlm_bound,
        nsm = ?nsm_bound,
        rpcbind = if registrar.is_embedded() { "embedded" } else if cfg.rpcbind.mode == RpcbindMode::None { "none" } else { "system" },
        "latchd ready"
    );

    wait_for_signal().await?;
    tracing::info!("shutting down");
    for &(prog, vers, bound) in &regs {
        registrar.unregister(prog, vers, bound).await;
    }
    if let Some(d) = driver {
        d.abort();
    }
    nlm_driver.abort();
    if let Some(l) = local {
        l.abort();
        if let Some(p) = &cfg.local_socket {
            let _ = std::fs::remove_file(p);
        }
    }
    nlm.shutdown().await;
    if let Some(n) = nsm_server {
        n.shutdown().await;
    }
    registrar.shutdown().await;
    Ok(())
}

/// Latch's own status monitor, started (state bumped) and ready to serve.
struct NsmParts {
    core: nsm_service::Core,
    wake: Arc<tokio::sync::Notify>,
}

/// The NLM server, in grace if hosts held locks before our restart.
fn start_nlm(cfg: &Config) -> Result<nlm_service::Core> {
    let n = &cfg.nlm;
    let ncfg = latch_nlm::NlmConfig {
        our_name: nsm_service::hostname(),
        max_hosts: n.max_hosts,
        grace_ms: n.grace_ms,
        grace_min_ms: n.grace_min_ms,
        granted_style: match n.granted_style {
            config::GrantedStyleConfig::Auto => latch_nlm::GrantedStyle::Auto,
            config::GrantedStyleConfig::Sync => latch_nlm::GrantedStyle::Sync,
            config::GrantedStyleConfig::Msg => latch_nlm::GrantedStyle::Msg,
        },
        unacknowledged: match n.unacknowledged {
            config::UnacknowledgedConfig::Keep => latch_nlm::Unacknowledged::Keep,
            config::UnacknowledgedConfig::Release => latch_nlm::Unacknowledged::Release,
        },
        granted_tries_max: n.granted_tries_max,
        limits: latch_lock::Limits {
            entries_per_host: n.max_locks_per_host,
            waiters_per_file: n.max_waiters_per_file,
            ..latch_lock::Limits::default()
        },
        client: latch_nlm::client::ClientConfig {
            our_name: if cfg.client.name.is_empty() {
                nsm_service::hostname()
            } else {
                cfg.client.name.as_bytes().to_vec()
            },
            resend_blocked_ms: cfg.client.resend_blocked_ms,
            msg: cfg.client.procedures == config::ProceduresConfig::Msg,
            ..latch_nlm::client::ClientConfig::default()
        },
        ..latch_nlm::NlmConfig::default()
    };
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let store = latch_nlm::FileHostStore {
        path: cfg.state_dir.join("nlm-hosts"),
        fs: latch_nsm::RealFs,
    };
    let server = latch_nlm::NlmServer::new(ncfg, Box::new(store), std::time::Instant::now())
        .with_context(|| format!("reading {}", cfg.state_dir.join("nlm-hosts").display()))?;
    Ok(Arc::new(Mutex::new(server)))
}

fn start_nsm(cfg: &Config) -> Result<Option<NsmParts>> {
    if cfg.nsm.mode == config::NsmMode::System {
        return Ok(None);
    }
    let dir = &cfg.state_dir.join("nsm");
    let store = latch_nsm::FileStore::open(dir)
        .with_context(|| format!("opening the NSM state in {}", dir.display()))?;
    let names = if cfg.nsm.names.is_empty() {
        vec![nsm_service::hostname()]
    } else {
        cfg.nsm
            .names
            .iter()
            .map(|n| n.as_bytes().to_vec())
            .collect()
    };
    let mcfg = latch_nsm::MonitorConfig {
        names,
        max_hosts: cfg.nsm.max_hosts,
        notify_check: match cfg.nsm.notify_check {
            config::NotifyCheckConfig::Address => latch_nsm::NotifyCheck::Address,
            config::NotifyCheckConfig::Off => latch_nsm::NotifyCheck::Off,
        },
        ..latch_nsm::MonitorConfig::default()
    };
    let monitor = latch_nsm::Monitor::start(store, mcfg)
        .with_context(|| format!("starting the status monitor in {}", dir.display()))?;
    let wake = Arc::new(tokio::sync::Notify::new());
    // The restart notifications queued at start.
    wake.notify_one();
    Ok(Some(NsmParts {
        core: Arc::new(Mutex::new(monitor)),
        wake,
    }))
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

/// A number unlikely to repeat across starts: the clock's nanoseconds
/// mixed with our pid.
fn boot_nonce() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos as u32) ^ ((nanos >> 32) as u32) ^ std::process::id().rotate_left(16)
}
