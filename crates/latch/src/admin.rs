//! `latch locks`, `latch hosts`, `latch release`, `latch grace --end`,
//! `latch stats`: questions to the local latchd over its admin socket (one
//! JSON request per line, one JSON answer per line), printed as tables.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_SOCKET: &str = "/run/latch/admin.sock";

/// Options every admin command takes.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// latchd's admin socket (its `admin_socket` / `--admin-socket`).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub admin_socket: std::path::PathBuf,
    /// Print latchd's JSON answer as it is.
    #[arg(long)]
    pub json: bool,
}

/// Exit codes of the admin commands (documented in the README).
pub mod exit {
    /// The admin socket is missing or nobody listens on it.
    pub const NOT_RUNNING: i32 = 10;
    /// The socket is there but we may not use it.
    pub const PERMISSION: i32 = 11;
    /// latchd answered with an error, or not in the protocol.
    pub const SERVER_ERROR: i32 = 12;
    /// `release` matched no host.
    pub const NO_SUCH_HOST: i32 = 13;
}

/// A failure with the exit code that names its class.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Sends one request and returns the answer, which has `"ok": true`.
pub fn ask(socket: &Path, req: &Value) -> Result<Value, Failure> {
    let s = UnixStream::connect(socket).map_err(|e| {
        use std::io::ErrorKind::*;
        match e.kind() {
            NotFound | ConnectionRefused => Failure::new(
                exit::NOT_RUNNING,
                format!(
                    "{}: {e}: latchd is not running or uses another --admin-socket",
                    socket.display()
                ),
            ),
            PermissionDenied => Failure::new(
                exit::PERMISSION,
                format!(
                    "{}: permission denied: run as root (the admin socket is mode 0600)",
                    socket.display()
                ),
            ),
            _ => Failure::new(exit::NOT_RUNNING, format!("{}: {e}", socket.display())),
        }
    })?;
    let io = |e: std::io::Error| {
        Failure::new(
            exit::SERVER_ERROR,
            format!("talking to latchd at {}: {e}", socket.display()),
        )
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| Failure::new(1, e.to_string()))?;
    line.push(b'\n');
    (&s).write_all(&line).map_err(io)?;
    let mut answer = Vec::new();
    // Bounded: a listing of every lock is large but not endless.
    BufReader::new((&s).take(256 << 20))
        .read_until(b'\n', &mut answer)
        .map_err(io)?;
    if answer.is_empty() {
        // latchd closes connections from users other than root and itself.
        return Err(Failure::new(
            exit::PERMISSION,
            "latchd closed the connection: run as root",
        ));
    }
    let v: Value = serde_json::from_slice(&answer)
        .map_err(|e| Failure::new(exit::SERVER_ERROR, format!("bad answer from latchd: {e}")))?;
    if v.get("ok") != Some(&Value::Bool(true)) {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(Failure::new(
            exit::SERVER_ERROR,
            format!("latchd refused: {msg}"),
        ));
    }
    Ok(v)
}

/// What to ask for.
pub enum Op {
    Locks,
    Hosts,
    Release {
        host: String,
        addr: Option<std::net::IpAddr>,
    },
    GraceEnd,
    Stats,
}

/// Runs one admin command; returns the exit code.
pub fn run(socket: &Path, op: Op, raw: bool) -> i32 {
    let req = match &op {
        Op::Locks => json!({"op": "locks"}),
        Op::Hosts => json!({"op": "hosts"}),
        Op::Release { host, addr } => {
            json!({"op": "release", "host": host, "addr": addr.map(|a| a.to_string())})
        }
        Op::GraceEnd => json!({"op": "grace_end"}),
        Op::Stats => json!({"op": "stats"}),
    };
    let v = match ask(socket, &req) {
        Ok(v) => v,
        Err(f) => {
            eprintln!("latch: {}", f.message);
            return f.code;
        }
    };
    if raw {
        println!("{v}");
    } else {
        match op {
            Op::Locks => print_locks(&v),
            Op::Hosts => print_hosts(&v),
            Op::Release { ref host, addr } => {
                let n = v.get("matched").and_then(Value::as_u64).unwrap_or(0);
                let at = addr.map(|a| format!(" at {a}")).unwrap_or_default();
                println!("released {n} host(s) named {host}{at}");
            }
            Op::GraceEnd => {
                let was = v.get("was_in_grace").and_then(Value::as_bool) == Some(true);
                println!(
                    "{}",
                    if was {
                        "grace period ended"
                    } else {
                        "not in a grace period (nothing to end)"
                    }
                );
            }
            Op::Stats => print_stats(&v, ""),
        }
    }
    if let Op::Release { .. } = op {
        if v.get("matched").and_then(Value::as_u64) == Some(0) {
            return exit::NO_SUCH_HOST;
        }
    }
    0
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) if ms < 3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        Some(ms) => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Long hex strings are cut in the table (`--json` has them whole).
fn short(h: &str) -> String {
    if h.len() <= 24 {
        h.to_string()
    } else {
        format!("{}…", &h[..23])
    }
}

fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<pad$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn print_locks(v: &Value) {
    let empty = Vec::new();
    let list = v.get("locks").and_then(Value::as_array).unwrap_or(&empty);
    if list.is_empty() {
        println!("no locks, waiters or shares");
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|l| {
            let off = l.get("offset").and_then(Value::as_u64).unwrap_or(0);
            let len = l.get("len").and_then(Value::as_u64).unwrap_or(0);
            let range = if len == 0 {
                format!("{off}-end")
            } else {
                format!("{off}-{}", off.saturating_add(len - 1))
            };
            let state = s(l, "state");
            let mode = match l.get("share") {
                Some(sh) if sh.is_object() => {
                    format!("access={} deny={}", s(sh, "access"), s(sh, "deny"))
                }
                _ => s(l, "mode"),
            };
            vec![
                short(&s(l, "fh")),
                if state == "share" { "-".into() } else { range },
                mode,
                state,
                format!("{} ({})", s(l, "host"), s(l, "addr")),
                s(l, "svid"),
                short(&s(l, "oh")),
                age(l.get("age_ms").and_then(Value::as_u64)),
            ]
        })
        .collect();
    table(
        &[
            "FILE", "RANGE", "MODE", "STATE", "HOST", "SVID", "OWNER", "AGE",
        ],
        &rows,
    );
}

fn print_hosts(v: &Value) {
    let empty = Vec::new();
    let list = v.get("hosts").and_then(Value::as_array).unwrap_or(&empty);
    if v.get("in_grace") == Some(&Value::Bool(true)) {
        println!("(in the grace period: only reclaims are accepted)");
    }
    if list.is_empty() {
        println!("no hosts");
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|h| {
            vec![
                s(h, "name"),
                s(h, "addr"),
                s(h, "nsm_state"),
                if h.get("monitored") == Some(&Value::Bool(true)) {
                    "yes".into()
                } else {
                    "no".into()
                },
                s(h, "entries"),
                age(h.get("idle_ms").and_then(Value::as_u64)),
            ]
        })
        .collect();
    table(
        &[
            "HOST",
            "ADDRESS",
            "NSM STATE",
            "MONITORED",
            "ENTRIES",
            "IDLE",
        ],
        &rows,
    );
}

/// Sections and counters as indented `name value` lines.
fn print_stats(v: &Value, indent: &str) {
    let Value::Object(m) = v else {
        return;
    };
    for (k, x) in m {
        if k == "ok" {
            continue;
        }
        match x {
            Value::Object(_) => {
                println!("{indent}{k}:");
                print_stats(x, &format!("{indent}  "));
            }
            _ => println!("{indent}{k:<24} {x}"),
        }
    }
}
