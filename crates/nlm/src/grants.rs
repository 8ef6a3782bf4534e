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
    /// What the owner held within the requested range while it waited: a
    /// grant that is refused or cancelled gives these back, so cancelling
    /// an upgrade does not lose the lock being upgraded.
    pub prior: Vec<(Range, latch_lock::Mode)>,
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

/// A blocked request's owner and file.
type OwnerFile = (HostId, u32, Vec<u8>, Vec<u8>);

fn owner_file(i: &BlockedInfo) -> OwnerFile {
    (
        i.host,
        i.lock.svid,
        i.lock.oh.as_bytes().to_vec(),
        i.lock.fh.as_bytes().to_vec(),
    )
}

#[derive(Debug, Default)]
pub(crate) struct Grants {
    blocked: HashMap<RequestId, BlockedInfo>,
    /// The blocked requests of each owner on each file.
    by_owner_file: HashMap<OwnerFile, Vec<RequestId>>,
    pending: BTreeMap<RequestId, Pending>,
}

/// Our cookie for a grant: its request id and our boot number. Request ids
/// start again at every start, so the boot number keeps a client from
/// taking a new grant for a copy of one from before our restart.
fn cookie(id: RequestId, boot: u32) -> Netobj {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&id.0.to_be_bytes());
    b[8..].copy_from_slice(&boot.to_be_bytes());
    Netobj::from_slice(&b).unwrap_or_default()
}

/// The request a cookie of ours names; `None` for anything else,
/// including our cookies from before a restart.
fn id_of(cookie: &Netobj, boot: u32) -> Option<RequestId> {
    let b: [u8; 12] = cookie.as_bytes().try_into().ok()?;
    let (id, from) = b.split_at(8);
    if from != boot.to_be_bytes() {
        return None;
    }
    Some(RequestId(u64::from_be_bytes(id.try_into().ok()?)))
}

impl Grants {
    pub fn add_blocked(&mut self, id: RequestId, info: BlockedInfo) {
        let k = owner_file(&info);
        if self.blocked.insert(id, info).is_none() {
            self.by_owner_file.entry(k).or_default().push(id);
        }
    }

    pub fn remove_blocked(&mut self, id: &RequestId) -> Option<BlockedInfo> {
        let info = self.blocked.remove(id)?;
        let k = owner_file(&info);
        if let Some(v) = self.by_owner_file.get_mut(&k) {
            v.retain(|x| x != id);
            if v.is_empty() {
                self.by_owner_file.remove(&k);
            }
        }
        Some(info)
    }

    /// Whether `host` has blocked requests or grants in flight.
    pub fn involves(&self, host: HostId) -> bool {
        self.blocked.values().any(|b| b.host == host)
            || self.pending.values().any(|p| p.info.host == host)
    }

    pub fn forget_host(&mut self, host: HostId) {
        self.forget_owners(host, |_| true);
    }

    /// Forgets the blocked requests and grants of the owners of `host`
    /// whose owner handle `old` selects.
    pub fn forget_owners(&mut self, host: HostId, old: impl Fn(&[u8]) -> bool) {
        let gone = |i: &BlockedInfo| i.host == host && old(i.lock.oh.as_bytes());
        self.blocked.retain(|_, b| !gone(b));
        self.by_owner_file
            .retain(|k, _| !(k.0 == host && old(&k.2)));
        self.pending.retain(|_, p| !gone(&p.info));
    }

    /// Removes the unacknowledged grant of exactly this lock, if any.
    pub fn take_unacked(
        &mut self,
        host: HostId,
        lock: &Lock,
        exclusive: bool,
    ) -> Option<BlockedInfo> {
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
        self.pending.remove(&id).map(|p| p.info)
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

impl NlmServer {
    /// Turns the engine's events into callbacks.
    pub(crate) fn deliver(&mut self, events: Vec<Event>, now: u64) {
        if events.is_empty() {
            return;
        }
        let mut batch = self.take_granted(&events);
        for e in events {
            self.age_event(&e);
            let (id, owner, file) = match e {
                Event::Granted {
                    id, file, owner, ..
                } => (id, owner, file),
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
            let Some(info) = batch.remove(&id) else {
                continue;
            };
            let mode = if info.exclusive {
                latch_lock::Mode::Exclusive
            } else {
                latch_lock::Mode::Shared
            };
            let r = Range::from_offset_len(info.lock.offset, info.lock.len);
            self.note_acquired(&owner, &file, r, mode);
            // The owner's holdings changed: the `prior` of its other waits.
            self.refresh_prior(&owner, &file);
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

    /// Takes the blocked requests that `events` grant out of the waiting
    /// set, all at once, before any `prior` is refreshed from the engine:
    /// the engine has applied the whole batch already, and a grant's undo
    /// must give back what its owner held before it, not the grant itself
    /// or a later one of the batch. A grant earlier in the batch is part of
    /// what a later one of the same owner replaced.
    fn take_granted(&mut self, events: &[Event]) -> HashMap<RequestId, BlockedInfo> {
        let mut batch: Vec<(RequestId, BlockedInfo)> = Vec::new();
        for e in events {
            let Event::Granted { id, .. } = e else {
                continue;
            };
            let Some(mut info) = self.grants.remove_blocked(id) else {
                continue;
            };
            let r = Range::from_offset_len(info.lock.offset, info.lock.len);
            let mine = owner_file(&info);
            for (_, earlier) in batch.iter().filter(|(_, b)| owner_file(b) == mine) {
                let er = Range::from_offset_len(earlier.lock.offset, earlier.lock.len);
                if let Some(c) = clip(er, r) {
                    let mode = if earlier.exclusive {
                        latch_lock::Mode::Exclusive
                    } else {
                        latch_lock::Mode::Shared
                    };
                    info.prior = overlay(&info.prior, c, mode);
                }
            }
            batch.push((*id, info));
        }
        batch.into_iter().collect()
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
            cookie: cookie(id, self.boot),
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

    /// The client refused or was never reached: the grant is undone. What
    /// the owner held in the range before it is given back first (a
    /// downgrade in place, which never waits), then the rest is unlocked.
    pub(crate) fn release_grant(&mut self, info: &BlockedInfo, now: u64) {
        let owner = Owner::new(info.host, info.lock.svid, info.lock.oh.as_bytes());
        let file = FileKey::new(info.lock.fh.as_bytes());
        let r = Range::from_offset_len(info.lock.offset, info.lock.len);
        let mut events = Vec::new();
        for &(p, mode) in &info.prior {
            let req = latch_lock::LockRequest {
                file: &file,
                owner: &owner,
                range: p,
                mode,
                block: false,
                // Allowed in and out of grace: it only gives back.
                reclaim: true,
                id: None,
            };
            if let Ok(reply) = self.engine.lock(&req, now) {
                events.extend(reply.events);
            }
        }
        for gap in gaps(r, &info.prior) {
            if let Ok(reply) = self.engine.unlock(&file, &owner, gap) {
                events.extend(reply.events);
            }
        }
        self.deliver(events, now);
    }

    /// `owner` now holds `r` in `mode` by another request than its grants
    /// not yet acknowledged on `file`: undoing one of those must leave `r`
    /// alone (found by the simulator: a refused old grant, undone, cut the
    /// range the same owner was granted next in the same wake).
    pub(crate) fn note_acquired(
        &mut self,
        owner: &Owner,
        file: &FileKey,
        r: Range,
        mode: latch_lock::Mode,
    ) {
        for p in self.grants.pending.values_mut() {
            let i = &p.info;
            let same = (
                i.host,
                i.lock.svid,
                i.lock.oh.as_bytes(),
                i.lock.fh.as_bytes(),
            ) == (owner.host, owner.svid, &*owner.handle, &*file.0);
            let mine = Range::from_offset_len(i.lock.offset, i.lock.len);
            if let (true, Some(c)) = (same, clip(r, mine)) {
                p.info.prior = overlay(&p.info.prior, c, mode);
            }
        }
    }

    /// Keeps the `prior` of `owner`'s blocked requests on `file` up to date
    /// after it locked or unlocked something there.
    pub(crate) fn refresh_prior(&mut self, owner: &Owner, file: &FileKey) {
        // Every LOCK and UNLOCK comes here; usually nothing waits.
        if self.grants.by_owner_file.is_empty() && self.grants.pending.is_empty() {
            return;
        }
        let k = (
            owner.host,
            owner.svid,
            owner.handle.to_vec(),
            file.0.to_vec(),
        );
        let ids = self
            .grants
            .by_owner_file
            .get(&k)
            .cloned()
            .unwrap_or_default();
        let unacked = self.grants.pending.values().any(|p| {
            p.info.host == owner.host
                && p.info.lock.svid == owner.svid
                && p.info.lock.fh.as_bytes() == &*file.0
        });
        if ids.is_empty() && !unacked {
            return;
        }
        let held: Vec<latch_lock::Holder> = self
            .engine
            .locks(file)
            .into_iter()
            .filter(|h| h.owner == *owner)
            .collect();
        for id in ids {
            if let Some(b) = self.grants.blocked.get_mut(&id) {
                let r = Range::from_offset_len(b.lock.offset, b.lock.len);
                b.prior = held
                    .iter()
                    .filter_map(|h| clip(h.range, r).map(|c| (c, h.mode)))
                    .collect();
            }
        }
        // Grants not yet acknowledged: what was held before can only have
        // shrunk since (the owner let some of it go); an undo must not give
        // back what it released.
        for p in self.grants.pending.values_mut() {
            let i = &p.info;
            let same = (
                i.host,
                i.lock.svid,
                i.lock.oh.as_bytes(),
                i.lock.fh.as_bytes(),
            ) == (owner.host, owner.svid, &*owner.handle, &*file.0);
            if same {
                p.info.prior = p
                    .info
                    .prior
                    .iter()
                    .flat_map(|&(r, m)| {
                        held.iter()
                            .filter_map(move |h| clip(r, h.range).map(|c| (c, m)))
                    })
                    .collect();
            }
        }
    }

    /// What `owner` holds within `r` now, for a request about to wait.
    pub(crate) fn holdings(
        &self,
        owner: &Owner,
        file: &FileKey,
        r: Range,
    ) -> Vec<(Range, latch_lock::Mode)> {
        self.engine
            .locks(file)
            .into_iter()
            .filter(|h| h.owner == *owner)
            .filter_map(|h| clip(h.range, r).map(|c| (c, h.mode)))
            .collect()
    }

    /// What became of a synchronous GRANTED: the client's status, or `None`
    /// if it did not answer (retried later).
    pub fn call_result(&mut self, id: RequestId, stat: Option<Stat>, now: std::time::Instant) {
        let now = self.clock(now);
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
        if let Some(id) = id_of(cookie, self.boot) {
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

/// `a` within `b`, if they meet.
fn clip(a: Range, b: Range) -> Option<Range> {
    Range::new(a.start().max(b.start()), a.end().min(b.end()))
}

/// `pieces` with `c` taken in `mode` on top (a lock replaces what its
/// owner held under it).
fn overlay(
    pieces: &[(Range, latch_lock::Mode)],
    c: Range,
    mode: latch_lock::Mode,
) -> Vec<(Range, latch_lock::Mode)> {
    let mut out: Vec<(Range, latch_lock::Mode)> = Vec::with_capacity(pieces.len() + 1);
    for &(p, m) in pieces {
        for g in gaps(p, &[(c, mode)]) {
            out.push((g, m));
        }
    }
    out.push((c, mode));
    out
}

/// The parts of `r` that none of `pieces` covers.
fn gaps(r: Range, pieces: &[(Range, latch_lock::Mode)]) -> Vec<Range> {
    let mut covered: Vec<(u64, u64)> = pieces.iter().map(|(p, _)| (p.start(), p.end())).collect();
    covered.sort_unstable();
    let mut out = Vec::new();
    let mut s = r.start();
    for (ps, pe) in covered {
        if ps > s {
            if let Some(g) = Range::new(s, ps - 1) {
                out.push(g);
            }
        }
        if pe >= r.end() {
            return out;
        }
        s = s.max(pe + 1);
    }
    if let Some(g) = Range::new(s, r.end()) {
        out.push(g);
    }
    out
}
