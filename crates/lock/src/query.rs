//! Read-only questions for an operator's tools (listing shares, telling
//! whether an owner still holds part of a file). Nothing here changes state.

use crate::engine::Engine;
use crate::types::{FileKey, Owner, Share};

impl Engine {
    /// Held lock segments of `owner` on `file` (its blocked requests,
    /// share and lease not counted). O(the owner's blocked requests).
    pub fn held_segments(&self, file: &FileKey, owner: &Owner) -> usize {
        let (Some(fid), Some(oid)) = (self.file_lookup(file), self.owners.lookup(owner)) else {
            return 0;
        };
        let Some(o) = self.owners.get(oid) else {
            return 0;
        };
        let all = o.files.get(&fid).map_or(0, |f| f.entries) as usize;
        let waiting = o
            .waiters
            .iter()
            .filter(|id| self.waiters.get(id).is_some_and(|&(f, _)| f == fid))
            .count();
        let f = self.file(fid);
        let other =
            usize::from(f.share_index(oid).is_some()) + usize::from(f.lease_index(oid).is_some());
        all.saturating_sub(waiting + other)
    }

    /// The share reservations on a file, for listing.
    pub fn shares_on(&self, file: &FileKey) -> Vec<(Owner, Share)> {
        let Some(fid) = self.file_lookup(file) else {
            return Vec::new();
        };
        self.file(fid)
            .shares
            .iter()
            .map(|(oid, s)| (self.owners.key(*oid), *s))
            .collect()
    }

    /// Blocked requests in total (O(1)).
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

impl Engine {
    /// Whether the blocked request `id` is still waiting.
    pub fn is_waiting(&self, id: crate::types::RequestId) -> bool {
        self.waiters.contains_key(&id)
    }
}
