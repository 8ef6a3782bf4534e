//! Local programs on the server host lock through the same engine as remote
//! clients: no network round trip, and the same first-come-first-served
//! order (seed 000: local and remote lockers exclude each other fairly).
//! They may also take leases, which remote requests break.

use crate::client::{ClientOp, ConnId, LocalEvent, Outcome, ReqId};
use crate::ops::holder;
use crate::server::NlmServer;
use latch_lock::{
    Error, FileKey, HostId, LeaseAnswer, LeaseKind, LockAnswer, LockRequest, Mode, Owner, Range,
    RequestId, Share, ShareAnswer, ShareBits, TestAnswer,
};
use std::time::Instant;

/// The host of local programs; never a remote host's id (those count up
/// from 1).
pub const LOCAL_HOST: HostId = HostId(u64::MAX);

/// Each connection is one owner, like a process.
pub fn local_owner(conn: ConnId) -> Owner {
    Owner::new(LOCAL_HOST, conn as u32, &conn.to_be_bytes())
}

/// The connection behind a local owner.
pub(crate) fn conn_of(owner: &Owner) -> Option<ConnId> {
    if owner.host != LOCAL_HOST {
        return None;
    }
    let b: [u8; 8] = (*owner.handle).try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

impl NlmServer {
    /// A local program's request on this server's own files.
    #[allow(clippy::too_many_arguments)]
    pub fn local_request(
        &mut self,
        conn: ConnId,
        req: ReqId,
        op: ClientOp,
        fh: &[u8],
        offset: u64,
        len: u64,
        exclusive: bool,
        now: Instant,
    ) {
        let now = self.clock(now);
        let owner = local_owner(conn);
        let file = FileKey::new(fh);
        let range = Range::from_offset_len(offset, len);
        let mode = if exclusive {
            Mode::Exclusive
        } else {
            Mode::Shared
        };
        let outcome = match op {
            ClientOp::Test => match self.engine.test(&file, &owner, range, mode) {
                TestAnswer::Free => Outcome::Free,
                TestAnswer::Conflict(h) => Outcome::Denied(Some(holder(&h))),
                TestAnswer::DeniedGrace => Outcome::Grace,
            },
            ClientOp::Lock { wait } => {
                let id = RequestId(self.next_request);
                self.next_request += 1;
                let r = LockRequest {
                    file: &file,
                    owner: &owner,
                    range,
                    mode,
                    block: wait,
                    reclaim: false,
                    id: Some(id),
                };
                match self.engine.lock(&r, now) {
                    Err(Error::NoLocks(_) | Error::BadRequestId(_)) => Outcome::NoLocks,
                    Ok(reply) => {
                        let o = match reply.answer {
                            LockAnswer::Granted => Outcome::Granted,
                            LockAnswer::Blocked(bid) => {
                                self.local_blocked.insert(bid, (conn, req));
                                Outcome::Blocked
                            }
                            LockAnswer::Denied(h) => Outcome::Denied(h.as_ref().map(holder)),
                            LockAnswer::Deadlock => Outcome::Deadlock,
                            LockAnswer::DeniedGrace => Outcome::Grace,
                        };
                        self.deliver(reply.events, now);
                        o
                    }
                }
            }
            ClientOp::Unlock => match self.engine.unlock(&file, &owner, range) {
                Ok(reply) => {
                    self.deliver(reply.events, now);
                    Outcome::Granted
                }
                Err(_) => Outcome::NoLocks,
            },
            ClientOp::Share { access, deny } => {
                match (ShareBits::from_wire(access), ShareBits::from_wire(deny)) {
                    (Some(access), Some(deny)) => {
                        match self
                            .engine
                            .share(&file, &owner, Share { access, deny }, false, now)
                        {
                            Ok(reply) => {
                                self.deliver(reply.events, now);
                                match reply.answer {
                                    ShareAnswer::Granted => Outcome::Granted,
                                    ShareAnswer::Denied => Outcome::Denied(None),
                                    ShareAnswer::DeniedGrace => Outcome::Grace,
                                }
                            }
                            Err(_) => Outcome::NoLocks,
                        }
                    }
                    _ => Outcome::Failed("share access and deny are 0 to 3".into()),
                }
            }
            ClientOp::Unshare => {
                let reply = self.engine.unshare(&file, &owner);
                self.deliver(reply.events, now);
                Outcome::Granted
            }
            ClientOp::Cancel => {
                if let Some(id) = self.engine.find_waiter(&file, &owner, range, mode) {
                    self.local_blocked.remove(&id);
                    let reply = self.engine.cancel(id);
                    self.deliver(reply.events, now);
                }
                Outcome::Granted
            }
        };
        self.client.tell(conn, LocalEvent::Reply { req, outcome });
    }

    /// A local program takes (`Some`) or gives up (`None`) a lease.
    pub fn local_lease(
        &mut self,
        conn: ConnId,
        req: ReqId,
        fh: &[u8],
        kind: Option<LeaseKind>,
        now: Instant,
    ) {
        let now = self.clock(now);
        let owner = local_owner(conn);
        let file = FileKey::new(fh);
        let outcome = match kind {
            None => {
                let reply = self.engine.unlease(&file, &owner);
                self.deliver(reply.events, now);
                Outcome::Granted
            }
            Some(k) => match self.engine.lease(&file, &owner, k, now) {
                Err(_) => Outcome::NoLocks,
                Ok(reply) => {
                    let o = match reply.answer {
                        LeaseAnswer::Granted => Outcome::Granted,
                        LeaseAnswer::Denied => Outcome::Denied(None),
                        LeaseAnswer::DeniedGrace => Outcome::Grace,
                    };
                    self.deliver(reply.events, now);
                    o
                }
            },
        };
        self.client.tell(conn, LocalEvent::Reply { req, outcome });
    }

    /// Unlocks `fh`'s range for every connection in `conns` that holds part
    /// of it on this host's engine, telling each (`latch unlock`). Returns
    /// how many held something there.
    pub fn local_unlock_for(
        &mut self,
        conns: &[ConnId],
        fh: &[u8],
        offset: u64,
        len: u64,
        now: Instant,
    ) -> usize {
        let now = self.clock(now);
        let file = FileKey::new(fh);
        let range = Range::from_offset_len(offset, len);
        let mut n = 0;
        for &conn in conns {
            let owner = local_owner(conn);
            let holds = self
                .engine
                .locks(&file)
                .iter()
                .any(|h| h.owner == owner && h.range.overlaps(range));
            if !holds {
                continue;
            }
            if let Ok(reply) = self.engine.unlock(&file, &owner, range) {
                self.deliver(reply.events, now);
                n += 1;
                let server = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
                let ev = LocalEvent::Lost {
                    server,
                    fh: fh.to_vec(),
                    offset,
                    len,
                };
                self.client.tell(conn, ev);
            }
        }
        n
    }

    /// The connection is gone: everything it held or waited for here goes,
    /// and its remote locks are released on their servers.
    pub fn local_disconnect(&mut self, conn: ConnId, now: Instant) {
        let now = self.clock(now);
        self.local_blocked.retain(|_, (c, _)| *c != conn);
        let reply = self.engine.release_owner(&local_owner(conn));
        self.deliver(reply.events, now);
        self.client.disconnect(conn);
    }
}
