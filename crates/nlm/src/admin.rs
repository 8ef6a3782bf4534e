//! What an operator may ask of the server: every lock and waiter with its
//! age, the hosts, releasing one host's state, ending grace, the counters.
//!
//! Ages are kept per (owner, file): the time since the owner last went from
//! holding nothing on the file to holding something (a grant), and per
//! blocked request the time it queued. Per (owner, file) rather than per
//! segment because POSIX merging and splitting change segments under us;
//! an owner's segments on one file all report the age of its oldest
//! continuous hold there. Entries leave when the owner's last segment on
//! the file goes (unlock, refused or undone grant, host released), and a
//! sweep checked against the engine bounds both tables by the live state.

use crate::server::NlmServer;
use latch_lock::{Event, FileKey, HostId, LockAnswer, Mode, Owner, RequestId};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;

/// Grant and queue times, bounded by the engine's state (see the module
/// documentation).
#[derive(Debug, Default)]
pub(crate) struct Ages {
    held: BTreeMap<(Owner, FileKey), u64>,
    queued: HashMap<RequestId, u64>,
    sweep_at: usize,
}

const SWEEP_MIN: usize = 1024;

/// An (owner, file) key of [`Ages::held`], owned or borrowed, so that the
/// table is looked up on every LOCK and UNLOCK without copying the owner
/// handle and the file handle. Ordered as the owned tuple is (field by
/// field: host, svid, owner handle, file handle).
trait HeldKey {
    fn parts(&self) -> (HostId, u32, &[u8], &[u8]);
}

impl HeldKey for (Owner, FileKey) {
    fn parts(&self) -> (HostId, u32, &[u8], &[u8]) {
        (self.0.host, self.0.svid, &self.0.handle, &self.1 .0)
    }
}

impl HeldKey for (&Owner, &FileKey) {
    fn parts(&self) -> (HostId, u32, &[u8], &[u8]) {
        (self.0.host, self.0.svid, &self.0.handle, &self.1 .0)
    }
}

impl<'a> std::borrow::Borrow<dyn HeldKey + 'a> for (Owner, FileKey) {
    fn borrow(&self) -> &(dyn HeldKey + 'a) {
        self
    }
}

impl PartialEq for dyn HeldKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn HeldKey + '_ {}

impl PartialOrd for dyn HeldKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn HeldKey + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

fn held_key<'a>(k: &'a (&'a Owner, &'a FileKey)) -> &'a (dyn HeldKey + 'a) {
    k
}

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

impl Ages {
    /// Forgets the held entries of `host` that `gone` selects.
    fn forget_host(&mut self, host: HostId, gone: impl Fn(&Owner, &FileKey) -> bool) {
        let lo = (Owner::new(host, 0, &[]), FileKey::new(&[]));
        let gone: Vec<(Owner, FileKey)> = self
            .held
            .range(lo..)
            .take_while(|((o, _), _)| o.host == host)
            .filter(|((o, f), _)| gone(o, f))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.held.remove(&k);
        }
    }
}

impl NlmServer {
    /// Hook: a LOCK was answered.
    pub(crate) fn age_lock(&mut self, owner: &Owner, file: &FileKey, a: &LockAnswer, now: u64) {
        match a {
            LockAnswer::Granted if !self.ages.held.contains_key(held_key(&(owner, file))) => {
                self.ages.held.insert((owner.clone(), file.clone()), now);
            }
            LockAnswer::Blocked(id) => {
                self.ages.queued.entry(*id).or_insert(now);
            }
            _ => {}
        }
        self.age_sweep();
    }

    /// Hook: an engine event is being delivered.
    pub(crate) fn age_event(&mut self, e: &Event, now: u64) {
        if let Event::Granted {
            id, file, owner, ..
        } = e
        {
            self.ages.queued.remove(id);
            self.ages
                .held
                .entry((owner.clone(), file.clone()))
                .or_insert(now);
        }
    }

    /// Hook: `owner` let go of (part of) `file`.
    pub(crate) fn age_released(&mut self, owner: &Owner, file: &FileKey) {
        if self.engine.held_segments(file, owner) == 0 {
            self.ages.held.remove(held_key(&(owner, file)));
        }
    }

    /// Hook: everything of `host` went.
    pub(crate) fn age_host_released(&mut self, host: HostId) {
        self.ages.forget_host(host, |_, _| true);
        let engine = &self.engine;
        self.ages.queued.retain(|id, _| engine.is_waiting(*id));
    }

    /// Hook: some owners of `host` went.
    pub(crate) fn age_host_partly_released(&mut self, host: HostId) {
        let engine = &self.engine;
        self.ages
            .forget_host(host, |o, f| engine.held_segments(f, o) == 0);
        self.ages.queued.retain(|id, _| engine.is_waiting(*id));
    }

    /// Drops what the engine no longer holds, once the tables have doubled
    /// since the last sweep: amortised O(1), and bounded by the live state.
    fn age_sweep(&mut self) {
        let n = self.ages.held.len() + self.ages.queued.len();
        if n < self.ages.sweep_at.max(SWEEP_MIN) {
            return;
        }
        let engine = &self.engine;
        self.ages
            .held
            .retain(|(o, f), _| engine.held_segments(f, o) > 0);
        self.ages.queued.retain(|id, _| engine.is_waiting(*id));
        self.ages.sweep_at = 2 * (self.ages.held.len() + self.ages.queued.len());
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
                    age_ms: age(self.ages.held.get(held_key(&(&h.owner, &file)))),
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
        let now = self.ms(now);
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
