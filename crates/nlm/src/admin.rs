//! What an operator may ask of the server: every lock and waiter with its
//! age, the hosts, releasing one host's state, ending grace, the counters.
//!
//! A held lock's age is the time since its owner last went from holding
//! nothing on the file to holding something (a grant), which the engine
//! keeps beside its count of the owner's segments there
//! ([`latch_lock::Engine::held_since`]): per (owner, file) rather than per
//! segment because POSIX merging and splitting change segments under us,
//! so an owner's segments on one file all report the age of its oldest
//! continuous hold there. A blocked request's age is the time it queued,
//! kept here; entries leave when the request does, and a sweep checked
//! against the engine bounds the table by the live state.

use crate::server::NlmServer;
use latch_lock::{Event, HostId, LockAnswer, Mode, RequestId};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Queue times of blocked requests, bounded by the engine's state (see the
/// module documentation).
#[derive(Debug, Default)]
pub(crate) struct Ages {
    queued: HashMap<RequestId, u64>,
    sweep_at: usize,
}

const SWEEP_MIN: usize = 1024;

/// What an entry in the lock listing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// A held byte-range lock.
    Held,
    /// A blocked LOCK waiting for a GRANTED callback.
    Waiting,
    /// A DOS share reservation (NLM SHARE), with its access and deny bits.
    Share { access: u32, deny: u32 },
}

/// One held lock, blocked request or share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockEntry {
    pub fh: Vec<u8>,
    pub offset: u64,
    /// 0: to the end of the file.
    pub len: u64,
    pub exclusive: bool,
    pub svid: u32,
    pub oh: Vec<u8>,
    /// The caller name and address of the owner's host (`None` if the host
    /// was forgotten, which should not happen while it holds state).
    pub host: Option<(Vec<u8>, IpAddr)>,
    pub state: EntryState,
    /// Since granted (held) or queued (waiting); `None` for shares.
    pub age_ms: Option<u64>,
}

/// One client host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub name: Vec<u8>,
    pub ip: IpAddr,
    pub nsm_state: u32,
    pub monitored: bool,
    /// Held segments, blocked requests, shares of all its owners.
    pub entries: usize,
    pub idle_ms: u64,
}

impl NlmServer {
    /// Hook: a LOCK was answered.
    pub(crate) fn age_lock(&mut self, a: &LockAnswer, now: u64) {
        if let LockAnswer::Blocked(id) = a {
            self.ages.queued.entry(*id).or_insert(now);
            self.age_sweep();
        }
    }

    /// Hook: an engine event is being delivered.
    pub(crate) fn age_event(&mut self, e: &Event) {
        if let Event::Granted { id, .. } = e {
            self.ages.queued.remove(id);
        }
    }

    /// Hook: some or all of `host`'s state went.
    pub(crate) fn age_host_released(&mut self) {
        let engine = &self.engine;
        self.ages.queued.retain(|id, _| engine.is_waiting(*id));
    }

    /// Drops what the engine no longer holds, once the table has doubled
    /// since the last sweep: amortised O(1), and bounded by the live state.
    fn age_sweep(&mut self) {
        let n = self.ages.queued.len();
        if n < self.ages.sweep_at.max(SWEEP_MIN) {
            return;
        }
        let engine = &self.engine;
        self.ages.queued.retain(|id, _| engine.is_waiting(*id));
        self.ages.sweep_at = 2 * self.ages.queued.len();
    }

    fn host_of(&self, id: HostId) -> Option<(Vec<u8>, IpAddr)> {
        self.hosts.get(id).map(|h| (h.name.clone(), h.ip))
    }

    /// Every held lock, blocked request and share, by file.
    pub fn list_locks(&self, now: Instant) -> Vec<LockEntry> {
        let now = self.ms(now);
        let age = |t: Option<&u64>| t.map(|t| now.saturating_sub(*t));
        let mut out = Vec::new();
        for file in self.engine.files() {
            for h in self.engine.locks(&file) {
                out.push(LockEntry {
                    fh: file.0.to_vec(),
                    offset: h.range.start(),
                    len: h.range.len(),
                    exclusive: h.mode == Mode::Exclusive,
                    svid: h.owner.svid,
                    oh: h.owner.handle.to_vec(),
                    host: self.host_of(h.owner.host),
                    state: EntryState::Held,
                    age_ms: age(self.engine.held_since(&file, &h.owner).as_ref()),
                });
            }
            for b in self.engine.blocked_on(&file) {
                out.push(LockEntry {
                    fh: file.0.to_vec(),
                    offset: b.range.start(),
                    len: b.range.len(),
                    exclusive: b.mode == Mode::Exclusive,
                    svid: b.owner.svid,
                    oh: b.owner.handle.to_vec(),
                    host: self.host_of(b.owner.host),
                    state: EntryState::Waiting,
                    age_ms: age(self.ages.queued.get(&b.id)),
                });
            }
            for (o, s) in self.engine.shares_on(&file) {
                out.push(LockEntry {
                    fh: file.0.to_vec(),
                    offset: 0,
                    len: 0,
                    exclusive: s.deny.has_write() || s.deny.has_read(),
                    svid: o.svid,
                    oh: o.handle.to_vec(),
                    host: self.host_of(o.host),
                    state: EntryState::Share {
                        access: s.access.wire(),
                        deny: s.deny.wire(),
                    },
                    age_ms: None,
                });
            }
        }
        out
    }

    /// Every host the server knows.
    pub fn list_hosts(&self, now: Instant) -> Vec<HostEntry> {
        let now = self.ms(now);
        self.hosts
            .sorted()
            .into_iter()
            .map(|h| HostEntry {
                name: h.name.clone(),
                ip: h.ip,
                nsm_state: h.nsm_state,
                monitored: h.monitored,
                entries: self.engine.host_entries(h.id),
                idle_ms: now.saturating_sub(h.last_active_ms),
            })
            .collect()
    }

    /// The operator's `latch release --host`: every lock, blocked request,
    /// share and pending grant of the hosts called `name` (at `ip` only, if
    /// given) goes, and the waiters they blocked are granted by callback as
    /// after an UNLOCK. Not a reboot: the hosts' NSM state and monitoring
    /// stay. Returns how many hosts matched.
    pub fn release_named(&mut self, name: &[u8], ip: Option<IpAddr>, now: Instant) -> usize {
        let now = self.clock(now);
        let ip = ip.map(crate::hosts::canonical);
        let all = self.hosts.named(name);
        let ids: Vec<HostId> = all
            .iter()
            .copied()
            .filter(|id| ip.is_none_or(|ip| self.hosts.get(*id).is_some_and(|h| h.ip == ip)))
            .collect();
        for &id in &ids {
            self.release_host(id, now);
        }
        // Nothing of that name holds state any more: grace need not wait
        // for it to reclaim.
        if !ids.is_empty() && ids.len() == all.len() {
            self.grace.host_gone(name);
        }
        self.persist_hosts(now, false);
        ids.len()
    }
}
