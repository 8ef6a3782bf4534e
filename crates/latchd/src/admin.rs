//! The admin socket: a Unix-domain stream socket (mode 0600, and only root
//! or latchd's own user may talk to it, checked by peer credentials) where
//! `latch locks`, `latch hosts`, `latch release`, `latch grace --end` and
//! `latch stats` ask the running server.
//!
//! Protocol: one JSON object per line each way. Requests are
//! `{"op":"locks"}`, `{"op":"hosts"}`, `{"op":"release","host":NAME,"addr":IP?}`,
//! `{"op":"grace_end"}`, `{"op":"stats"}`; every answer carries `"ok"`, and
//! `"error"` when it is false.

use crate::{nlm_service, nsm_service};
use latch_io::server::ServerStats;
use latch_io::SharedDispatcher;
use latch_nlm::admin::EntryState;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// Everything the admin socket and the metrics page look at.
#[derive(Clone)]
pub struct Parts {
    pub nlm: nlm_service::Core,
    pub nsm: Option<nsm_service::Core>,
    /// The RPC servers' connection counters, by name ("nlm", "nsm").
    pub servers: Vec<(&'static str, Arc<ServerStats>)>,
    pub dispatchers: Vec<(&'static str, SharedDispatcher)>,
}

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;
/// Admin connections served at once; more wait in the kernel's backlog.
const MAX_CONNS: usize = 16;
/// A connection silent this long is closed.
const IDLE: Duration = Duration::from_secs(60);

/// Starts the admin socket (if configured) and the metrics page (if
/// configured). Failing to bind either is logged, not fatal: the lock
/// service matters more than its introspection.
pub fn spawn(admin_socket: Option<&Path>, metrics: Option<SocketAddr>, parts: Parts) {
    if let Some(path) = admin_socket {
        match bind(path) {
            Ok(l) => {
                tracing::info!(path = %path.display(), "admin socket");
                tokio::spawn(serve(l, path.to_path_buf(), parts.clone()));
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot serve the admin socket")
            }
        }
    }
    if let Some(addr) = metrics {
        crate::metrics::spawn(addr, parts);
    }
}

/// Binds `path` with mode 0600. A live socket there (another latchd) is an
/// error; a stale one is replaced. The socket is bound under a temporary
/// name, restricted, then renamed into place, so the final name is never
/// reachable with looser permissions.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process serves this admin socket",
        ));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(l)
}

async fn serve(l: UnixListener, path: PathBuf, parts: Parts) {
    let limit = Arc::new(Semaphore::new(MAX_CONNS));
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let s = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "admin accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = s.peer_cred().is_ok_and(|c| c.uid() == 0 || c.uid() == me);
        if !allowed {
            tracing::warn!("admin connection from another user refused");
            continue;
        }
        let parts = parts.clone();
        tokio::spawn(async move {
            if let Err(e) = conn(s, &parts).await {
                tracing::debug!(error = %e, "admin connection");
            }
            drop(permit);
        });
    }
}

async fn conn(s: UnixStream, parts: &Parts) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match tokio::time::timeout(IDLE, read_line(&mut r, &mut line)).await {
            Ok(n) => n?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let answer = if line.len() > MAX_LINE {
            error("request line too long")
        } else {
            handle(&line, parts)
        };
        let mut out = serde_json::to_vec(&answer).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        w.write_all(&out).await?;
        if line.len() > MAX_LINE {
            return Ok(());
        }
    }
}

/// Reads one line, keeping at most MAX_LINE + 1 bytes of it (the rest is
/// consumed and dropped). Returns the bytes read, 0 at end of stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = (MAX_LINE + 1).saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = done.unwrap_or(buf.len());
        total += used;
        r.consume(used);
        if done.is_some() {
            return Ok(total);
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Locks,
    Hosts,
    Release {
        host: String,
        #[serde(default)]
        addr: Option<IpAddr>,
    },
    GraceEnd,
    Stats,
}

fn error(msg: &str) -> Value {
    json!({ "ok": false, "error": msg })
}

pub fn handle(line: &[u8], parts: &Parts) -> Value {
    let req: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return error(&format!("bad request: {e}")),
    };
    match req {
        Request::Locks => locks(parts),
        Request::Hosts => hosts(parts),
        Request::Release { host, addr } => {
            let n =
                nlm_service::lock(&parts.nlm).release_named(host.as_bytes(), addr, Instant::now());
            tracing::info!(host, ?addr, matched = n, "released by the operator");
            json!({ "ok": true, "matched": n })
        }
        Request::GraceEnd => {
            let mut s = nlm_service::lock(&parts.nlm);
            let was = s.in_grace();
            s.end_grace();
            tracing::info!(was_in_grace = was, "grace period ended by the operator");
            json!({ "ok": true, "was_in_grace": was })
        }
        Request::Stats => {
            let mut v = stats(parts);
            if let Value::Object(m) = &mut v {
                m.insert("ok".into(), Value::Bool(true));
            }
            v
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn locks(parts: &Parts) -> Value {
    let entries = nlm_service::lock(&parts.nlm).list_locks(Instant::now());
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let (state, share) = match e.state {
                EntryState::Held => ("held", Value::Null),
                EntryState::Waiting => ("waiting", Value::Null),
                EntryState::Share { access, deny } => {
                    ("share", json!({ "access": access, "deny": deny }))
                }
            };
            json!({
                "fh": hex(&e.fh),
                "offset": e.offset,
                "len": e.len,
                "mode": if e.exclusive { "exclusive" } else { "shared" },
                "svid": e.svid,
                "oh": hex(&e.oh),
                "host": e.host.as_ref().map(|(n, _)| text(n)),
                "addr": e.host.as_ref().map(|(_, a)| a.to_string()),
                "state": state,
                "share": share,
                "age_ms": e.age_ms,
            })
        })
        .collect();
    json!({ "ok": true, "locks": list })
}

fn hosts(parts: &Parts) -> Value {
    let (list, grace) = {
        let s = nlm_service::lock(&parts.nlm);
        (s.list_hosts(Instant::now()), s.in_grace())
    };
    let list: Vec<Value> = list
        .iter()
        .map(|h| {
            json!({
                "name": text(&h.name),
                "addr": h.ip.to_string(),
                "nsm_state": h.nsm_state,
                "monitored": h.monitored,
                "entries": h.entries,
                "idle_ms": h.idle_ms,
            })
        })
        .collect();
    json!({ "ok": true, "in_grace": grace, "hosts": list })
}

/// The name of an NLM procedure, for counters.
pub fn proc_name(p: usize) -> Option<&'static str> {
    const NAMES: [&str; 24] = [
        "null",
        "test",
        "lock",
        "cancel",
        "unlock",
        "granted",
        "test_msg",
        "lock_msg",
        "cancel_msg",
        "unlock_msg",
        "granted_msg",
        "test_res",
        "lock_res",
        "cancel_res",
        "unlock_res",
        "granted_res",
        "sm_notify",
        "",
        "",
        "",
        "share",
        "unshare",
        "nm_lock",
        "free_all",
    ];
    NAMES.get(p).copied().filter(|n| !n.is_empty())
}

/// Every counter, as one JSON object of flat sections.
pub fn stats(parts: &Parts) -> Value {
    let mut root = Map::new();
    {
        let s = nlm_service::lock(&parts.nlm);
        let st = s.stats;
        let calls: Map<String, Value> = st
            .calls
            .iter()
            .enumerate()
            .filter_map(|(i, c)| proc_name(i).map(|n| (n.to_string(), json!(c))))
            .collect();
        let e = s.engine().stats();
        root.insert(
            "nlm".into(),
            json!({
                "in_grace": s.in_grace(),
                "hosts": s.hosts().len(),
                "pending_grants": s.pending_grants(),
                "calls": calls,
                "results": {
                    "granted": st.granted,
                    "denied": st.denied,
                    "blocked": st.blocked,
                    "deadlock": st.deadlock,
                    "denied_nolocks": st.nolocks,
                    "denied_grace_period": st.grace_denied,
                },
                "callbacks_sent": st.callbacks_sent,
                "callbacks_retried": st.callbacks_retried,
                "callbacks_abandoned": st.callbacks_abandoned,
                "reboots_detected": st.reboots_detected,
                "actions_dropped": st.actions_dropped,
                "store_errors": st.store_errors,
                "stale_requests": st.stale_requests,
            }),
        );
        root.insert(
            "engine".into(),
            json!({
                "files": e.files,
                "owners": e.owners,
                "segments": e.segments,
                "waiters": e.waiters,
                "shares": e.shares,
                "leases": e.leases,
                "entries": e.entries,
                "deadlocks_refused": e.deadlocks_refused,
                "deadlock_visits": e.deadlock_visits,
            }),
        );
    }
    if let Some(nsm) = &parts.nsm {
        let m = nsm_service::lock(nsm);
        let st = m.stats;
        root.insert(
            "nsm".into(),
            json!({
                "state": m.state(),
                "monitored_hosts": m.monitored().count(),
                "to_notify": m.to_notify().count(),
                "mon": st.mon,
                "unmon": st.unmon,
                "notify_received": st.notify_received,
                "notify_stale": st.notify_stale,
                "notify_untrusted": st.notify_untrusted,
                "notify_unknown": st.notify_unknown,
                "callbacks": st.callbacks,
                "late_delivered": st.late_delivered,
                "refused_remote": st.refused_remote,
                "store_errors": st.store_errors,
                "actions_dropped": st.actions_dropped,
            }),
        );
    }
    let mut rpc = Map::new();
    for (name, d) in &parts.dispatchers {
        let d = d.lock().unwrap_or_else(PoisonError::into_inner);
        let (st, drc) = (d.stats, d.drc().stats);
        rpc.insert(
            (*name).to_string(),
            json!({
                "calls": st.calls,
                "dropped": st.dropped,
                "denied": st.denied,
                "prog_unavail": st.prog_unavail,
                "prog_mismatch": st.prog_mismatch,
                "proc_unavail": st.proc_unavail,
                "garbage_args": st.garbage_args,
                "system_err": st.system_err,
                "drc_entries": d.drc().len(),
                "drc_hits": drc.hits,
                "drc_in_progress_drops": drc.in_progress_drops,
                "drc_misses": drc.misses,
                "drc_evictions": drc.evictions,
            }),
        );
    }
    root.insert("dispatch".into(), Value::Object(rpc));
    let mut servers = Map::new();
    for (name, s) in &parts.servers {
        servers.insert(
            (*name).to_string(),
            json!({
                "connections": s.connections.load(Ordering::Relaxed),
                "accepted": s.accepted.load(Ordering::Relaxed),
                "evicted": s.evicted.load(Ordering::Relaxed),
                "idle_closed": s.idle_closed.load(Ordering::Relaxed),
                "record_errors": s.record_errors.load(Ordering::Relaxed),
            }),
        );
    }
    root.insert("servers".into(), Value::Object(servers));
    Value::Object(root)
}
