//! One file's state: held segments, blocked requests, shares and leases, and
//! the POSIX arithmetic of replacing, merging and splitting an owner's
//! segments.

use crate::excl::{ExclIndex, Seg};
use crate::owner::Who;
use crate::tree::{Filter, Tree};
use crate::types::{FileKey, LeaseKind, OwnerId, Range, RequestId, Share};

/// Payload of a blocked request in the waiter tree.
pub(crate) struct Waiter {
    pub id: RequestId,
    /// Arrival order, global and strictly increasing: FCFS is "lower seq
    /// first", and edges of the wait-for graph point to lower seqs only.
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Break {
    pub deadline: u64,
    pub to: Option<LeaseKind>,
}

pub(crate) struct LeaseEntry {
    pub owner: OwnerId,
    pub kind: LeaseKind,
    pub breaking: Option<Break>,
}

/// How much of the file a lock, share or lease request wants to keep for
/// itself, as far as leases are concerned. `Read` conflicts with another
/// owner's write lease (and breaking it to a read lease is enough);
/// `Write` conflicts with every lease of another owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interest {
    Read,
    Write,
}

impl Interest {
    pub fn of_share(s: Share) -> Interest {
        // Writing changes what a lease holder caches; denying reads takes
        // away what a read lease holder relies on. Denying writes or only
        // reading leaves a read lease valid.
        if s.access.has_write() || s.deny.has_read() {
            Interest::Write
        } else {
            Interest::Read
        }
    }

    pub fn of_lease(k: LeaseKind) -> Interest {
        match k {
            LeaseKind::Read => Interest::Read,
            LeaseKind::Write => Interest::Write,
        }
    }

    /// What another owner's lease of `kind` must become for this interest
    /// to proceed, or `Err(())` if it does not stand in the way.
    pub fn break_target(self, kind: LeaseKind) -> Result<Option<LeaseKind>, ()> {
        match (self, kind) {
            (Interest::Read, LeaseKind::Read) => Err(()),
            (Interest::Read, LeaseKind::Write) => Ok(Some(LeaseKind::Read)),
            (Interest::Write, _) => Ok(None),
        }
    }
}

pub(crate) struct FileState {
    pub key: FileKey,
    /// Every held segment in owner order (for POSIX merge and split); in
    /// start order only the shared ones, which may overlap each other.
    pub holders: Tree<()>,
    /// The exclusive held segments by start, with their ends and owners:
    /// what a conflict question reads, in about one cache miss.
    pub excl: ExclIndex,
    pub waiters: Tree<Waiter>,
    /// Few per file in practice (DOS shares are rare over NFS); a linear
    /// scan is cheaper than any index at that size.
    pub shares: Vec<(OwnerId, Share)>,
    pub leases: Vec<LeaseEntry>,
    /// In the engine's queue of idle files (it became empty; it may have
    /// been used again since).
    pub idle: bool,
}

/// The segments a lock or unlock removes and adds for one owner. Computed
/// before anything changes so bounds can be checked first.
#[derive(Default)]
pub(crate) struct Plan {
    pub remove: Vec<u32>,
    pub add: Vec<(u64, u64, bool)>,
    /// The hull of the bytes going from exclusive to shared or from held to
    /// free: blocked requests overlapping it may now proceed.
    pub weakened: Option<Range>,
    /// The owner already holds every byte of the range at least as strongly
    /// (a no-op or a downgrade), so no one else can object to it.
    pub covered: bool,
    /// The owner's segments near the range: scratch for planning.
    near: Vec<u32>,
}

impl Plan {
    fn weaken(&mut self, s: u64, e: u64) {
        let (lo, hi) = match self.weakened {
            Some(w) => (w.start().min(s), w.end().max(e)),
            None => (s, e),
        };
        self.weakened = Range::new(lo, hi);
    }

    /// Emptied for reuse, with `covered` as given, and the scratch list
    /// taken out (empty) so the plan can be filled while it is read.
    fn reset(mut self, covered: bool) -> (Plan, Vec<u32>) {
        self.remove.clear();
        self.add.clear();
        self.weakened = None;
        self.covered = covered;
        let mut near = std::mem::take(&mut self.near);
        near.clear();
        (self, near)
    }

    pub fn delta(&self) -> isize {
        self.add.len() as isize - self.remove.len() as isize
    }
}

impl FileState {
    pub fn new(key: FileKey) -> Self {
        FileState {
            key,
            holders: Tree::new(true, false),
            excl: ExclIndex::default(),
            waiters: Tree::new(false, true),
            shares: Vec::new(),
            leases: Vec::new(),
            idle: false,
        }
    }

    /// Heap bytes of the segment and waiter tables.
    pub fn arena_bytes(&self) -> usize {
        self.holders.capacity_bytes() + self.excl.bytes() + self.waiters.capacity_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
            && self.waiters.is_empty()
            && self.shares.is_empty()
            && self.leases.is_empty()
    }

    /// Replace `owner`'s holdings over `r` with one segment of mode `excl`,
    /// merged with touching or overlapping segments of the same mode.
    /// `plan` lends its vectors (see [`Plan::reset`]); `held` is false
    /// only if the owner holds no segment anywhere (then none is searched
    /// for here).
    pub fn plan_lock(&self, owner: OwnerId, r: Range, excl: bool, held: bool, plan: Plan) -> Plan {
        let (s, e) = (r.start(), r.end());
        let (mut plan, mut near) = plan.reset(true);
        if held {
            self.holders
                .owner_overlaps(owner, s.saturating_sub(1), e.saturating_add(1), &mut near);
        }
        let (mut lo, mut hi) = (s, e);
        // Next byte of [s, e] not yet seen covered by a segment at least as
        // strong; `None` once the cursor has run past u64::MAX.
        let mut cursor = Some(s);
        for &slot in &near {
            let n = self.holders.get(slot);
            let overlaps = n.start <= e && n.end >= s;
            if overlaps {
                if let Some(c) = cursor {
                    if n.start > c || (!n.excl && excl) {
                        plan.covered = false;
                    }
                    cursor = n.end.checked_add(1);
                }
            }
            if n.excl == excl {
                lo = lo.min(n.start);
                hi = hi.max(n.end);
                plan.remove.push(slot);
            } else if overlaps {
                plan.remove.push(slot);
                if n.excl {
                    plan.weaken(n.start.max(s), n.end.min(e));
                }
                if n.start < s {
                    plan.add.push((n.start, s - 1, n.excl));
                }
                if n.end > e {
                    plan.add.push((e + 1, n.end, n.excl));
                }
            }
        }
        if matches!(cursor, Some(c) if c <= e) {
            plan.covered = false;
        }
        plan.add.push((lo, hi, excl));
        plan.near = near;
        plan
    }

    /// Drop `owner`'s holdings over `r`, keeping the parts outside it.
    pub fn plan_unlock(&self, owner: OwnerId, r: Range, plan: Plan) -> Plan {
        let (s, e) = (r.start(), r.end());
        let (mut plan, mut near) = plan.reset(false);
        self.holders.owner_overlaps(owner, s, e, &mut near);
        for &slot in &near {
            let n = self.holders.get(slot);
            plan.remove.push(slot);
            plan.weaken(n.start.max(s), n.end.min(e));
            if n.start < s {
                plan.add.push((n.start, s - 1, n.excl));
            }
            if n.end > e {
                plan.add.push((e + 1, n.end, n.excl));
            }
        }
        plan.near = near;
        plan
    }

    /// `who` is the key of `owner`, kept beside its exclusive segments.
    pub fn apply(&mut self, owner: OwnerId, who: Who, plan: &Plan) {
        for &slot in &plan.remove {
            let n = self.holders.get(slot);
            if n.excl {
                self.excl.remove(n.start);
            }
            self.holders.remove(slot);
        }
        for &(s, e, x) in &plan.add {
            self.holders.insert(s, e, owner, x, ());
            if x {
                self.excl.insert(s, e, owner, who);
            }
        }
    }

    /// Calls `f` on every held segment overlapping `[s, e]` that passes
    /// `filter`, exclusive ones first, until `f` returns `false`; returns
    /// `false` if stopped early.
    pub fn visit_holders(
        &self,
        s: u64,
        e: u64,
        filter: Filter,
        f: &mut dyn FnMut(Seg) -> bool,
    ) -> bool {
        if filter != Filter::Shared && !self.excl.visit(s, e, &mut *f) {
            return false;
        }
        if filter == Filter::Excl {
            return true;
        }
        self.holders
            .visit_overlaps(s, e, Filter::Shared, &mut |slot| {
                let n = self.holders.get(slot);
                f(Seg {
                    start: n.start,
                    end: n.end,
                    owner: n.owner,
                    excl: n.excl,
                })
            })
    }

    /// A held segment of another owner that conflicts with `r` in mode
    /// `excl`. Own segments in the way are skipped: a lock is about to
    /// replace them, which pays for the visit.
    pub fn holder_conflict(&self, owner: OwnerId, r: Range, excl: bool) -> Option<Seg> {
        let (s, e) = (r.start(), r.end());
        if let Some(seg) = self.excl.other_than(owner, s, e) {
            return Some(seg);
        }
        if !excl {
            return None;
        }
        let mut found = None;
        self.visit_holders(s, e, Filter::Shared, &mut |seg| {
            if seg.owner != owner {
                found = Some(seg);
                return false;
            }
            true
        });
        found
    }

    /// A blocked request of another owner, older than `before_seq`, that
    /// conflicts with `r` in mode `excl`.
    pub fn waiter_conflict(
        &self,
        owner: OwnerId,
        r: Range,
        excl: bool,
        before_seq: u64,
    ) -> Option<u32> {
        let mut found = None;
        self.waiters
            .visit_overlaps(r.start(), r.end(), Filter::conflicting(excl), &mut |slot| {
                let n = self.waiters.get(slot);
                if n.owner != owner && n.payload.seq < before_seq {
                    found = Some(slot);
                    return false;
                }
                true
            });
        found
    }

    /// Leases of other owners standing in the way of `interest`, with what
    /// each must become.
    pub fn lease_conflicts(
        &self,
        owner: OwnerId,
        interest: Interest,
    ) -> Vec<(usize, Option<LeaseKind>)> {
        self.leases
            .iter()
            .enumerate()
            .filter(|(_, l)| l.owner != owner)
            .filter_map(|(i, l)| interest.break_target(l.kind).ok().map(|t| (i, t)))
            .collect()
    }

    pub fn lease_index(&self, owner: OwnerId) -> Option<usize> {
        self.leases.iter().position(|l| l.owner == owner)
    }

    pub fn share_index(&self, owner: OwnerId) -> Option<usize> {
        self.shares.iter().position(|(o, _)| *o == owner)
    }

    /// Does anything of another owner stand against a lease of `kind`
    /// (other than leases, which are broken rather than refused)?
    pub fn blocks_lease(&self, owner: OwnerId, kind: LeaseKind) -> bool {
        let write = kind == LeaseKind::Write;
        let other = |o: OwnerId| o != owner;
        let mut found = false;
        let mut check = |o: OwnerId| {
            found = other(o);
            !found
        };
        self.visit_holders(0, u64::MAX, Filter::conflicting(write), &mut |s| {
            check(s.owner)
        });
        if found {
            return true;
        }
        let mut check = |o: OwnerId| {
            found = other(o);
            !found
        };
        self.waiters
            .visit_overlaps(0, u64::MAX, Filter::conflicting(write), &mut |s| {
                check(self.waiters.get(s).owner)
            });
        if found {
            return true;
        }
        self.shares
            .iter()
            .any(|(o, s)| other(*o) && (write || Interest::of_share(*s) == Interest::Write))
    }
}
