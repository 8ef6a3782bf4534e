//! The client side, sans-IO: xid allocation, matching replies to callers, and
//! the retransmission schedule. The I/O shell keeps one [`CallTable`] per
//! socket, so any number of callers (and, over UDP, any number of servers)
//! share one socket.

use crate::msg::{self, Credential, Xid};
use latch_xdr::Writer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// When to retransmit and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first_timeout: Duration,
    pub max_timeout: Duration,
    /// Total time allowed for the call, retransmissions included.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_timeout: Duration::from_millis(500),
            max_timeout: Duration::from_secs(4),
            deadline: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// How long to wait for an answer to transmission number `attempt`
    /// (0-based): doubling from the first timeout up to the maximum.
    pub fn timeout_for(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.first_timeout
            .saturating_mul(factor)
            .min(self.max_timeout)
    }
}

/// Too many calls outstanding on one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} calls already outstanding")]
pub struct TableFull(pub usize);

struct Pending<T> {
    dest: Option<SocketAddr>,
    token: T,
}

/// Outstanding calls, by xid. `T` is whatever wakes the caller.
pub struct CallTable<T> {
    next_xid: u32,
    pending: HashMap<Xid, Pending<T>>,
    max_outstanding: usize,
}

impl<T> CallTable<T> {
    /// `first_xid` should differ across restarts (the shell seeds it from the
    /// clock) so a server's duplicate cache does not confuse our new calls
    /// with a previous life's.
    pub fn new(first_xid: u32, max_outstanding: usize) -> Self {
        CallTable {
            next_xid: first_xid,
            pending: HashMap::new(),
            max_outstanding,
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Registers a call to `dest` (None on a connected stream) and returns
    /// its xid, never one still outstanding.
    pub fn register(&mut self, dest: Option<SocketAddr>, token: T) -> Result<Xid, TableFull> {
        if self.pending.len() >= self.max_outstanding {
            return Err(TableFull(self.pending.len()));
        }
        let xid = loop {
            let x = Xid(self.next_xid);
            self.next_xid = self.next_xid.wrapping_add(1);
            if !self.pending.contains_key(&x) {
                break x;
            }
        };
        self.pending.insert(xid, Pending { dest, token });
        Ok(xid)
    }

    /// Matches a reply to its caller. A reply with an unknown xid, or from an
    /// address other than the one called, is ignored (`None`).
    pub fn complete(&mut self, from: Option<SocketAddr>, reply: &[u8]) -> Option<(Xid, T)> {
        let xid = msg::reply_xid(reply)?;
        let p = self.pending.get(&xid)?;
        if let (Some(want), Some(got)) = (p.dest, from) {
            if canonical(want) != canonical(got) {
                return None;
            }
        }
        self.pending.remove(&xid).map(|p| (xid, p.token))
    }

    /// Drops a call the caller gave up on.
    pub fn forget(&mut self, xid: Xid) -> Option<T> {
        self.pending.remove(&xid).map(|p| p.token)
    }

    /// Drops every call (the connection died); returns their tokens.
    pub fn drain(&mut self) -> Vec<T> {
        self.pending.drain().map(|(_, p)| p.token).collect()
    }
}

/// IPv4-mapped IPv6 addresses compare equal to their IPv4 form.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// Encodes a complete call message.
pub fn encode_call(
    xid: Xid,
    prog: u32,
    vers: u32,
    proc_: u32,
    cred: &Credential,
    args: &[u8],
) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + args.len());
    msg::write_call_header(&mut w, xid, prog, vers, proc_, cred);
    w.put_raw(args);
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(xid: u32) -> Vec<u8> {
        msg::accept_error_reply(Xid(xid), msg::AcceptError::ProcUnavail)
    }

    #[test]
    fn replies_find_their_callers_and_strays_are_ignored() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        let mut t = CallTable::new(u32::MAX, 10);
        let x1 = t.register(Some(a), "one").unwrap();
        let x2 = t.register(Some(b), "two").unwrap();
        assert_eq!(x1, Xid(u32::MAX));
        assert_eq!(x2, Xid(0), "xids wrap around");
        // From the wrong host: ignored, still pending.
        assert_eq!(t.complete(Some(a), &reply(x2.0)), None);
        assert_eq!(t.complete(Some(b), &reply(x2.0)), Some((x2, "two")));
        // A late duplicate of the same reply: ignored.
        assert_eq!(t.complete(Some(b), &reply(x2.0)), None);
        assert_eq!(t.complete(Some(a), &reply(12345)), None);
        // IPv4-mapped source matches the IPv4 destination.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1000".parse().unwrap();
        assert_eq!(t.complete(Some(mapped), &reply(x1.0)), Some((x1, "one")));
        assert!(t.is_empty());
    }

    #[test]
    fn bounded_and_never_reuses_an_outstanding_xid() {
        let mut t = CallTable::new(7, 2);
        let x = t.register(None, ()).unwrap();
        t.next_xid = x.0; // force a collision
        let y = t.register(None, ()).unwrap();
        assert_ne!(x, y);
        assert_eq!(t.register(None, ()), Err(TableFull(2)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            first_timeout: Duration::from_millis(100),
            max_timeout: Duration::from_millis(500),
            deadline: Duration::from_secs(2),
        };
        let t: Vec<u64> = (0..5)
            .map(|i| p.timeout_for(i).as_millis() as u64)
            .collect();
        assert_eq!(t, vec![100, 200, 400, 500, 500]);
        assert_eq!(p.timeout_for(1000), Duration::from_millis(500));
    }
}
