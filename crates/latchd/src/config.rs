//! The configuration file. Every key is optional; an unknown key is an error
//! that names the key and its line, because a misspelt limit silently
//! ignored is worse than a refusal to start.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;

/// How latchd finds a port mapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RpcbindMode {
    /// Use the host's rpcbind if one answers, otherwise run our own.
    Auto,
    /// Register with the host's rpcbind; fail if none answers.
    System,
    /// Always run our own (fails if the port is taken).
    Embedded,
    /// Register nowhere (clients must be told the ports).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to listen on; one socket per address and transport.
    pub listen: Vec<IpAddr>,
    /// NLM port, UDP and TCP. 4045 is IANA's port for lockd; a fixed port
    /// is what firewall rules need. 0 picks any free port.
    pub nlm_port: u16,
    /// NSM port; absent means NSM is served on the NLM sockets.
    pub nsm_port: Option<u16>,
    /// Where the NSM state number and monitor list (`nsm/`) and the NLM's
    /// list of hosts holding locks (`nlm-hosts`) live.
    pub state_dir: std::path::PathBuf,
    pub rpcbind: RpcbindConfig,
    pub nlm: NlmConfig,
    pub nsm: NsmConfig,
    pub client: ClientConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    /// The local lock socket for programs on this host (`latch lock`, the
    /// client library). Empty string: none.
    #[serde(deserialize_with = "optional_path")]
    pub local_socket: Option<std::path::PathBuf>,
    /// Its file mode: who may lock. 0o666 lets every local user lock, as
    /// fcntl() does; 0o660 with a group narrows it.
    pub local_socket_mode: u32,
    /// The admin socket (`latch locks`, `hosts`, `release`, `grace`,
    /// `stats`), mode 0600. Empty string: none.
    #[serde(deserialize_with = "optional_path")]
    pub admin_socket: Option<std::path::PathBuf>,
    /// Where `GET /metrics` is served (Prometheus); absent: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Large blocks (a big lock table's index) on transparent huge pages
    /// (see `latch_alloc`): lookups in a table of a million locks take a
    /// fifth to a quarter less time. Off, they stay on 4 kB pages, which
    /// a table growing into memory never touched before faults in faster
    /// on virtual machines whose free memory goes back to the host.
    pub huge_pages: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantedStyleConfig {
    Auto,
    Sync,
    Msg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnacknowledgedConfig {
    Keep,
    Release,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NlmConfig {
    /// Length of the grace period after a restart; it ends early once
    /// every host that held locks has reclaimed or gone.
    pub grace_ms: u64,
    /// Grace lasts at least this long (if `grace_ms` allows), after every
    /// restart, even one with no host to wait for (not after the first
    /// start): requests sent before the crash, still retransmitted or in
    /// the network, are refused as in grace, not granted by a server that
    /// forgot them.
    pub grace_min_ms: u64,
    /// GRANTED callbacks: "auto" (GRANTED_MSG for clients that used
    /// LOCK_MSG, GRANTED otherwise), "sync" or "msg".
    pub granted_style: GrantedStyleConfig,
    /// A grant the client never acknowledges: "keep" the lock (the client's
    /// retransmitted LOCK is answered granted) or "release" it.
    pub unacknowledged: UnacknowledgedConfig,
    pub granted_tries_max: u32,
    pub max_hosts: usize,
    /// Held locks, blocked requests and shares per client host.
    pub max_locks_per_host: usize,
    /// Blocked requests queued on one file.
    pub max_waiters_per_file: usize,
}

impl Default for NlmConfig {
    fn default() -> Self {
        NlmConfig {
            grace_ms: 45_000,
            grace_min_ms: 10_000,
            granted_style: GrantedStyleConfig::Auto,
            unacknowledged: UnacknowledgedConfig::Keep,
            granted_tries_max: 10,
            max_hosts: 4096,
            max_locks_per_host: 1 << 16,
            max_waiters_per_file: 1024,
        }
    }
}

/// The client side: this host's locks on other servers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Our caller name on servers; their status monitors notify it when we
    /// restart, so it must resolve to this host there. Empty: the host name.
    pub name: String,
    /// "udp" or "tcp" to the servers.
    pub transport: String,
    /// A blocked LOCK is sent again this often, in case its GRANTED was lost.
    pub resend_blocked_ms: u64,
    /// "sync" (TEST, LOCK, CANCEL, UNLOCK) or "msg" (their asynchronous
    /// `_MSG` forms, answered by `_RES` calls to our NLM port).
    pub procedures: ProceduresConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProceduresConfig {
    Sync,
    Msg,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            name: String::new(),
            transport: "udp".into(),
            resend_blocked_ms: 30_000,
            procedures: ProceduresConfig::Sync,
        }
    }
}

/// Which status monitor the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsmMode {
    /// Latch's own, served by latchd on program 100024.
    Latch,
    /// The host's rpc.statd (latchd serves no NSM).
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyCheckConfig {
    /// SM_NOTIFY may affect a host only when sent from an address the host
    /// resolves to or was seen at.
    Address,
    /// Anyone may announce any host's reboot.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NsmConfig {
    pub mode: NsmMode,
    /// Names announced in SM_NOTIFY after a restart; empty: the host name.
    /// Several for the floating addresses of HA setups.
    pub names: Vec<String>,
    pub notify_check: NotifyCheckConfig,
    /// How long to keep telling a host of our restart.
    pub notify_timeout_ms: u64,
    pub max_hosts: usize,
}

impl Default for NsmConfig {
    fn default() -> Self {
        NsmConfig {
            mode: NsmMode::Latch,
            names: Vec::new(),
            notify_check: NotifyCheckConfig::Address,
            // sm-notify's own bound: 15 minutes.
            notify_timeout_ms: 15 * 60 * 1000,
            max_hosts: 4096,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcbindConfig {
    pub mode: RpcbindMode,
    /// Where the port mapper is (or where ours listens).
    pub port: u16,
    /// The AF_LOCAL socket our rpcbind also serves, where local tools such
    /// as `rpcinfo -p` (no host) look. Empty string: none.
    #[serde(deserialize_with = "optional_path")]
    pub unix_socket: Option<std::path::PathBuf>,
}

fn optional_path<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::path::PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then(|| s.into()))
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub idle_timeout_ms: u64,
    pub max_record_bytes: usize,
    pub drc_entries: usize,
    pub drc_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as "info" or "latch_io=debug"; RUST_LOG wins.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            ],
            nlm_port: 4045,
            nsm_port: None,
            state_dir: "/var/lib/latch".into(),
            rpcbind: RpcbindConfig::default(),
            nlm: NlmConfig::default(),
            nsm: NsmConfig::default(),
            client: ClientConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            local_socket: Some("/run/latch/latchd.sock".into()),
            local_socket_mode: 0o666,
            admin_socket: Some("/run/latch/admin.sock".into()),
            metrics_listen: None,
            huge_pages: true,
        }
    }
}

impl Default for RpcbindConfig {
    fn default() -> Self {
        RpcbindConfig {
            mode: RpcbindMode::Auto,
            port: latch_oncrpc::rpcbind::PORT,
            unix_socket: Some("/run/rpcbind.sock".into()),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = latch_io::ServerLimits::default();
        LimitsConfig {
            max_connections: d.max_connections,
            idle_timeout_ms: u64::try_from(d.idle_timeout.as_millis()).unwrap_or(u64::MAX),
            max_record_bytes: d.max_record,
            drc_entries: 4096,
            drc_bytes: 4 << 20,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// A config problem, worded for the person who wrote the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: describe(text, &e),
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() {
            return Err("listen: at least one address is needed".into());
        }
        if !matches!(self.client.transport.as_str(), "udp" | "tcp") {
            return Err(format!(
                "client.transport: {:?} is neither \"udp\" nor \"tcp\"",
                self.client.transport
            ));
        }
        let l = &self.limits;
        if l.max_connections == 0 || l.max_record_bytes < 1024 || l.drc_entries == 0 {
            return Err("limits: max_connections and drc_entries must be positive, max_record_bytes at least 1024".into());
        }
        Ok(())
    }
}

/// "line N: <what toml said>", with the line number computed from the
/// error's byte span so it survives changes in toml's own wording.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}: {msg} (in `{src}`)")
        }
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(Config::parse("", "x").unwrap(), Config::default());
    }

    #[test]
    fn a_full_file_parses() {
        let c = Config::parse(
            "listen = [\"127.0.0.1\", \"::1\"]\nnlm_port = 0\nnsm_port = 662\n\
             [rpcbind]\nmode = \"embedded\"\nport = 1111\n\
             [limits]\nmax_connections = 10\nidle_timeout_ms = 500\n\
             [log]\nlevel = \"debug\"\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.nsm_port, Some(662));
        assert_eq!(c.rpcbind.mode, RpcbindMode::Embedded);
        assert_eq!(c.limits.max_connections, 10);
        assert_eq!(c.limits.drc_entries, 4096, "unset keys keep defaults");
    }

    #[test]
    fn an_unknown_key_names_the_key_and_line() {
        let e = Config::parse(
            "nlm_port = 1\n\n[limits]\nmax_conections = 5\n",
            "latchd.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("latchd.toml"), "{e}");
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn bad_values_name_the_line() {
        let e = Config::parse("nlm_port = 70000\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = Config::parse("[rpcbind]\nmode = \"sometimes\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("sometimes"), "{e}");
        let e = Config::parse("listen = []\n", "f").unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn huge_pages_on_by_default_and_a_bad_value_names_its_line() {
        assert!(Config::default().huge_pages);
        assert!(
            !Config::parse("huge_pages = false\n", "x")
                .unwrap()
                .huge_pages
        );
        let e = Config::parse("nlm_port = 1\nhuge_pages = \"yes\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("huge_pages"), "{e}");
    }

    #[test]
    fn admin_socket_and_metrics() {
        let d = Config::default();
        assert_eq!(d.admin_socket, Some("/run/latch/admin.sock".into()));
        assert_eq!(d.metrics_listen, None, "metrics are off by default");
        let c = Config::parse(
            "admin_socket = \"\"\nmetrics_listen = \"127.0.0.1:9405\"\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.admin_socket, None);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9405".parse().unwrap()));
    }
}
