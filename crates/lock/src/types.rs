//! The vocabulary of the engine: keys, owners, ranges, modes, limits, errors.

use std::fmt;

/// A client host, as chosen by the caller (the NLM layer maps caller name
/// and address to one of these). Hosts are first-class so that a reboot
/// notification can drop everything a host held in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub u64);

/// A lock owner: the NLM `(caller, svid, oh)` triple, with the caller
/// already mapped to a [`HostId`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub host: HostId,
    pub svid: u32,
    pub handle: Box<[u8]>,
}

impl Owner {
    pub fn new(host: HostId, svid: u32, handle: &[u8]) -> Self {
        Owner {
            host,
            svid,
            handle: handle.into(),
        }
    }
}

/// The engine's interned name for an [`Owner`]; valid only while the owner
/// holds something in the engine (ids are reused afterwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub(crate) u32);

/// A file, as the opaque bytes of its NFS file handle.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey(pub Box<[u8]>);

impl FileKey {
    pub fn new(bytes: &[u8]) -> Self {
        FileKey(bytes.into())
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileKey(")?;
        for b in self.0.iter() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// Names a blocked request in grant events and in [`crate::Engine::cancel`].
/// Ids below [`RequestId::ENGINE_BASE`] belong to the caller; the engine
/// assigns ids at or above it when the caller gives none, so the two never
/// collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl RequestId {
    pub const ENGINE_BASE: u64 = 1 << 63;
}

/// Shared (read) or exclusive (write) byte-range lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Shared,
    Exclusive,
}

impl Mode {
    pub fn conflicts(self, other: Mode) -> bool {
        self == Mode::Exclusive || other == Mode::Exclusive
    }
}

/// An inclusive byte range `[start, end]`; `start <= end` always holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Range {
    start: u64,
    end: u64,
}

impl Range {
    /// The whole file.
    pub const ALL: Range = Range {
        start: 0,
        end: u64::MAX,
    };

    /// `None` when `end < start`.
    pub fn new(start: u64, end: u64) -> Option<Range> {
        (start <= end).then_some(Range { start, end })
    }

    /// The NLM/POSIX encoding: `len == 0` means "to the end of the file",
    /// and a range running past `u64::MAX` is clipped to it rather than
    /// refused, as the kernel clients expect of a 64-bit server.
    pub fn from_offset_len(offset: u64, len: u64) -> Range {
        let end = if len == 0 {
            u64::MAX
        } else {
            offset.saturating_add(len - 1)
        };
        Range { start: offset, end }
    }

    pub fn start(self) -> u64 {
        self.start
    }

    pub fn end(self) -> u64 {
        self.end
    }

    /// The NLM length of this range (0 for "to the end").
    pub fn len(self) -> u64 {
        if self.end == u64::MAX {
            0
        } else {
            self.end - self.start + 1
        }
    }

    pub fn is_empty(self) -> bool {
        false
    }

    pub fn overlaps(self, other: Range) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    pub fn contains(self, other: Range) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

/// DOS share access or deny bits (NLM `fsh_access` / `fsh_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ShareBits(u8);

impl ShareBits {
    pub const NONE: ShareBits = ShareBits(0);
    pub const READ: ShareBits = ShareBits(1);
    pub const WRITE: ShareBits = ShareBits(2);
    pub const READ_WRITE: ShareBits = ShareBits(3);

    /// From the NLM wire value (0..=3); `None` for anything else.
    pub fn from_wire(v: u32) -> Option<ShareBits> {
        (v <= 3).then_some(ShareBits(v as u8))
    }

    pub fn wire(self) -> u32 {
        u32::from(self.0)
    }

    pub fn intersects(self, other: ShareBits) -> bool {
        self.0 & other.0 != 0
    }

    pub fn has_read(self) -> bool {
        self.0 & 1 != 0
    }

    pub fn has_write(self) -> bool {
        self.0 & 2 != 0
    }
}

/// A share reservation: what its owner does to the file and what it
/// forbids others to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Share {
    pub access: ShareBits,
    pub deny: ShareBits,
}

impl Share {
    /// The NLM rule: two shares of different owners conflict when either's
    /// access meets the other's deny.
    pub fn conflicts(self, other: Share) -> bool {
        self.access.intersects(other.deny) || other.access.intersects(self.deny)
    }
}

/// A read lease lets its holder cache reads; a write lease, writes too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeaseKind {
    Read,
    Write,
}

/// Bounds on everything the engine stores. Past any of them an operation
/// answers [`Error::NoLocks`] and leaves the state untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Blocked requests queued on one file.
    pub waiters_per_file: usize,
    /// Entries (held lock segments, blocked requests, shares, leases) of
    /// all owners of one host.
    pub entries_per_host: usize,
    /// Entries of everyone.
    pub entries_total: usize,
    /// Longest owner handle accepted, in bytes.
    pub owner_handle_len_max: usize,
    /// Longest file key accepted, in bytes.
    pub file_key_len_max: usize,
    /// Time between the start of a lease break and the revocation of the
    /// lease, in the caller's `now` units.
    pub lease_break_time: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            waiters_per_file: 1024,
            entries_per_host: 1 << 16,
            entries_total: 1 << 22,
            // NLM4 limits both to 1024 bytes on the wire (LM_MAXSTRLEN and
            // the netobj bound); real handles are far shorter.
            owner_handle_len_max: 1024,
            file_key_len_max: 128,
            lease_break_time: 45_000,
        }
    }
}

/// Which bound an operation ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    WaitersPerFile,
    EntriesPerHost,
    EntriesTotal,
    OwnerHandleLen,
    FileKeyLen,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The NLM `denied_nolocks` answer: a bound was reached.
    #[error("no locks available: {0:?} bound reached")]
    NoLocks(Bound),
    /// A caller-chosen request id is already in use by a blocked request,
    /// or lies in the engine's range.
    #[error("request id {0:?} unusable")]
    BadRequestId(RequestId),
}
