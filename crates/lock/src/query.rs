//! Read-only questions for an operator's tools (listing shares, counting
//! blocked requests; how long an owner has held a file is
//! [`Engine::held_since`]). Nothing here changes state.

use crate::engine::Engine;
use crate::types::{FileKey, Owner, Share};

impl Engine {
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
