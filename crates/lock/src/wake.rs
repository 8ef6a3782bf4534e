//! Granting blocked requests after something lets go.
//!
//! Only requests overlapping the bytes that were weakened can have been
//! waiting on them, so those are the only candidates; they are considered
//! in arrival order and granted exactly when nothing held, nothing earlier
//! and no lease stands in their way. No one is woken to find the lock taken
//! again: a candidate that cannot proceed is left alone, with no event.

use std::collections::BTreeMap;

use crate::engine::Engine;
use crate::events::Event;
use crate::file::Interest;
use crate::owner::FileId;
use crate::tree::Filter;
use crate::types::{Mode, Range};

impl Engine {
    pub(crate) fn wake(&mut self, fid: FileId, work: Vec<Range>, events: &mut Vec<Event>) {
        // Candidates by arrival order. Always taking the oldest keeps grants
        // strictly FCFS even among one owner's own requests (whose order
        // decides which mode wins where they overlap), and even when a
        // grant that downgrades its owner's bytes unblocks an older one.
        let mut queue: BTreeMap<u64, u32> = BTreeMap::new();
        for r in work {
            self.enqueue_overlapping(fid, r, &mut queue);
        }
        while let Some((_, slot)) = queue.pop_first() {
            // Nothing is queued during a wake, so a freed slot is never
            // reused and every slot in the queue still names its request.
            if self.grantable(fid, slot) {
                if let Some(w) = self.grant(fid, slot, events) {
                    self.enqueue_overlapping(fid, w, &mut queue);
                }
            }
        }
    }

    fn enqueue_overlapping(&self, fid: FileId, r: Range, queue: &mut BTreeMap<u64, u32>) {
        let f = self.file(fid);
        f.waiters
            .visit_overlaps(r.start(), r.end(), Filter::All, &mut |slot| {
                queue.insert(f.waiters.get(slot).payload.seq, slot);
                true
            });
    }

    pub(crate) fn grantable(&self, fid: FileId, slot: u32) -> bool {
        let f = self.file(fid);
        let n = f.waiters.get(slot);
        let Some(r) = Range::new(n.start, n.end) else {
            return false;
        };
        let interest = if n.excl {
            Interest::Write
        } else {
            Interest::Read
        };
        f.holder_conflict(n.owner, r, n.excl).is_none()
            && f.waiter_conflict(n.owner, r, n.excl, n.payload.seq)
                .is_none()
            && f.lease_conflicts(n.owner, interest).is_empty()
    }

    /// Turns a blocked request into a held lock. Returns the bytes the
    /// grant weakened, if any.
    fn grant(&mut self, fid: FileId, slot: u32, events: &mut Vec<Event>) -> Option<Range> {
        let n = self.file(fid).waiters.get(slot);
        let (oid, excl, id) = (n.owner, n.excl, n.payload.id);
        let r = self.remove_waiter(fid, slot);
        let buf = self.plan();
        let held = self.owners.holds_any(oid);
        let plan = self.file(fid).plan_lock(oid, r, excl, held, buf);
        let who = self.owners.who(oid);
        self.file_mut(fid).apply(oid, who, &plan);
        self.count_segs(fid, oid, plan.delta());
        events.push(Event::Granted {
            id,
            file: self.file(fid).key.clone(),
            owner: self.owners.key(oid),
            range: r,
            mode: if excl { Mode::Exclusive } else { Mode::Shared },
        });
        let weakened = plan.weakened;
        self.recycle(plan);
        weakened
    }
}
