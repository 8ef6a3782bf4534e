//! A thread-safe RPC client: many concurrent callers share one socket (UDP:
//! one socket for any number of servers; TCP: one connection); a reader task
//! routes each reply to its caller by xid through the sans-IO
//! [`CallTable`]. Over UDP a call is retransmitted with the same xid (so the
//! server's duplicate cache recognises it) with backoff until its deadline.

use crate::sock;
use latch_oncrpc::client::{encode_call, CallTable, RetryPolicy};
use latch_oncrpc::msg::{self, Credential, RpcError, Xid};
use latch_oncrpc::record::{self, RecordDecoder};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("no answer before the deadline")]
    Timeout,
    #[error("the server refused the call: {0}")]
    Rpc(#[from] RpcError),
    #[error("the reply could not be decoded")]
    Malformed,
    #[error("too many calls outstanding")]
    Busy,
    #[error("the connection closed")]
    Closed,
}

type Table = Arc<Mutex<CallTable<oneshot::Sender<Vec<u8>>>>>;

fn lock(t: &Table) -> std::sync::MutexGuard<'_, CallTable<oneshot::Sender<Vec<u8>>>> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a call from the table however the caller leaves (including being
/// cancelled), so abandoned calls never accumulate.
struct Forget<'a> {
    table: &'a Table,
    xid: Xid,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.table).forget(self.xid);
    }
}

enum Link {
    Udp(Arc<UdpSocket>),
    Tcp(tokio::sync::Mutex<OwnedWriteHalf>),
}

/// One client socket. Cheap to share behind an `Arc`.
pub struct RpcClient {
    link: Link,
    /// The server of a TCP client; UDP calls name their destination.
    peer: Option<SocketAddr>,
    table: Table,
    reader: JoinHandle<()>,
    pub policy: RetryPolicy,
    pub cred: Credential,
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Bound on calls in flight per socket.
const MAX_OUTSTANDING: usize = 4096;

impl RpcClient {
    /// A UDP client for servers of the family of `like` (any port of that
    /// family will do), from a reserved port if `reserved` and root.
    pub fn udp(like: SocketAddr, reserved: bool) -> io::Result<Self> {
        let s = Arc::new(sock::client_udp(&like, reserved)?);
        let table: Table = Arc::new(Mutex::new(CallTable::new(
            crate::xid_seed(),
            MAX_OUTSTANDING,
        )));
        let reader = tokio::spawn(udp_reader(s.clone(), table.clone()));
        Ok(RpcClient {
            link: Link::Udp(s),
            peer: None,
            table,
            reader,
            policy: RetryPolicy::default(),
            cred: Credential::None,
        })
    }

    /// A TCP client connected to `peer`.
    pub async fn tcp(peer: SocketAddr, reserved: bool) -> io::Result<Self> {
        let stream = sock::client_tcp(peer, reserved).await?;
        let (r, w) = stream.into_split();
        let table: Table = Arc::new(Mutex::new(CallTable::new(
            crate::xid_seed(),
            MAX_OUTSTANDING,
        )));
        let reader = tokio::spawn(tcp_reader(r, table.clone()));
        Ok(RpcClient {
            link: Link::Tcp(tokio::sync::Mutex::new(w)),
            peer: Some(peer),
            table,
            reader,
            policy: RetryPolicy::default(),
            cred: Credential::None,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.link {
            Link::Udp(s) => s.local_addr(),
            Link::Tcp(w) => w.try_lock().map_or_else(
                |_| Err(io::Error::new(io::ErrorKind::WouldBlock, "busy")),
                |w| w.local_addr(),
            ),
        }
    }

    /// Calls `prog`/`vers`/`proc_` with encoded `args`; returns the encoded
    /// results. `dest` is required over UDP and ignored over TCP.
    pub async fn call(
        &self,
        dest: Option<SocketAddr>,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        self.call_with(self.policy, dest, prog, vers, proc_, args)
            .await
    }

    /// [`call`](Self::call) with its own retransmission policy. A policy
    /// whose first timeout is its deadline sends one datagram: for callers
    /// that retry by themselves and must be able to stop (a GRANTED that
    /// the server withdrew must not go on being resent).
    pub async fn call_with(
        &self,
        policy: RetryPolicy,
        dest: Option<SocketAddr>,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let (tx, mut rx) = oneshot::channel();
        let dest = dest.or(self.peer);
        let xid = lock(&self.table)
            .register(if self.peer.is_some() { None } else { dest }, tx)
            .map_err(|_| CallError::Busy)?;
        let _forget = Forget {
            table: &self.table,
            xid,
        };
        let bytes = encode_call(xid, prog, vers, proc_, &self.cred, args);
        let start = Instant::now();
        let reply = match &self.link {
            Link::Udp(s) => {
                let dest = dest.ok_or(CallError::Io(io::ErrorKind::InvalidInput.into()))?;
                let mut attempt = 0;
                loop {
                    s.send_to(&bytes, dest).await?;
                    let left = policy.deadline.saturating_sub(start.elapsed());
                    let wait = policy.timeout_for(attempt).min(left);
                    match tokio::time::timeout(wait, &mut rx).await {
                        Ok(Ok(r)) => break r,
                        Ok(Err(_)) => return Err(CallError::Closed),
                        Err(_) if start.elapsed() >= policy.deadline => {
                            return Err(CallError::Timeout)
                        }
                        Err(_) => attempt += 1,
                    }
                }
            }
            Link::Tcp(w) => {
                w.lock().await.write_all(&record::frame(&bytes)).await?;
                match tokio::time::timeout(policy.deadline, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => return Err(CallError::Closed),
                    Err(_) => return Err(CallError::Timeout),
                }
            }
        };
        let parsed = msg::parse_reply(&reply).ok_or(CallError::Malformed)?;
        Ok(parsed.result?.to_vec())
    }

    /// Calls procedure 0, the ping every program has.
    pub async fn null(
        &self,
        dest: Option<SocketAddr>,
        prog: u32,
        vers: u32,
    ) -> Result<(), CallError> {
        self.call(dest, prog, vers, 0, &[]).await.map(|_| ())
    }
}

async fn udp_reader(s: Arc<UdpSocket>, table: Table) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = s.recv_from(&mut buf).await else {
            continue;
        };
        let done = lock(&table).complete(Some(from), &buf[..n]);
        if let Some((_, tx)) = done {
            let _ = tx.send(buf[..n].to_vec());
        }
    }
}

async fn tcp_reader(mut r: tokio::net::tcp::OwnedReadHalf, table: Table) {
    // Replies we accept are bounded like requests.
    let mut decoder = RecordDecoder::new(1 << 20);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        decoder.extend(&buf[..n]);
        loop {
            match decoder.next_record() {
                Ok(Some(rec)) => {
                    let done = lock(&table).complete(None, &rec);
                    if let Some((_, tx)) = done {
                        let _ = tx.send(rec);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    // Dropping the senders wakes every caller with Closed.
                    lock(&table).drain();
                    return;
                }
            }
        }
    }
    lock(&table).drain();
}
