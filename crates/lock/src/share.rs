//! DOS share reservations (NLM SHARE / UNSHARE). They never block: a share
//! is granted or denied at once, and is independent of byte-range locks.
//! They do interact with leases: a share is a [`Interest`] like a lock.

use crate::engine::{reply, Engine};
use crate::events::{Reply, ShareAnswer};
use crate::file::Interest;
use crate::owner::FileId;
use crate::types::{Error, FileKey, Owner, OwnerId, Share};

impl Engine {
    /// NLM SHARE: sets (or replaces) `owner`'s reservation on `file`.
    /// Conflicting leases of others start breaking, and the share is denied
    /// until they are gone.
    pub fn share(
        &mut self,
        file: &FileKey,
        owner: &Owner,
        share: Share,
        reclaim: bool,
        now: u64,
    ) -> Result<Reply<ShareAnswer>, Error> {
        self.check_keys(file, owner)?;
        if self.grace && !reclaim {
            return Ok(reply(ShareAnswer::DeniedGrace, Vec::new()));
        }
        let fid = self.file_intern(file);
        let oid = self.owners.intern(owner);
        let mut events = Vec::new();
        let res = self.share_in(fid, oid, share, now, &mut events);
        self.gc(fid, oid);
        res.map(|a| reply(a, events))
    }

    fn share_in(
        &mut self,
        fid: FileId,
        oid: OwnerId,
        share: Share,
        now: u64,
        events: &mut Vec<crate::events::Event>,
    ) -> Result<ShareAnswer, Error> {
        let f = self.file(fid);
        let clash = f
            .shares
            .iter()
            .any(|(o, s)| *o != oid && s.conflicts(share));
        let interest = Interest::of_share(share);
        let leases = !f.lease_conflicts(oid, interest).is_empty();
        let mine = f.share_index(oid);
        if clash || leases {
            self.start_breaks(fid, oid, interest, now, events);
            return Ok(ShareAnswer::Denied);
        }
        match mine {
            Some(i) => self.file_mut(fid).shares[i].1 = share,
            None => {
                self.check_room(oid, 1)?;
                self.file_mut(fid).shares.push((oid, share));
                self.count(fid, oid, 1);
            }
        }
        Ok(ShareAnswer::Granted)
    }

    /// NLM UNSHARE. `false` if the owner had no share on the file.
    pub fn unshare(&mut self, file: &FileKey, owner: &Owner) -> Reply<bool> {
        let (Some(fid), Some(oid)) = (self.file_lookup(file), self.owners.lookup(owner)) else {
            return reply(false, Vec::new());
        };
        let had = self.drop_share(fid, oid);
        self.gc(fid, oid);
        reply(had, Vec::new())
    }

    pub(crate) fn drop_share(&mut self, fid: FileId, oid: OwnerId) -> bool {
        let f = self.file_mut(fid);
        match f.share_index(oid) {
            Some(i) => {
                f.shares.swap_remove(i);
                self.count(fid, oid, -1);
                true
            }
            None => false,
        }
    }
}
