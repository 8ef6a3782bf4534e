//! The async client library: lock byte ranges of files on NLM servers (or
//! on this host) through the local latchd.
//!
//! ```no_run
//! # async fn demo() -> Result<(), latch::client::Error> {
//! use latch::client::{Client, LockSpec, Wait};
//! use std::time::Duration;
//!
//! let latchd = Client::connect(latch::client::DEFAULT_SOCKET).await?;
//! let spec = LockSpec::whole_file(Some("fileserver"), b"builds/lock".to_vec());
//! // Wait up to a minute for the lock; it is released when `guard` drops
//! // (or when this process dies).
//! let guard = latchd.lock(&spec, Wait::For(Duration::from_secs(60))).await?;
//! // ... work while holding it ...
//! guard.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Every connection is one lock owner, like a process: locks do not nest
//! across connections, and all of a connection's locks go when it closes.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Where latchd listens by default.
pub const DEFAULT_SOCKET: &str = "/run/latch/latchd.sock";

/// A byte range of a file on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSpec {
    /// The NLM server (name or address); `None`: this host.
    pub server: Option<String>,
    /// The file handle (for a latchd server, any bytes that name the file).
    pub file: Vec<u8>,
    pub offset: u64,
    /// 0: to the end of the file, and beyond.
    pub len: u64,
    pub exclusive: bool,
}

impl LockSpec {
    /// An exclusive lock on the whole file.
    pub fn whole_file(server: Option<&str>, file: Vec<u8>) -> Self {
        LockSpec {
            server: server.map(str::to_string),
            file,
            offset: 0,
            len: 0,
            exclusive: true,
        }
    }
}

/// How long to wait for a lock someone else holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    Forever,
    For(Duration),
}

/// Who holds a conflicting lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub exclusive: bool,
    pub svid: u32,
    pub owner: String,
    pub offset: u64,
    pub len: u64,
}

/// Something the program should know without having asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A lock held on a rebooted server could not be reclaimed.
    Lost {
        server: String,
        offset: u64,
        len: u64,
    },
    /// Give the lease on this file up (or downgrade to read) now.
    LeaseBreak {
        file: Vec<u8>,
        to_read: bool,
    },
    LeaseRevoked {
        file: Vec<u8>,
    },
    /// latchd closed the connection (it stopped or crashed): nothing this
    /// client held is held any more.
    Disconnected,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("latchd is not running (no socket at {0})")]
    NotRunning(String),
    #[error("permission refused on {0}")]
    Permission(String),
    #[error("I/O error talking to latchd: {0}")]
    Io(#[from] std::io::Error),
    #[error("held by someone else")]
    Denied(Option<Holder>),
    #[error("waiting would deadlock")]
    Deadlock,
    #[error("the server is in its grace period")]
    Grace,
    #[error("the server has no room for more locks")]
    NoLocks,
    #[error("{0}")]
    Failed(String),
    #[error("gave up waiting")]
    Timeout,
    #[error("latchd closed the connection")]
    Closed,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Value>>>;

struct Inner {
    out: mpsc::Sender<String>,
    replies: Pending,
    grants: Pending,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
    /// The connection's reader has ended: no reply will come.
    closed: AtomicBool,
}

/// A connection to latchd. Cheap to clone; all clones are one lock owner.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn lock_map(m: &Pending) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Value>>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

impl Client {
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let p = path.as_ref();
        let stream = UnixStream::connect(p).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                Error::NotRunning(p.display().to_string())
            }
            std::io::ErrorKind::PermissionDenied => Error::Permission(p.display().to_string()),
            _ => Error::Io(e),
        })?;
        let (r, mut w) = stream.into_split();
        let (out, mut rx) = mpsc::channel::<String>(256);
        let (events, _) = broadcast::channel(64);
        let inner = Arc::new(Inner {
            out,
            replies: Mutex::default(),
            grants: Mutex::default(),
            events,
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if w.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        let reader = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(inner) = reader.upgrade() else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                inner.dispatch(v);
            }
            // Dropping the senders wakes every waiter with `Closed`; a
            // request registered after this sees `closed` (`send`).
            if let Some(inner) = reader.upgrade() {
                inner.closed.store(true, Ordering::SeqCst);
                lock_map(&inner.replies).clear();
                lock_map(&inner.grants).clear();
                let _ = inner.events.send(Event::Disconnected);
            }
        });
        Ok(Client { inner })
    }

    /// Whether latchd has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Events about locks and leases this connection holds.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    async fn send(
        &self,
        mut req: Value,
        grant: bool,
    ) -> Result<(Value, Option<oneshot::Receiver<Value>>), Error> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        req["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        lock_map(&self.inner.replies).insert(id, tx);
        // Registered before sending, so a grant cannot outrun us.
        let granted = grant.then(|| {
            let (gtx, grx) = oneshot::channel();
            lock_map(&self.inner.grants).insert(id, gtx);
            grx
        });
        self.inner
            .out
            .send(format!("{req}\n"))
            .await
            .map_err(|_| Error::Closed)?;
        if self.inner.closed.load(Ordering::SeqCst) {
            lock_map(&self.inner.replies).remove(&id);
            lock_map(&self.inner.grants).remove(&id);
            return Err(Error::Closed);
        }
        let reply = rx.await.map_err(|_| Error::Closed)?;
        Ok((reply, granted))
    }

    fn request(op: &str, spec: &LockSpec) -> Value {
        json!({
            "op": op,
            "server": spec.server,
            "fh": hex(&spec.file),
            "offset": spec.offset,
            "len": spec.len,
            "exclusive": spec.exclusive,
        })
    }

    /// Takes the lock, waiting as `wait` says.
    pub async fn lock(&self, spec: &LockSpec, wait: Wait) -> Result<LockGuard, Error> {
        let mut req = Self::request("lock", spec);
        req["wait"] = json!(wait != Wait::No);
        let (reply, granted) = self.send(req, wait != Wait::No).await?;
        let guard = || LockGuard {
            client: self.clone(),
            spec: spec.clone(),
            held: true,
        };
        match reply["status"].as_str() {
            Some("granted") => Ok(guard()),
            Some("blocked") => {
                let Some(granted) = granted else {
                    return Err(Error::Failed("blocked without waiting".into()));
                };
                let got = match wait {
                    Wait::For(d) => tokio::time::timeout(d, granted).await.ok(),
                    _ => Some(granted.await),
                };
                match got {
                    Some(Ok(v)) if v["event"] == "refused" => Err(status_error(&v)),
                    Some(Ok(_)) => Ok(guard()),
                    Some(Err(_)) => Err(Error::Closed),
                    None => {
                        // Stop waiting. A grant may have crossed the cancel:
                        // unlocking too leaves nothing held either way.
                        let _ = self.send(Self::request("cancel", spec), false).await;
                        let _ = self.send(Self::request("unlock", spec), false).await;
                        Err(Error::Timeout)
                    }
                }
            }
            _ => Err(status_error(&reply)),
        }
    }

    /// Takes the lock only if nobody holds it.
    pub async fn try_lock(&self, spec: &LockSpec) -> Result<LockGuard, Error> {
        self.lock(spec, Wait::No).await
    }

    /// Who would keep us from taking `spec` (`None`: nobody).
    pub async fn test(&self, spec: &LockSpec) -> Result<Option<Holder>, Error> {
        let (reply, _) = self.send(Self::request("test", spec), false).await?;
        match reply["status"].as_str() {
            Some("free") => Ok(None),
            Some("denied") => Ok(Some(holder(&reply["holder"]).unwrap_or(Holder {
                exclusive: true,
                svid: 0,
                owner: String::new(),
                offset: 0,
                len: 0,
            }))),
            _ => Err(status_error(&reply)),
        }
    }

    /// Releases `spec` (any part this connection holds).
    pub async fn unlock(&self, spec: &LockSpec) -> Result<(), Error> {
        let (reply, _) = self.send(Self::request("unlock", spec), false).await?;
        match reply["status"].as_str() {
            Some("granted") => Ok(()),
            _ => Err(status_error(&reply)),
        }
    }

    /// Releases the range for every connection of this user that holds part
    /// of it (a lock left by another of our processes); returns how many.
    pub async fn release_mine(&self, spec: &LockSpec) -> Result<u64, Error> {
        let (reply, _) = self.send(Self::request("release", spec), false).await?;
        match reply["status"].as_str() {
            Some("granted") => Ok(reply["released"].as_u64().unwrap_or(0)),
            _ => Err(status_error(&reply)),
        }
    }

    /// Takes (`Some(true)`: write, `Some(false)`: read) or gives up (`None`)
    /// a lease on a file of this host. Conflicting requests from anyone
    /// else start a break, announced as [`Event::LeaseBreak`].
    pub async fn lease(&self, file: &[u8], write: Option<bool>) -> Result<(), Error> {
        let kind = match write {
            Some(true) => "write",
            Some(false) => "read",
            None => "none",
        };
        let req = json!({"op": "lease", "fh": hex(file), "kind": kind});
        let (reply, _) = self.send(req, false).await?;
        match reply["status"].as_str() {
            Some("granted") => Ok(()),
            _ => Err(status_error(&reply)),
        }
    }
}

impl Inner {
    fn dispatch(&self, v: Value) {
        let id = v["id"].as_u64();
        match (v["event"].as_str(), id) {
            (None, Some(id)) => {
                if let Some(tx) = lock_map(&self.replies).remove(&id) {
                    let _ = tx.send(v);
                }
            }
            // The end of a wait either way: granted, or refused after all.
            (Some("granted" | "refused"), Some(id)) => {
                if let Some(tx) = lock_map(&self.grants).remove(&id) {
                    let _ = tx.send(v);
                }
            }
            (Some("lost"), _) => {
                let _ = self.events.send(Event::Lost {
                    server: v["server"].as_str().unwrap_or_default().to_string(),
                    offset: v["offset"].as_u64().unwrap_or(0),
                    len: v["len"].as_u64().unwrap_or(0),
                });
            }
            (Some("lease_break"), _) => {
                let _ = self.events.send(Event::LeaseBreak {
                    file: unhex(v["fh"].as_str().unwrap_or_default()),
                    to_read: v["to"] == "read",
                });
            }
            (Some("lease_revoked"), _) => {
                let _ = self.events.send(Event::LeaseRevoked {
                    file: unhex(v["fh"].as_str().unwrap_or_default()),
                });
            }
            _ => {}
        }
    }
}

fn holder(v: &Value) -> Option<Holder> {
    Some(Holder {
        exclusive: v["exclusive"].as_bool()?,
        svid: u32::try_from(v["svid"].as_u64()?).ok()?,
        owner: v["owner"].as_str()?.to_string(),
        offset: v["offset"].as_u64()?,
        len: v["len"].as_u64()?,
    })
}

fn status_error(v: &Value) -> Error {
    match v["status"].as_str() {
        Some("denied") => Error::Denied(holder(&v["holder"])),
        Some("deadlock") => Error::Deadlock,
        Some("grace") => Error::Grace,
        Some("nolocks") => Error::NoLocks,
        _ => Error::Failed(
            v["error"]
                .as_str()
                .unwrap_or("unexpected answer")
                .to_string(),
        ),
    }
}

/// A held lock; released on [`LockGuard::unlock`] or when dropped.
pub struct LockGuard {
    client: Client,
    spec: LockSpec,
    held: bool,
}

impl LockGuard {
    pub fn spec(&self) -> &LockSpec {
        &self.spec
    }

    /// Releases the lock and waits for the server's answer.
    pub async fn unlock(mut self) -> Result<(), Error> {
        self.held = false;
        self.client.unlock(&self.spec).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.held {
            // Fire and forget: nothing can be awaited in drop. Should even
            // this fail, closing the connection releases the lock.
            let mut req = Client::request("unlock", &self.spec);
            req["id"] = json!(0);
            let _ = self.client.inner.out.try_send(format!("{req}\n"));
        }
    }
}
