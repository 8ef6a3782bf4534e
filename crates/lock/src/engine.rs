//! The engine: files, owners and the lock operations. Shares, leases, the
//! wake-up of blocked requests and the deadlock search live in their own
//! modules as further `impl Engine` blocks.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::events::{Event, Holder, LockAnswer, Reply, Stats, TestAnswer};
use crate::excl::Seg;
use crate::file::{FileState, Interest, Plan, Waiter};
use crate::idhash::IdMap;
use crate::owner::{FileId, Owners};
use crate::tree::Filter;
use crate::types::{Bound, Error, FileKey, HostId, Limits, Mode, Owner, OwnerId, Range, RequestId};

/// A byte-range lock request (NLM LOCK).
#[derive(Clone, Debug)]
pub struct LockRequest<'a> {
    pub file: &'a FileKey,
    pub owner: &'a Owner,
    pub range: Range,
    pub mode: Mode,
    /// Wait (NLM `block`) rather than be denied.
    pub block: bool,
    /// Accepted during the grace period.
    pub reclaim: bool,
    /// The id to name this request by if it blocks; the engine picks one
    /// when `None`. Caller ids must be below [`RequestId::ENGINE_BASE`].
    pub id: Option<RequestId>,
}

/// A blocked lock request. It exists only while it waits; the states are
/// the answers and events that mention its id.
///
/// ```text
///              lock(block=true)
///                    |
///      +-------------+--------------+---------------+
///      | free        | conflicts    | would close   | bound hit
///      v             v              | a cycle       v
///   Granted      Blocked(id) ----+  v            Err(NoLocks)
///  (no waiter)       |           | Deadlock
///                    |           |  (no waiter)
///   holders ahead    |           | cancel(id), release_owner,
///   release, earlier |           | release_host
///   waiters leave,   |           v
///   lease broken     |        Cancelled (no event)
///                    v
///          Event::Granted{id}  -- the request is now a held lock
/// ```
///
/// A blocked request waits behind every held lock and every *earlier*
/// blocked request of another owner that it conflicts with, and behind any
/// conflicting lease being broken. The wait-for graph over owners is kept
/// acyclic (a request that would close a cycle is answered `Deadlock`
/// instead), and a grant never creates an edge that did not exist: so every
/// `Blocked` request is granted once those ahead of it let go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedRequest {
    pub id: RequestId,
    pub file: FileKey,
    pub owner: Owner,
    pub range: Range,
    pub mode: Mode,
}

pub struct Engine {
    pub(crate) limits: Limits,
    pub(crate) grace: bool,
    pub(crate) owners: Owners,
    file_ids: HashMap<FileKey, FileId, latch_hash::KeyedState>,
    files: Vec<Option<FileState>>,
    free_files: Vec<u32>,
    /// Files that became empty, kept live (key, id and arenas) for a while
    /// before they are forgotten: a client that locks and unlocks one file
    /// over and over then costs no allocation and no map update per lock.
    /// At most [`IDLE_FILES_MAX`]; an empty file is invisible otherwise.
    idle_files: VecDeque<FileId>,
    /// States of forgotten files, empty and with small arenas, for the
    /// next new file to take rather than allocate its own: at most
    /// [`SPARE_FILES_MAX`].
    spare_files: Vec<FileState>,
    /// Every blocked request: its file and its slot in that file's waiter
    /// tree.
    pub(crate) waiters: IdMap<RequestId, (FileId, u32)>,
    next_seq: u64,
    next_engine_id: u64,
    pub(crate) entries: usize,
    /// Leases being broken, by deadline.
    pub(crate) deadlines: BTreeSet<(u64, FileId, OwnerId)>,
    pub(crate) stats: Stats,
    /// The caller's time, for the held-since stamps (see
    /// [`Engine::set_clock`]).
    clock: u64,
    /// A used plan's vectors, reused by the next (see [`Engine::plan`]).
    spare: Plan,
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Engine {
            limits,
            grace: false,
            owners: Owners::default(),
            file_ids: HashMap::default(),
            files: Vec::new(),
            free_files: Vec::new(),
            idle_files: VecDeque::new(),
            spare_files: Vec::new(),
            waiters: IdMap::default(),
            next_seq: 0,
            next_engine_id: RequestId::ENGINE_BASE,
            entries: 0,
            deadlines: BTreeSet::new(),
            stats: Stats::default(),
            clock: 0,
            spare: Plan::default(),
        }
    }

    /// An empty plan with the vectors of the last one given back: a lock
    /// or unlock then allocates none.
    pub(crate) fn plan(&mut self) -> Plan {
        std::mem::take(&mut self.spare)
    }

    pub(crate) fn recycle(&mut self, plan: Plan) {
        self.spare = plan;
    }

    /// Tells the engine the caller's time, in the caller's units, for the
    /// stamps [`Engine::held_since`] reports: a blocked request is granted
    /// inside calls that take no time (an unlock, a cancel, a release), so
    /// a caller that wants those stamps exact sets the time first. A lock
    /// sets it from its own `now`.
    pub fn set_clock(&mut self, now: u64) {
        self.clock = now;
    }

    /// When `owner` last went from holding no byte of `file` to holding
    /// some (by a lock, or a grant of its blocked request), in the time
    /// the caller gave then; `None` if it holds none. O(1).
    pub fn held_since(&self, file: &FileKey, owner: &Owner) -> Option<u64> {
        let (fid, oid) = (self.file_lookup(file)?, self.owners.lookup(owner)?);
        let f = self.owners.get(oid)?.files.get(&fid)?;
        (f.segs > 0).then_some(f.since)
    }

    /// Counts `delta` held segments of `oid` on `fid`.
    pub(crate) fn count_segs(&mut self, fid: FileId, oid: OwnerId, delta: isize) {
        self.entries = self.entries.saturating_add_signed(delta);
        self.owners.count_segs(oid, fid, delta, self.clock);
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Enter (`true`) or leave the grace period, in which only reclaims are
    /// accepted.
    pub fn set_grace(&mut self, on: bool) {
        self.grace = on;
    }

    pub fn in_grace(&self) -> bool {
        self.grace
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.owners = self.owners.len();
        s.waiters = self.waiters.len();
        s.entries = self.entries;
        s.files = 0;
        for f in self.files.iter().flatten() {
            s.files += usize::from(!f.is_empty());
            s.segments += f.holders.len();
            s.shares += f.shares.len();
            s.leases += f.leases.len();
        }
        s
    }

    /// NLM LOCK.
    pub fn lock(&mut self, req: &LockRequest<'_>, now: u64) -> Result<Reply<LockAnswer>, Error> {
        self.check_keys(req.file, req.owner)?;
        if self.grace && !req.reclaim {
            return Ok(reply(LockAnswer::DeniedGrace, Vec::new()));
        }
        if req.block {
            if let Some(id) = self.find_waiter(req.file, req.owner, req.range, req.mode) {
                // A retransmitted blocking request: same waiter, same id.
                return Ok(reply(LockAnswer::Blocked(id), Vec::new()));
            }
        }
        if let Some(id) = req.id {
            if id.0 >= RequestId::ENGINE_BASE || self.waiters.contains_key(&id) {
                return Err(Error::BadRequestId(id));
            }
        }
        self.clock = now;
        let fid = self.file_intern(req.file);
        let oid = self.owners.intern(req.owner);
        let mut events = Vec::new();
        let res = self.lock_in(fid, oid, req, now, &mut events);
        self.gc(fid, oid);
        res.map(|a| reply(a, events))
    }

    fn lock_in(
        &mut self,
        fid: FileId,
        oid: OwnerId,
        req: &LockRequest<'_>,
        now: u64,
        events: &mut Vec<Event>,
    ) -> Result<LockAnswer, Error> {
        let excl = req.mode == Mode::Exclusive;
        let r = req.range;
        let buf = self.plan();
        let held = self.owners.holds_any(oid);
        let f = self.file(fid);
        let plan = f.plan_lock(oid, r, excl, held, buf);
        if plan.covered {
            self.check_room(oid, plan.delta())?;
            self.apply_plan(fid, oid, &plan, events);
            self.recycle(plan);
            return Ok(LockAnswer::Granted);
        }
        let holder = f.holder_conflict(oid, r, excl);
        let waiter = f.waiter_conflict(oid, r, excl, u64::MAX);
        let interest = if excl {
            Interest::Write
        } else {
            Interest::Read
        };
        let leases = !f.lease_conflicts(oid, interest).is_empty();
        if holder.is_none() && waiter.is_none() && !leases {
            self.check_room(oid, plan.delta())?;
            self.apply_plan(fid, oid, &plan, events);
            self.recycle(plan);
            return Ok(LockAnswer::Granted);
        }
        if !req.block {
            let h = holder.map(|seg| self.describe(seg));
            self.start_breaks(fid, oid, interest, now, events);
            return Ok(LockAnswer::Denied(h));
        }
        if (holder.is_some() || waiter.is_some()) && self.would_deadlock(fid, oid, r, excl) {
            self.stats.deadlocks_refused += 1;
            return Ok(LockAnswer::Deadlock);
        }
        if self.file(fid).waiters.len() >= self.limits.waiters_per_file {
            return Err(Error::NoLocks(Bound::WaitersPerFile));
        }
        self.check_room(oid, 1)?;
        self.start_breaks(fid, oid, interest, now, events);
        let id = match req.id {
            Some(id) => id,
            None => {
                let id = RequestId(self.next_engine_id);
                self.next_engine_id += 1;
                id
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot =
            self.file_mut(fid)
                .waiters
                .insert(r.start(), r.end(), oid, excl, Waiter { id, seq });
        self.waiters.insert(id, (fid, slot));
        if let Some(o) = self.owners.get_mut(oid) {
            o.waiters.push(id);
        }
        self.count(fid, oid, 1);
        Ok(LockAnswer::Blocked(id))
    }

    /// NLM UNLOCK. Blocked requests of the owner stay blocked (NLM CANCEL
    /// is separate).
    pub fn unlock(
        &mut self,
        file: &FileKey,
        owner: &Owner,
        range: Range,
    ) -> Result<Reply<()>, Error> {
        let mut events = Vec::new();
        let (Some(&fid), Some(oid)) = (self.file_ids.get(file), self.owners.lookup(owner)) else {
            return Ok(reply((), events));
        };
        let buf = self.plan();
        let plan = self.file(fid).plan_unlock(oid, range, buf);
        self.check_room(oid, plan.delta())?;
        self.apply_plan(fid, oid, &plan, &mut events);
        self.recycle(plan);
        self.gc(fid, oid);
        Ok(reply((), events))
    }

    /// NLM TEST: one held lock of another owner that conflicts, if any.
    /// Blocked requests and leases are not holders and are not reported.
    pub fn test(&self, file: &FileKey, owner: &Owner, range: Range, mode: Mode) -> TestAnswer {
        if self.grace {
            return TestAnswer::DeniedGrace;
        }
        let Some(&fid) = self.file_ids.get(file) else {
            return TestAnswer::Free;
        };
        let f = self.file(fid);
        // The exclusive segment a conflict search looks at first: when it
        // is someone else's (told by its key, without looking the asker
        // up among every owner), it is the answer the search would give,
        // in either mode.
        if let Some((seg, who)) = f.excl.first_candidate(range.start(), range.end()) {
            if who.is(owner) == Some(false) {
                if let Some(o) = who.owner() {
                    return TestAnswer::Conflict(Holder {
                        owner: o,
                        mode: Mode::Exclusive,
                        range: Range::new(seg.start, seg.end).unwrap_or(Range::ALL),
                    });
                }
            }
        }
        // An owner the engine does not know holds nothing, so every holder
        // is "another owner"; no interned id equals u32::MAX.
        let oid = self.owners.lookup(owner).unwrap_or(OwnerId(u32::MAX));
        match f.holder_conflict(oid, range, mode == Mode::Exclusive) {
            Some(seg) => TestAnswer::Conflict(self.describe(seg)),
            None => TestAnswer::Free,
        }
    }

    /// NLM CANCEL: drop a blocked request. `false` if there was none (it
    /// may have been granted already: the grant event went out before).
    pub fn cancel(&mut self, id: RequestId) -> Reply<bool> {
        let mut events = Vec::new();
        let Some(&(fid, slot)) = self.waiters.get(&id) else {
            return reply(false, events);
        };
        let oid = self.file(fid).waiters.get(slot).owner;
        let r = self.remove_waiter(fid, slot);
        self.wake(fid, vec![r], &mut events);
        self.gc(fid, oid);
        reply(true, events)
    }

    /// The blocked request of `owner` for exactly this lock, as NLM CANCEL
    /// names it.
    pub fn find_waiter(
        &self,
        file: &FileKey,
        owner: &Owner,
        range: Range,
        mode: Mode,
    ) -> Option<RequestId> {
        let fid = *self.file_ids.get(file)?;
        let o = self.owners.get(self.owners.lookup(owner)?)?;
        let f = self.file(fid);
        o.waiters.iter().copied().find(|id| {
            self.waiters.get(id).is_some_and(|&(wf, slot)| {
                if wf != fid {
                    return false;
                }
                let n = f.waiters.get(slot);
                n.start == range.start()
                    && n.end == range.end()
                    && n.excl == (mode == Mode::Exclusive)
            })
        })
    }

    /// Everything of one owner goes: locks, blocked requests, shares,
    /// leases. Returns the grants this causes.
    pub fn release_owner(&mut self, owner: &Owner) -> Reply<()> {
        let mut events = Vec::new();
        if let Some(oid) = self.owners.lookup(owner) {
            self.release(&[oid], &[], &mut events);
        }
        reply((), events)
    }

    /// Everything of every owner of one host goes (client reboot, NLM
    /// FREE_ALL). Nothing is granted to the host being released.
    pub fn release_host(&mut self, host: HostId) -> Reply<()> {
        self.release_host_keeping(host, &[])
    }

    /// [`Engine::release_host`], except for the shares `keep` names (those
    /// of another host or of no one are ignored). The lock manager keeps the
    /// shares a host may have asked since its reboot when it learns of that
    /// reboot late.
    pub fn release_host_keeping(&mut self, host: HostId, keep: &[(FileKey, Owner)]) -> Reply<()> {
        self.release_host_where(host, keep, |_| true)
    }

    /// [`Engine::release_host_keeping`] for the owners of `host` that `old`
    /// selects: the lock manager frees only what an older start of a host
    /// asked when it learns of that start's end late and can tell which
    /// owners belong to it.
    pub fn release_host_where(
        &mut self,
        host: HostId,
        keep: &[(FileKey, Owner)],
        old: impl Fn(&Owner) -> bool,
    ) -> Reply<()> {
        let kept: Vec<(FileId, OwnerId)> = keep
            .iter()
            .filter(|(_, o)| o.host == host)
            .filter_map(|(f, o)| Some((self.file_lookup(f)?, self.owners.lookup(o)?)))
            .collect();
        let mut events = Vec::new();
        let mut owners: Vec<OwnerId> = match self.owners.hosts.get(&host) {
            Some(h) => h
                .owners
                .iter()
                .copied()
                .filter(|&oid| self.owners.get(oid).is_some_and(|o| old(&o.key)))
                .collect(),
            None => Vec::new(),
        };
        // Sorted so that nothing depends on hash order.
        owners.sort();
        self.release(&owners, &kept, &mut events);
        reply((), events)
    }

    /// Removes everything of `owners` first and wakes waiters after, so that
    /// no grant goes to an owner that is on its way out.
    fn release(&mut self, owners: &[OwnerId], keep: &[(FileId, OwnerId)], events: &mut Vec<Event>) {
        let mut touched: BTreeMap<FileId, Vec<Range>> = BTreeMap::new();
        for &oid in owners {
            let Some(o) = self.owners.get(oid) else {
                continue;
            };
            for id in o.waiters.clone() {
                if let Some(&(fid, slot)) = self.waiters.get(&id) {
                    let r = self.remove_waiter(fid, slot);
                    touched.entry(fid).or_default().push(r);
                }
            }
            let files: Vec<FileId> = match self.owners.get(oid) {
                Some(o) => o.files.keys().copied().collect(),
                None => Vec::new(),
            };
            for fid in files {
                let plan = self.file(fid).plan_unlock(oid, Range::ALL, Plan::default());
                let who = self.owners.who(oid);
                self.file_mut(fid).apply(oid, who, &plan);
                self.count_segs(fid, oid, plan.delta());
                let ranges = touched.entry(fid).or_default();
                ranges.extend(plan.weakened);
                if !keep.contains(&(fid, oid)) {
                    self.drop_share(fid, oid);
                }
                if self.remove_lease(fid, oid) {
                    ranges.push(Range::ALL);
                }
            }
        }
        for (&fid, ranges) in &touched {
            self.wake(fid, ranges.clone(), events);
        }
        for &oid in owners {
            self.owners.gc(oid);
        }
        for &fid in touched.keys() {
            self.gc_file(fid);
        }
    }

    /// Entries (held segments, blocked requests, shares, leases) of every
    /// owner of `host`: zero when the host holds no state at all.
    pub fn host_entries(&self, host: HostId) -> usize {
        self.owners.host_entries(host)
    }

    /// A blocked request by id.
    pub fn blocked(&self, id: RequestId) -> Option<BlockedRequest> {
        let &(fid, slot) = self.waiters.get(&id)?;
        let f = self.file(fid);
        let n = f.waiters.get(slot);
        Some(BlockedRequest {
            id,
            file: f.key.clone(),
            owner: self.owners.key(n.owner),
            range: Range::new(n.start, n.end)?,
            mode: if n.excl {
                Mode::Exclusive
            } else {
                Mode::Shared
            },
        })
    }

    /// The blocked requests on a file, in arrival order.
    pub fn blocked_on(&self, file: &FileKey) -> Vec<BlockedRequest> {
        let Some(&fid) = self.file_ids.get(file) else {
            return Vec::new();
        };
        let f = self.file(fid);
        let mut v: Vec<(u64, RequestId)> = Vec::new();
        f.waiters
            .visit_overlaps(0, u64::MAX, Filter::All, &mut |slot| {
                let p = &f.waiters.get(slot).payload;
                v.push((p.seq, p.id));
                true
            });
        v.sort_unstable();
        v.into_iter()
            .filter_map(|(_, id)| self.blocked(id))
            .collect()
    }

    /// Every file with locks, blocked requests, shares or leases, in key
    /// order (for listing; O(files)).
    pub fn files(&self) -> Vec<FileKey> {
        let mut v: Vec<FileKey> = self
            .file_ids
            .iter()
            .filter(|(_, &fid)| !self.file(fid).is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// The held locks on a file, for listing.
    pub fn locks(&self, file: &FileKey) -> Vec<Holder> {
        let Some(&fid) = self.file_ids.get(file) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        self.file(fid)
            .visit_holders(0, u64::MAX, Filter::All, &mut |seg| {
                out.push(self.describe(seg));
                true
            });
        // Exclusive and shared segments came separately; no two share a
        // start (they would overlap, and one owner's never do), and the
        // stable sort keeps the tree's order among shared ones.
        out.sort_by_key(|h| h.range.start());
        out
    }

    // ---- internals shared by the other modules ----

    pub(crate) fn check_keys(&self, file: &FileKey, owner: &Owner) -> Result<(), Error> {
        if file.0.len() > self.limits.file_key_len_max {
            return Err(Error::NoLocks(Bound::FileKeyLen));
        }
        if owner.handle.len() > self.limits.owner_handle_len_max {
            return Err(Error::NoLocks(Bound::OwnerHandleLen));
        }
        Ok(())
    }

    /// Would `delta` more entries for `oid` stay within the bounds?
    pub(crate) fn check_room(&self, oid: OwnerId, delta: isize) -> Result<(), Error> {
        if delta <= 0 {
            return Ok(());
        }
        let d = delta.unsigned_abs();
        if self.entries + d > self.limits.entries_total {
            return Err(Error::NoLocks(Bound::EntriesTotal));
        }
        let host = self.owners.host_of(oid);
        let used = host.map_or(0, |h| self.owners.host_entries(h));
        if used + d > self.limits.entries_per_host {
            return Err(Error::NoLocks(Bound::EntriesPerHost));
        }
        Ok(())
    }

    pub(crate) fn count(&mut self, fid: FileId, oid: OwnerId, delta: isize) {
        self.entries = self.entries.saturating_add_signed(delta);
        self.owners.count(oid, fid, delta);
    }

    /// Applies a lock or unlock plan and wakes whom it unblocks. Grants of
    /// blocked requests come here too, unchecked against the bounds: their
    /// room was taken when they queued, and a grant adds at most one entry
    /// beyond the one it frees, so the overshoot is bounded by the queue.
    pub(crate) fn apply_plan(
        &mut self,
        fid: FileId,
        oid: OwnerId,
        plan: &Plan,
        events: &mut Vec<Event>,
    ) {
        let who = self.owners.who(oid);
        self.file_mut(fid).apply(oid, who, plan);
        self.count_segs(fid, oid, plan.delta());
        // With nobody queued on the file there is no one to wake (and no
        // work list to build).
        if let Some(span) = plan.weakened.filter(|_| !self.file(fid).waiters.is_empty()) {
            self.wake(fid, vec![span], events);
        }
    }

    /// Unlinks a blocked request everywhere; returns its range.
    pub(crate) fn remove_waiter(&mut self, fid: FileId, slot: u32) -> Range {
        let f = self.file_mut(fid);
        let n = f.waiters.get(slot);
        let (oid, id) = (n.owner, n.payload.id);
        let r = Range::new(n.start, n.end).unwrap_or(Range::ALL);
        f.waiters.remove(slot);
        self.waiters.remove(&id);
        if let Some(o) = self.owners.get_mut(oid) {
            o.waiters.retain(|w| *w != id);
        }
        self.count(fid, oid, -1);
        r
    }

    pub(crate) fn describe(&self, seg: Seg) -> Holder {
        Holder {
            owner: self.owners.key(seg.owner),
            mode: if seg.excl {
                Mode::Exclusive
            } else {
                Mode::Shared
            },
            range: Range::new(seg.start, seg.end).unwrap_or(Range::ALL),
        }
    }

    pub(crate) fn file_intern(&mut self, key: &FileKey) -> FileId {
        if let Some(&fid) = self.file_ids.get(key) {
            return fid;
        }
        let state = match self.spare_files.pop() {
            Some(mut f) => {
                f.key = key.clone();
                f
            }
            None => FileState::new(key.clone()),
        };
        let fid = match self.free_files.pop() {
            Some(i) => {
                self.files[i as usize] = Some(state);
                FileId(i)
            }
            None => {
                self.files.push(Some(state));
                FileId((self.files.len() - 1) as u32)
            }
        };
        self.file_ids.insert(key.clone(), fid);
        fid
    }

    pub(crate) fn file_lookup(&self, key: &FileKey) -> Option<FileId> {
        self.file_ids.get(key).copied()
    }

    pub(crate) fn file(&self, fid: FileId) -> &FileState {
        match self.files.get(fid.0 as usize).and_then(Option::as_ref) {
            Some(f) => f,
            // Invariant: a FileId is only held (in the id map, the waiter
            // map, an owner's file set or the deadline set) while its
            // file is live; gc() removes all of those before freeing it.
            None => unreachable!("dangling FileId {fid:?}"),
        }
    }

    pub(crate) fn file_mut(&mut self, fid: FileId) -> &mut FileState {
        match self.files.get_mut(fid.0 as usize).and_then(Option::as_mut) {
            Some(f) => f,
            // Invariant: as in file().
            None => unreachable!("dangling FileId {fid:?}"),
        }
    }

    /// Forgets a file and an owner that no longer hold anything.
    pub(crate) fn gc(&mut self, fid: FileId, oid: OwnerId) {
        self.owners.gc(oid);
        self.gc_file(fid);
    }

    /// An empty file joins the idle files; past the bound, the oldest idle
    /// file that is still empty is forgotten.
    pub(crate) fn gc_file(&mut self, fid: FileId) {
        let Some(Some(f)) = self.files.get_mut(fid.0 as usize) else {
            return;
        };
        if !f.is_empty() || f.idle {
            return;
        }
        f.idle = true;
        self.idle_files.push_back(fid);
        while self.idle_files.len() > IDLE_FILES_MAX {
            let Some(old) = self.idle_files.pop_front() else {
                break;
            };
            let Some(Some(f)) = self.files.get_mut(old.0 as usize) else {
                continue;
            };
            f.idle = false;
            if f.is_empty() {
                if let Some(f) = self.files[old.0 as usize].take() {
                    self.file_ids.remove(&f.key);
                    self.free_files.push(old.0);
                    if self.spare_files.len() < SPARE_FILES_MAX
                        && f.arena_bytes() <= SPARE_ARENA_MAX
                    {
                        self.spare_files.push(f);
                    }
                }
            }
        }
    }

    /// Approximate heap bytes of the lock tables (treap arenas and the
    /// exclusive index), for tests and the memory benchmark's cross-check.
    pub fn arena_bytes(&self) -> usize {
        self.files
            .iter()
            .flatten()
            .map(FileState::arena_bytes)
            .sum()
    }
}

/// How many empty files stay live for reuse (see `Engine::idle_files`).
const IDLE_FILES_MAX: usize = 256;
/// How many states of forgotten files are kept for new files (see
/// `Engine::spare_files`), and the largest arenas such a state may keep: a
/// file that held many locks gives its memory back instead.
const SPARE_FILES_MAX: usize = 64;
const SPARE_ARENA_MAX: usize = 16 << 10;

pub(crate) fn reply<T>(answer: T, events: Vec<Event>) -> Reply<T> {
    Reply { answer, events }
}
