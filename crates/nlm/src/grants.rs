//! Blocked requests and their GRANTED callbacks.
//!
//! A granted request's callback is retried with backoff until the client
//! acknowledges it (a GRANTED reply, or a GRANTED_RES carrying our cookie),
//! refuses it (the lock is released: the client no longer wants it), or the
//! tries run out (the lock is kept or released, as configured). Callbacks
//! are actions, so a slow client stalls nobody.

use crate::client::LocalEvent;
use crate::proto::*;
use crate::server::{Action, GrantedStyle, NlmServer, Unacknowledged};
use latch_lock::{Event, FileKey, HostId, Owner, Range, RequestId};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// What we need to call a blocked request's client back.
#[derive(Debug, Clone)]
pub(crate) struct BlockedInfo {
    pub host: HostId,
    pub to: IpAddr,
    pub vers: u32,
    /// Asked with LOCK_MSG.
    pub msg: bool,
    pub exclusive: bool,
    pub lock: Lock,
}

/// A grant the client has not acknowledged yet.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    info: BlockedInfo,
    msg: bool,
    tries: u32,
    next_ms: u64,
    /// A synchronous GRANTED is on the wire; wait for its outcome.
    in_flight: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Grants {
    pub blocked: HashMap<RequestId, BlockedInfo>,
    pending: BTreeMap<RequestId, Pending>,
}

/// Our cookie for a grant is its request id.
fn cookie(id: RequestId) -> Netobj {
    Netobj::from_slice(&id.0.to_be_bytes()).unwrap_or_default()
}

fn id_of(cookie: &Netobj) -> Option<RequestId> {
    let b: [u8; 8] = cookie.as_bytes().try_into().ok()?;
    Some(RequestId(u64::from_be_bytes(b)))
}

impl Grants {
    /// Whether `host` has blocked requests or grants in flight.
    pub fn involves(&self, host: HostId) -> bool {
        self.blocked.values().any(|b| b.host == host)
            || self.pending.values().any(|p| p.info.host == host)
    }

    pub fn forget_host(&mut self, host: HostId) {
        self.blocked.retain(|_, b| b.host != host);
        self.pending.retain(|_, p| p.info.host != host);
    }

    /// Removes the unacknowledged grant of exactly this lock, if any.
    pub fn take_unacked(
        &mut self,
        host: HostId,
        lock: &Lock,
        exclusive: bool,
    ) -> Option<RequestId> {
        let id = self
            .pending
            .iter()
            .find(|(_, p)| {
                let l = &p.info.lock;
                p.info.host == host
                    && p.info.exclusive == exclusive
                    && (l.fh.as_bytes(), l.oh.as_bytes(), l.svid, l.offset, l.len)
                        == (
                            lock.fh.as_bytes(),
                            lock.oh.as_bytes(),
                            lock.svid,
                            lock.offset,
                            lock.len,
                        )
            })
            .map(|(id, _)| *id)?;
        self.pending.remove(&id);
        Some(id)
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

impl NlmServer {
    /// Turns the engine's events into callbacks.
    pub(crate) fn deliver(&mut self, events: Vec<Event>, now: u64) {
        for e in events {
            self.age_event(&e, now);
            let id = match e {
                Event::Granted { id, .. } => id,
                // Leases are held by local programs only.
                Event::LeaseBreak { file, holder, to } => {
                    if let Some(conn) = crate::local::conn_of(&holder) {
                        let (fh, to_read) = (file.0.to_vec(), to.is_some());
                        self.client
                            .tell(conn, LocalEvent::LeaseBreak { fh, to_read });
                    }
                    continue;
                }
                Event::LeaseRevoked { file, holder, .. } => {
                    if let Some(conn) = crate::local::conn_of(&holder) {
                        let fh = file.0.to_vec();
                        self.client.tell(conn, LocalEvent::LeaseRevoked { fh });
                    }
                    continue;
                }
            };
            if let Some((conn, req)) = self.local_blocked.remove(&id) {
                self.client.tell(conn, LocalEvent::Granted { req });
                continue;
            }
            let Some(info) = self.grants.blocked.remove(&id) else {
                continue;
            };
            let msg = match self.cfg.granted_style {
                GrantedStyle::Auto => info.msg,
                GrantedStyle::Sync => false,
                GrantedStyle::Msg => true,
            };
            let p = Pending {
                info,
                msg,
                tries: 0,
                next_ms: now,
                in_flight: false,
            };
            self.grants.pending.insert(id, p);
            self.send_grant(id, now);
        }
    }

    fn send_grant(&mut self, id: RequestId, now: u64) {
        let (first, max) = (
            self.cfg.granted_retry_first_ms,
            self.cfg.granted_retry_max_ms,
        );
        let our_name = Name::new(self.cfg.our_name.clone()).unwrap_or_default();
        let Some(p) = self.grants.pending.get_mut(&id) else {
            return;
        };
        let backoff = first.saturating_mul(1 << p.tries.min(16)).min(max);
        p.tries += 1;
        p.next_ms = now.saturating_add(backoff);
        p.in_flight = !p.msg;
        let args = TestArgs {
            cookie: cookie(id),
            exclusive: p.info.exclusive,
            lock: Lock {
                caller_name: our_name,
                ..p.info.lock.clone()
            },
        };
        let action = Action::Call {
            to: p.info.to,
            vers: p.info.vers,
            proc_: if p.msg { GRANTED_MSG } else { GRANTED },
            args: encode(&args, p.info.vers),
            grant: (!p.msg).then_some(id),
        };
        if p.tries > 1 {
            self.stats.callbacks_retried += 1;
        }
        self.stats.callbacks_sent += 1;
        self.push(action);
    }

    /// Resends callbacks that are due; gives up on those out of tries.
    pub(crate) fn retry_grants(&mut self, now: u64) {
        let due: Vec<RequestId> = self
            .grants
            .pending
            .iter()
            .filter(|(_, p)| !p.in_flight && p.next_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let out_of_tries = self
                .grants
                .pending
                .get(&id)
                .is_some_and(|p| p.tries >= self.cfg.granted_tries_max);
            if out_of_tries {
                self.abandon(id, now);
            } else {
                self.send_grant(id, now);
            }
        }
    }

    fn abandon(&mut self, id: RequestId, now: u64) {
        let Some(p) = self.grants.pending.remove(&id) else {
            return;
        };
        self.stats.callbacks_abandoned += 1;
        if self.cfg.unacknowledged == Unacknowledged::Release {
            self.release_grant(&p.info, now);
        }
    }

    /// The client refused or was never reached: its lock goes.
    fn release_grant(&mut self, info: &BlockedInfo, now: u64) {
        let owner = Owner::new(info.host, info.lock.svid, info.lock.oh.as_bytes());
        let file = FileKey::new(info.lock.fh.as_bytes());
        let r = Range::from_offset_len(info.lock.offset, info.lock.len);
        if let Ok(reply) = self.engine.unlock(&file, &owner, r) {
            self.deliver(reply.events, now);
        }
        self.age_released(&owner, &file);
    }

    /// What became of a synchronous GRANTED: the client's status, or `None`
    /// if it did not answer (retried later).
    pub fn call_result(&mut self, id: RequestId, stat: Option<Stat>, now: std::time::Instant) {
        let now = self.ms(now);
        match stat {
            Some(s) => self.granted_answer(id, s, now),
            None => {
                if let Some(p) = self.grants.pending.get_mut(&id) {
                    p.in_flight = false;
                }
            }
        }
    }

    /// GRANTED_RES from a client that was sent GRANTED_MSG.
    pub(crate) fn granted_res(&mut self, cookie: &Netobj, stat: Stat, now: u64) {
        if let Some(id) = id_of(cookie) {
            self.granted_answer(id, stat, now);
        }
    }

    fn granted_answer(&mut self, id: RequestId, stat: Stat, now: u64) {
        match stat {
            Stat::Granted => {
                self.grants.pending.remove(&id);
            }
            // In its grace period the client cannot take it yet: try again.
            Stat::DeniedGracePeriod => {
                if let Some(p) = self.grants.pending.get_mut(&id) {
                    p.in_flight = false;
                }
            }
            _ => {
                if let Some(p) = self.grants.pending.remove(&id) {
                    self.release_grant(&p.info, now);
                }
            }
        }
    }
}
