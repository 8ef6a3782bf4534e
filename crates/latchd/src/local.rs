//! The local lock socket: programs on this host ask latchd to lock ranges
//! of files on remote NLM servers (or on this host's own engine). Access
//! control is the socket file's permissions.
//!
//! Protocol: one JSON object per line each way. Requests carry an `id` the
//! program chooses; the reply carries it back; a blocked request's grant
//! arrives later as an event with the same id:
//!
//! ```text
//! -> {"id":1,"op":"lock","server":"10.0.0.1","fh":"6162","offset":0,"len":0,"exclusive":true,"wait":true}
//! <- {"id":1,"status":"blocked"}
//! <- {"event":"granted","id":1}
//! -> {"id":2,"op":"unlock","server":"10.0.0.1","fh":"6162","offset":0,"len":0}
//! <- {"id":2,"status":"granted"}
//! ```
//! `op` is `lock`, `test`, `unlock`, `cancel`, `lease` (`kind`: `read`,
//! `write` or `none`; local files only) or `release` (unlock the range for
//! every connection of the caller's uid: `latch unlock`; answered with
//! `released`: how many held some of it, each of which gets a `lost` event). `server` absent or `"local"` means
//! this host's own engine. Statuses: granted, blocked, free, denied (with
//! `holder`), deadlock, grace, nolocks, busy (a `lock` or `unlock`
//! overlapping a request of the same connection that is still waiting or
//! unanswered, on a remote server: refused without being sent, since the
//! server could apply the two in either order), failed (with `error`). Other events:
//! `refused` (with a `status`: a blocked request that will not be granted
//! after all, as when asked again after a server restart the wait would
//! close a cycle), `lost` (a lock a rebooted server did not give back), `lease_break`,
//! `lease_revoked`. When the connection closes, everything it held or
//! waited for is released: like a process's locks when it exits.

use crate::nlm_service::{lock, Core};
use latch_lock::LeaseKind;
use latch_nlm::client::{ClientOp, ConnId, LocalEvent, Outcome, RemoteLock};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};

/// A local connection: where its events go, and whose it is.
pub struct Route {
    tx: mpsc::Sender<LocalEvent>,
    uid: u32,
}

/// Every local connection.
pub type Routes = Arc<Mutex<HashMap<ConnId, Route>>>;

/// Bounds: a line, events queued for a slow reader, connections.
const MAX_LINE: usize = 8192;
const MAX_QUEUED: usize = 1024;
const MAX_CONNECTIONS: usize = 4096;

#[derive(Deserialize)]
struct Request {
    id: u64,
    op: String,
    #[serde(default)]
    server: Option<String>,
    fh: String,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    len: u64,
    #[serde(default = "yes")]
    exclusive: bool,
    #[serde(default)]
    wait: bool,
    #[serde(default)]
    kind: Option<String>,
}

fn yes() -> bool {
    true
}

pub struct LocalService {
    pub core: Core,
    pub wake: Arc<Notify>,
    pub routes: Routes,
}

impl LocalService {
    /// Binds `path` with file mode `mode` and serves it until the task ends.
    pub fn spawn(
        self: Arc<Self>,
        path: &Path,
        mode: u32,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another latchd", path.display()),
            ));
        }
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener = UnixListener::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(tokio::spawn(async move {
            let mut next: ConnId = 1;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if self.routes_lock().len() >= MAX_CONNECTIONS {
                    tracing::warn!("too many local connections; refusing one");
                    continue;
                }
                let conn = next;
                next += 1;
                let me = self.clone();
                tokio::spawn(async move { me.serve(conn, stream).await });
            }
        }))
    }

    fn routes_lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Route>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn serve(&self, conn: ConnId, stream: UnixStream) {
        let (tx, mut rx) = mpsc::channel::<LocalEvent>(MAX_QUEUED);
        // Unknown credentials match nobody's (see `release`).
        let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
        self.routes_lock().insert(conn, Route { tx, uid });
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut line: Vec<u8> = Vec::new();
        'conn: loop {
            tokio::select! {
                // fill_buf is cancel-safe: bytes are consumed only below.
                got = r.fill_buf() => {
                    let avail = match got {
                        Ok(a) if !a.is_empty() => a,
                        _ => break,
                    };
                    let (chunk, done) = match avail.iter().position(|b| *b == b'\n') {
                        Some(i) => (&avail[..i], Some(i + 1)),
                        None => (avail, None),
                    };
                    line.extend_from_slice(chunk);
                    let used = done.unwrap_or(avail.len());
                    r.consume(used);
                    if line.len() > MAX_LINE {
                        let _ = w.write_all(b"{\"status\":\"failed\",\"error\":\"line too long\"}\n").await;
                        break;
                    }
                    if done.is_none() {
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line).into_owned();
                    line.clear();
                    if text.trim().is_empty() {
                        continue;
                    }
                    if let Err(reply) = self.request(conn, uid, &text).await {
                        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                            break 'conn;
                        }
                    }
                },
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        if w.write_all(format!("{}\n", event_json(&ev)).as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        self.routes_lock().remove(&conn);
        lock(&self.core).local_disconnect(conn, Instant::now());
        self.wake.notify_one();
    }

    /// Hands a request to the NLM machine; its answer comes back as an
    /// event. `Err` carries an answer to send at once (a malformed request,
    /// or `release`, which is answered here).
    async fn request(&self, conn: ConnId, uid: u32, line: &str) -> Result<(), Value> {
        let r: Request = serde_json::from_str(line)
            .map_err(|e| json!({"status": "failed", "error": format!("bad request: {e}")}))?;
        let fail = |msg: String| json!({"id": r.id, "status": "failed", "error": msg});
        let fh = hex_decode(&r.fh).ok_or_else(|| fail("fh must be hex".into()))?;
        if fh.is_empty() || fh.len() > 1024 {
            return Err(fail("fh must be 1 to 1024 bytes".into()));
        }
        let op = match r.op.as_str() {
            "lock" => ClientOp::Lock { wait: r.wait },
            "test" => ClientOp::Test,
            "unlock" => ClientOp::Unlock,
            "cancel" => ClientOp::Cancel,
            "lease" => {
                let kind = match r.kind.as_deref() {
                    Some("read") => Some(LeaseKind::Read),
                    Some("write") => Some(LeaseKind::Write),
                    Some("none") | None => None,
                    Some(k) => return Err(fail(format!("unknown lease kind {k:?}"))),
                };
                lock(&self.core).local_lease(conn, r.id, &fh, kind, Instant::now());
                self.wake.notify_one();
                return Ok(());
            }
            // `latch unlock`: this user's locks on the range, whichever of
            // their connections holds them.
            "release" => {
                let conns: Vec<ConnId> = self
                    .routes_lock()
                    .iter()
                    .filter(|(_, r)| r.uid == uid && uid != u32::MAX)
                    .map(|(c, _)| *c)
                    .collect();
                let n = match r.server.as_deref() {
                    None | Some("local") | Some("") => lock(&self.core).local_unlock_for(
                        &conns,
                        &fh,
                        r.offset,
                        r.len,
                        Instant::now(),
                    ),
                    Some(name) => {
                        let l = remote(name, fh, &r, true).await.map_err(fail)?;
                        lock(&self.core).client.unlock_for(&conns, &l)
                    }
                };
                self.wake.notify_one();
                return Err(json!({"id": r.id, "status": "granted", "released": n}));
            }
            other => return Err(fail(format!("unknown op {other:?}"))),
        };
        match r.server.as_deref() {
            None | Some("local") | Some("") => {
                let mut n = lock(&self.core);
                n.local_request(
                    conn,
                    r.id,
                    op,
                    &fh,
                    r.offset,
                    r.len,
                    r.exclusive,
                    Instant::now(),
                );
            }
            Some(name) => {
                let l = remote(name, fh, &r, r.exclusive).await.map_err(fail)?;
                lock(&self.core).client.request(conn, r.id, op, l);
            }
        }
        self.wake.notify_one();
        Ok(())
    }
}

/// Delivers an event to its connection; a reader too slow to keep up with
/// MAX_QUEUED events loses them (its connection will notice nothing wrong
/// but a missing answer, so it is better closed: drop its route).
pub fn route(routes: &Routes, conn: ConnId, ev: LocalEvent) {
    let mut r = routes.lock().unwrap_or_else(PoisonError::into_inner);
    let full = match r.get(&conn) {
        Some(route) => route.tx.try_send(ev).is_err(),
        None => false,
    };
    if full {
        tracing::warn!(conn, "local connection not reading its events; closing it");
        r.remove(&conn);
    }
}

/// The lock `r` names on server `name`.
async fn remote(
    name: &str,
    fh: Vec<u8>,
    r: &Request,
    exclusive: bool,
) -> Result<RemoteLock, String> {
    let server = resolve(name)
        .await
        .ok_or_else(|| format!("cannot resolve server {name:?}"))?;
    Ok(RemoteLock {
        server,
        server_name: name.as_bytes().to_vec(),
        fh,
        offset: r.offset,
        len: r.len,
        exclusive,
    })
}

async fn resolve(name: &str) -> Option<IpAddr> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(ip);
    }
    let lookup = tokio::net::lookup_host((name, 0));
    let addrs = tokio::time::timeout(std::time::Duration::from_secs(5), lookup)
        .await
        .ok()?
        .ok()?;
    addrs.map(|a| a.ip()).next()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Granted => json!({"status": "granted"}),
        Outcome::Blocked => json!({"status": "blocked"}),
        Outcome::Free => json!({"status": "free"}),
        Outcome::Denied(h) => {
            let holder = h.as_ref().map(|h| {
                json!({"exclusive": h.exclusive, "svid": h.svid, "owner": hex(h.oh.as_bytes()),
                       "offset": h.offset, "len": h.len})
            });
            json!({"status": "denied", "holder": holder})
        }
        Outcome::Deadlock => json!({"status": "deadlock"}),
        Outcome::Grace => json!({"status": "grace"}),
        Outcome::NoLocks => json!({"status": "nolocks"}),
        Outcome::Busy => json!({"status": "busy",
            "error": "another request of this connection on an overlapping range is unresolved: wait for its answer or cancel it"}),
        Outcome::Failed(e) => json!({"status": "failed", "error": e}),
    }
}

fn event_json(ev: &LocalEvent) -> Value {
    match ev {
        LocalEvent::Reply { req, outcome } => {
            let mut v = outcome_json(outcome);
            v["id"] = json!(req);
            v
        }
        LocalEvent::Refused { req, outcome } => {
            let mut v = outcome_json(outcome);
            v["event"] = json!("refused");
            v["id"] = json!(req);
            v
        }
        LocalEvent::Granted { req } => json!({"event": "granted", "id": req}),
        LocalEvent::Lost {
            server,
            fh,
            offset,
            len,
        } => {
            json!({"event": "lost", "server": server.to_string(), "fh": hex(fh), "offset": offset, "len": len})
        }
        LocalEvent::LeaseBreak { fh, to_read } => {
            json!({"event": "lease_break", "fh": hex(fh), "to": if *to_read { "read" } else { "none" }})
        }
        LocalEvent::LeaseRevoked { fh } => json!({"event": "lease_revoked", "fh": hex(fh)}),
    }
}
