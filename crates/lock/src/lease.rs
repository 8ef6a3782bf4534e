//! Leases (seed 003): a read lease lets its holder cache reads, a write
//! lease writes too. Read leases coexist; a write lease excludes everyone.
//!
//! Conflict rule, one for locks, shares and lease requests alike: each is
//! an [`Interest`]. A shared lock, a read lease, and a share that neither
//! writes nor denies reads are `Read` interests: they conflict with another
//! owner's *write* lease, which must break to a read lease. An exclusive
//! lock, a write lease, and a share that writes or denies reads are `Write`
//! interests: they conflict with *every* lease of another owner, which must
//! break to nothing.
//!
//! A conflict starts a break: one `LeaseBreak` event for the holder, and a
//! deadline `now + lease_break_time`. Until the holder releases or
//! downgrades, or [`Engine::expire_leases`] passes the deadline and revokes,
//! the newcomer is refused (shares, leases, non-blocking locks) or queued
//! (blocking locks). A lease request is refused outright, without breaking
//! anything but leases, when another owner's lock, blocked request or share
//! stands against it. Leases do not take part in deadlock detection: every
//! break ends by its deadline at the latest.

use crate::engine::{reply, Engine};
use crate::events::{Event, LeaseAnswer, Reply};
use crate::file::{Break, Interest, LeaseEntry};
use crate::owner::FileId;
use crate::types::{Error, FileKey, LeaseKind, Owner, OwnerId, Range};

impl Engine {
    /// Acquires, upgrades or downgrades `owner`'s lease on `file`.
    pub fn lease(
        &mut self,
        file: &FileKey,
        owner: &Owner,
        kind: LeaseKind,
        now: u64,
    ) -> Result<Reply<LeaseAnswer>, Error> {
        self.check_keys(file, owner)?;
        if self.grace {
            return Ok(reply(LeaseAnswer::DeniedGrace, Vec::new()));
        }
        let fid = self.file_intern(file);
        let oid = self.owners.intern(owner);
        let mut events = Vec::new();
        let res = self.lease_in(fid, oid, kind, now, &mut events);
        self.gc(fid, oid);
        res.map(|a| reply(a, events))
    }

    fn lease_in(
        &mut self,
        fid: FileId,
        oid: OwnerId,
        kind: LeaseKind,
        now: u64,
        events: &mut Vec<Event>,
    ) -> Result<LeaseAnswer, Error> {
        let f = self.file(fid);
        let mine = f.lease_index(oid);
        if let Some(i) = mine {
            let cur = &f.leases[i];
            if cur.kind == kind {
                return Ok(LeaseAnswer::Granted);
            }
            if kind == LeaseKind::Read {
                self.downgrade_lease(fid, i, events);
                return Ok(LeaseAnswer::Granted);
            }
            if cur.breaking.is_some() {
                // Being asked to give the lease up; no upgrade meanwhile.
                return Ok(LeaseAnswer::Denied);
            }
        }
        let interest = Interest::of_lease(kind);
        let blocked = f.blocks_lease(oid, kind);
        let leases = !f.lease_conflicts(oid, interest).is_empty();
        if blocked || leases {
            self.start_breaks(fid, oid, interest, now, events);
            return Ok(LeaseAnswer::Denied);
        }
        match mine {
            Some(i) => self.file_mut(fid).leases[i].kind = kind,
            None => {
                self.check_room(oid, 1)?;
                self.file_mut(fid).leases.push(LeaseEntry {
                    owner: oid,
                    kind,
                    breaking: None,
                });
                self.count(fid, oid, 1);
            }
        }
        Ok(LeaseAnswer::Granted)
    }

    /// Gives a lease up. `false` if the owner had none on the file.
    pub fn unlease(&mut self, file: &FileKey, owner: &Owner) -> Reply<bool> {
        let mut events = Vec::new();
        let (Some(fid), Some(oid)) = (self.file_lookup(file), self.owners.lookup(owner)) else {
            return reply(false, events);
        };
        let had = self.drop_lease(fid, oid, &mut events);
        self.gc(fid, oid);
        reply(had, events)
    }

    /// Revokes every lease whose break deadline is `<= now`, down to what
    /// its break asked for, and grants what that unblocks.
    pub fn expire_leases(&mut self, now: u64) -> Reply<()> {
        let mut events = Vec::new();
        while let Some(&(deadline, fid, oid)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.remove(&(deadline, fid, oid));
            let f = self.file_mut(fid);
            let Some(i) = f.lease_index(oid) else {
                continue;
            };
            let to = f.leases[i].breaking.and_then(|b| b.to);
            match to {
                Some(k) => {
                    f.leases[i].kind = k;
                    f.leases[i].breaking = None;
                }
                None => {
                    f.leases.swap_remove(i);
                    self.count(fid, oid, -1);
                }
            }
            events.push(Event::LeaseRevoked {
                file: self.file(fid).key.clone(),
                holder: self.owners.key(oid),
                to,
            });
            self.wake(fid, vec![Range::ALL], &mut events);
            self.gc(fid, oid);
        }
        reply((), events)
    }

    /// When the caller should next call [`Engine::expire_leases`].
    pub fn next_lease_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|d| d.0)
    }

    fn downgrade_lease(&mut self, fid: FileId, i: usize, events: &mut Vec<Event>) {
        let f = self.file_mut(fid);
        let l = &mut f.leases[i];
        l.kind = LeaseKind::Read;
        let owner = l.owner;
        if let Some(b) = l.breaking {
            if b.to == Some(LeaseKind::Read) {
                l.breaking = None;
                self.deadlines.remove(&(b.deadline, fid, owner));
            }
        }
        self.wake(fid, vec![Range::ALL], events);
    }

    pub(crate) fn drop_lease(
        &mut self,
        fid: FileId,
        oid: OwnerId,
        events: &mut Vec<Event>,
    ) -> bool {
        let had = self.remove_lease(fid, oid);
        if had {
            self.wake(fid, vec![Range::ALL], events);
        }
        had
    }

    /// Unlinks a lease without waking anyone.
    pub(crate) fn remove_lease(&mut self, fid: FileId, oid: OwnerId) -> bool {
        let f = self.file_mut(fid);
        let Some(i) = f.lease_index(oid) else {
            return false;
        };
        let l = f.leases.swap_remove(i);
        if let Some(b) = l.breaking {
            self.deadlines.remove(&(b.deadline, fid, oid));
        }
        self.count(fid, oid, -1);
        true
    }

    /// Starts (or strengthens) the break of every lease of another owner
    /// that stands against `interest`. Each break is announced once.
    pub(crate) fn start_breaks(
        &mut self,
        fid: FileId,
        oid: OwnerId,
        interest: Interest,
        now: u64,
        events: &mut Vec<Event>,
    ) {
        let conflicts = self.file(fid).lease_conflicts(oid, interest);
        let deadline = now.saturating_add(self.limits.lease_break_time);
        for (i, to) in conflicts {
            let l = &mut self.file_mut(fid).leases[i];
            let holder = l.owner;
            let announce = match &mut l.breaking {
                None => {
                    l.breaking = Some(Break { deadline, to });
                    self.deadlines.insert((deadline, fid, holder));
                    true
                }
                Some(b) if b.to.is_some() && to.is_none() => {
                    b.to = None;
                    true
                }
                Some(_) => false,
            };
            if announce {
                events.push(Event::LeaseBreak {
                    file: self.file(fid).key.clone(),
                    holder: self.owners.key(holder),
                    to,
                });
            }
        }
    }
}
