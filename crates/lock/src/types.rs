//! The vocabulary of the engine: keys, owners, ranges, modes, limits, errors.

use std::fmt;

/// A client host, as chosen by the caller (the NLM layer maps caller name
/// and address to one of these). Hosts are first-class so that a reboot
/// notification can drop everything a host held in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub u64);

/// The bytes of a handle: up to `N` in place, longer ones on the heap.
/// Naming a file or an owner, which every LOCK, UNLOCK and TEST does,
/// then costs no allocation for the handles clients really send (NFSv3
/// file handles of 20 to 40 bytes, owner handles of a few to 20). Compared,
/// ordered and hashed as the bytes, whatever the storage.
#[derive(Clone)]
pub struct HandleBytes<const N: usize>(Repr<N>);

#[derive(Clone)]
enum Repr<const N: usize> {
    Inline { len: u8, buf: [u8; N] },
    Heap(Box<[u8]>),
}

impl<const N: usize> HandleBytes<N> {
    pub fn new(bytes: &[u8]) -> Self {
        let mut buf = [0; N];
        match buf.get_mut(..bytes.len()) {
            // N stays below 256, so the length fits in a byte.
            Some(dst) if N < 256 => {
                dst.copy_from_slice(bytes);
                HandleBytes(Repr::Inline {
                    len: bytes.len() as u8,
                    buf,
                })
            }
            _ => HandleBytes(Repr::Heap(bytes.into())),
        }
    }
}

impl<const N: usize> std::ops::Deref for HandleBytes<N> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => buf.get(..usize::from(*len)).unwrap_or(&[]),
            Repr::Heap(b) => b,
        }
    }
}

impl<const N: usize> From<&[u8]> for HandleBytes<N> {
    fn from(b: &[u8]) -> Self {
        HandleBytes::new(b)
    }
}

impl<const N: usize, const M: usize> From<&[u8; M]> for HandleBytes<N> {
    fn from(b: &[u8; M]) -> Self {
        HandleBytes::new(b)
    }
}

impl<const N: usize> From<Vec<u8>> for HandleBytes<N> {
    fn from(b: Vec<u8>) -> Self {
        HandleBytes::new(&b)
    }
}

impl<const N: usize> PartialEq for HandleBytes<N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<const N: usize> Eq for HandleBytes<N> {}

impl<const N: usize> PartialOrd for HandleBytes<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for HandleBytes<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl<const N: usize> std::hash::Hash for HandleBytes<N> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl<const N: usize> fmt::Debug for HandleBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// Owner handles up to this long are kept in place.
pub const OWNER_HANDLE_INLINE: usize = 30;
/// File handles up to this long are kept in place.
pub const FILE_HANDLE_INLINE: usize = 46;

/// A lock owner: the NLM `(caller, svid, oh)` triple, with the caller
/// already mapped to a [`HostId`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub host: HostId,
    pub svid: u32,
    pub handle: HandleBytes<OWNER_HANDLE_INLINE>,
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
pub struct FileKey(pub HandleBytes<FILE_HANDLE_INLINE>);

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    fn hash<T: Hash + ?Sized>(x: &T) -> u64 {
        let mut h = DefaultHasher::new();
        x.hash(&mut h);
        h.finish()
    }

    #[test]
    fn handle_bytes_behave_as_their_bytes_in_place_or_on_the_heap() {
        // Lengths on both sides of the inline limit, and empty.
        let lens = [
            0,
            1,
            7,
            FILE_HANDLE_INLINE - 1,
            FILE_HANDLE_INLINE,
            FILE_HANDLE_INLINE + 1,
            200,
        ];
        let all: Vec<Vec<u8>> = lens
            .iter()
            .flat_map(|&n| [vec![7u8; n], (0..n).map(|i| i as u8).collect()])
            .collect();
        for a in &all {
            let ka = FileKey::new(a);
            assert_eq!(&*ka.0, &a[..]);
            assert_eq!(hash(&ka.0), hash(&a[..]));
            for b in &all {
                let kb = FileKey::new(b);
                assert_eq!(ka == kb, a == b);
                assert_eq!(ka.cmp(&kb), a.cmp(b));
            }
        }
        let long = vec![1u8; OWNER_HANDLE_INLINE + 5];
        let o = Owner::new(HostId(1), 2, &long);
        assert_eq!(&*o.handle, &long[..]);
        assert_eq!(o.clone(), o);
    }
}
