//! Complete, synchronous deadlock detection.
//!
//! The wait-for graph has an edge from owner A to owner B when a blocked
//! request of A conflicts with a lock B holds, or with a blocked request of
//! B that arrived earlier. The graph is kept acyclic: a new blocked request
//! of A is refused if A is reachable from any of its blockers. Edges never
//! appear any other way: a grant can only go to a request that conflicts
//! with no earlier blocked request of another owner, so it creates no edge
//! out of anyone already waiting, and a granted request keeps the incoming
//! edges it had as a waiter. Hence no cycle ever forms, and every blocked
//! request is eventually granted.
//!
//! The search is a depth-first walk from the new request's blockers over
//! owners, enumerating the blockers of each blocked request it meets with
//! the interval trees: its cost is the edges it visits, with no hop limit
//! and no scan of unrelated state. An owner that holds nothing and waits for
//! nothing cannot be on a cycle, which ends most searches at once.

use std::collections::HashSet;

use crate::engine::Engine;
use crate::owner::FileId;
use crate::tree::Filter;
use crate::types::{OwnerId, Range};

impl Engine {
    pub(crate) fn would_deadlock(
        &mut self,
        fid: FileId,
        me: OwnerId,
        r: Range,
        excl: bool,
    ) -> bool {
        match self.owners.get(me) {
            Some(o) if o.segs > 0 || !o.waiters.is_empty() => {}
            _ => return false,
        }
        let mut seen = HashSet::new();
        let mut stack = Vec::new();
        let mut visits = 0u64;
        let mut found = self.blockers(fid, me, r, excl, u64::MAX, me, &mut seen, &mut stack);
        while !found {
            let Some(x) = stack.pop() else { break };
            visits += 1;
            let Some(o) = self.owners.get(x) else {
                continue;
            };
            for id in &o.waiters {
                let Some(&(wf, slot)) = self.waiters.get(id) else {
                    continue;
                };
                let n = self.file(wf).waiters.get(slot);
                let Some(wr) = Range::new(n.start, n.end) else {
                    continue;
                };
                if self.blockers(wf, x, wr, n.excl, n.payload.seq, me, &mut seen, &mut stack) {
                    found = true;
                    break;
                }
            }
        }
        self.stats.deadlock_visits += visits;
        found
    }

    /// Pushes the owners blocking a request of `who` (arrived at `seq`) that
    /// were not seen before; `true` as soon as `target` is among them.
    #[allow(clippy::too_many_arguments)]
    fn blockers(
        &self,
        fid: FileId,
        who: OwnerId,
        r: Range,
        excl: bool,
        seq: u64,
        target: OwnerId,
        seen: &mut HashSet<OwnerId>,
        stack: &mut Vec<OwnerId>,
    ) -> bool {
        let f = self.file(fid);
        // `false` stops the walk: the target was found.
        let mut edge = |o: OwnerId| {
            if o == who {
                return true;
            }
            if o == target {
                return false;
            }
            if seen.insert(o) {
                stack.push(o);
            }
            true
        };
        !f.visit_holders(r.start(), r.end(), Filter::conflicting(excl), &mut |s| {
            edge(s.owner)
        }) || !f
            .waiters
            .visit_overlaps(r.start(), r.end(), Filter::conflicting(excl), &mut |s| {
                let n = f.waiters.get(s);
                n.payload.seq >= seq || edge(n.owner)
            })
    }
}
