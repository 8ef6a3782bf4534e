//! Interned owners and their hosts, with the per-owner bookkeeping that makes
//! "release everything of this owner / host" and the deadlock search cost
//! what they touch rather than a scan of every file.

use std::collections::{HashMap, VecDeque};

use crate::idhash::{IdMap, IdSet};

use crate::types::{HostId, Owner, OwnerId, RequestId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FileId(pub u32);

pub(crate) struct OwnerEntry {
    pub key: Owner,
    /// What this owner has on each file; a file leaves the map when its
    /// entries drop to zero, and the owner is forgotten when the map empties.
    pub files: IdMap<FileId, OnFile>,
    /// Held lock segments, over all files: an owner with none and no
    /// blocked request can be waited on by no one, which short-cuts the
    /// deadlock search.
    pub segs: usize,
    /// Blocked requests, in arrival order (few per owner: one per blocked
    /// client thread).
    pub waiters: Vec<RequestId>,
    /// In the queue of idle owners (it held nothing at some point since).
    idle: bool,
}

/// What one owner has on one file.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OnFile {
    /// Held segments, blocked requests, share and lease.
    pub entries: u32,
    /// Held segments alone.
    pub segs: u32,
    /// The caller's time (see [`crate::Engine::set_clock`]) when `segs`
    /// last went up from zero.
    pub since: u64,
}

fn add(v: u32, delta: isize) -> u32 {
    u32::try_from((i64::from(v) + delta as i64).max(0)).unwrap_or(u32::MAX)
}

impl OwnerEntry {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.waiters.is_empty() && self.segs == 0
    }
}

/// How many owners that hold nothing stay interned for reuse: a client that
/// locks and unlocks over and over then costs no allocation and no map
/// update per lock for its owner.
const IDLE_OWNERS_MAX: usize = 256;

#[derive(Default)]
pub(crate) struct HostEntry {
    pub owners: IdSet<OwnerId>,
    pub entries: usize,
}

/// An owner's key in 32 bytes, the handle inline when it is short (as
/// Linux and BSD clients' are). Conflict answers name the holder; with the
/// key here beside what they found, that costs no lookup of the owner.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Who {
    host: u64,
    svid: u32,
    /// Handle length, or [`LONG`] when the handle is only in the slab.
    len: u8,
    handle: [u8; INLINE],
}

const INLINE: usize = 19;
const LONG: u8 = u8::MAX;

impl Default for Who {
    fn default() -> Self {
        Who::GONE
    }
}

impl Who {
    const GONE: Who = Who {
        host: 0,
        svid: 0,
        len: LONG,
        handle: [0; INLINE],
    };

    fn of(o: &Owner) -> Who {
        let mut k = Who {
            host: o.host.0,
            svid: o.svid,
            len: LONG,
            handle: [0; INLINE],
        };
        if let Some(dst) = k.handle.get_mut(..o.handle.len()) {
            dst.copy_from_slice(&o.handle);
            k.len = o.handle.len() as u8;
        }
        k
    }

    fn inline(&self) -> Option<&[u8]> {
        self.handle.get(..usize::from(self.len))
    }

    /// The owner's key, unless its handle is too long to be inline.
    pub fn owner(&self) -> Option<Owner> {
        let h = self.inline()?;
        Some(Owner {
            host: HostId(self.host),
            svid: self.svid,
            handle: h.into(),
        })
    }

    /// Whether this is `o`; `None` if the handle is not inline (then only
    /// the owner table can tell).
    pub fn is(&self, o: &Owner) -> Option<bool> {
        let h = self.inline()?;
        Some(self.host == o.host.0 && self.svid == o.svid && *h == *o.handle)
    }
}

/// A [`Who`] in one aligned half cache line, for the owner table.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct ShortKey(Who);

#[derive(Default)]
pub(crate) struct Owners {
    map: HashMap<Owner, OwnerId, latch_hash::KeyedState>,
    slab: Vec<Option<OwnerEntry>>,
    /// `short[i]` is the key of `slab[i]`.
    short: Vec<ShortKey>,
    free: Vec<u32>,
    pub hosts: IdMap<HostId, HostEntry>,
    /// Owners that became empty, oldest first, at most [`IDLE_OWNERS_MAX`]
    /// (some may hold something again since).
    idle: VecDeque<OwnerId>,
}

impl Owners {
    pub fn lookup(&self, owner: &Owner) -> Option<OwnerId> {
        self.map.get(owner).copied()
    }

    pub fn intern(&mut self, owner: &Owner) -> OwnerId {
        if let Some(id) = self.map.get(owner) {
            return *id;
        }
        let entry = OwnerEntry {
            key: owner.clone(),
            files: IdMap::default(),
            segs: 0,
            waiters: Vec::new(),
            idle: false,
        };
        let short = ShortKey(Who::of(owner));
        let id = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(entry);
                self.short[i as usize] = short;
                OwnerId(i)
            }
            None => {
                self.slab.push(Some(entry));
                self.short.push(short);
                OwnerId((self.slab.len() - 1) as u32)
            }
        };
        self.map.insert(owner.clone(), id);
        self.hosts.entry(owner.host).or_default().owners.insert(id);
        id
    }

    pub fn get(&self, id: OwnerId) -> Option<&OwnerEntry> {
        self.slab.get(id.0 as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, id: OwnerId) -> Option<&mut OwnerEntry> {
        self.slab.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    /// The owner's key; owners referenced from the lock tables always exist.
    pub fn key(&self, id: OwnerId) -> Owner {
        if let Some(o) = self.who(id).owner() {
            return o;
        }
        match self.get(id) {
            Some(e) => e.key.clone(),
            None => Owner::new(HostId(u64::MAX), u32::MAX, b"<gone>"),
        }
    }

    /// Whether the owner holds a lock segment on any file: one that holds
    /// none needs no search of a file for its own segments.
    pub fn holds_any(&self, id: OwnerId) -> bool {
        self.get(id).is_some_and(|e| e.segs > 0)
    }

    /// The owner's compact key, to keep beside its segments.
    pub fn who(&self, id: OwnerId) -> Who {
        self.short.get(id.0 as usize).map_or(Who::GONE, |k| k.0)
    }

    pub fn host_of(&self, id: OwnerId) -> Option<HostId> {
        self.get(id).map(|e| e.key.host)
    }

    pub fn host_entries(&self, host: HostId) -> usize {
        self.hosts.get(&host).map_or(0, |h| h.entries)
    }

    /// Adjusts the entry counts of `id` on `file` and of its host.
    pub fn count(&mut self, id: OwnerId, file: FileId, delta: isize) {
        self.count_as(id, file, delta, None);
    }

    /// As [`Owners::count`] for held segments, which also count in the
    /// owner's `segs` and in the file's; `now` stamps a first one.
    pub fn count_segs(&mut self, id: OwnerId, file: FileId, delta: isize, now: u64) {
        self.count_as(id, file, delta, Some(now));
    }

    fn count_as(&mut self, id: OwnerId, file: FileId, delta: isize, segs: Option<u64>) {
        let Some(e) = self.slab.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let host = e.key.host;
        let c = e.files.entry(file).or_default();
        c.entries = add(c.entries, delta);
        if let Some(now) = segs {
            if c.segs == 0 && delta > 0 {
                c.since = now;
            }
            c.segs = add(c.segs, delta);
            e.segs = e.segs.saturating_add_signed(delta);
        }
        if c.entries == 0 {
            e.files.remove(&file);
        }
        if let Some(h) = self.hosts.get_mut(&host) {
            h.entries = h.entries.saturating_add_signed(delta);
        }
    }

    /// Forgets owners that no longer hold anything, so ids and memory are
    /// bounded by the entries (plus a few idle ones kept for reuse), not by
    /// every owner ever seen.
    pub fn gc(&mut self, id: OwnerId) {
        let Some(e) = self.get_mut(id) else {
            return;
        };
        if !e.is_empty() || e.idle {
            return;
        }
        e.idle = true;
        self.idle.push_back(id);
        while self.idle.len() > IDLE_OWNERS_MAX {
            let Some(old) = self.idle.pop_front() else {
                break;
            };
            if let Some(e) = self.get_mut(old) {
                e.idle = false;
                if e.is_empty() {
                    self.forget(old);
                }
            }
        }
    }

    fn forget(&mut self, id: OwnerId) {
        if let Some(e) = self.slab[id.0 as usize].take() {
            self.short[id.0 as usize] = ShortKey(Who::GONE);
            self.map.remove(&e.key);
            if let Some(h) = self.hosts.get_mut(&e.key.host) {
                h.owners.remove(&id);
                if h.owners.is_empty() {
                    self.hosts.remove(&e.key.host);
                }
            }
            self.free.push(id.0);
        }
    }

    /// Owners holding something (idle ones kept for reuse do not count).
    pub fn len(&self) -> usize {
        self.slab.iter().flatten().filter(|e| !e.is_empty()).count()
    }
}
