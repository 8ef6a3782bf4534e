//! The duplicate request cache: execute-at-most-once for procedures that are
//! not idempotent (LOCK, UNLOCK, CANCEL, SHARE...). A retransmission that
//! arrives while the original is still executing is dropped (the client will
//! retransmit again); one that arrives after it gets the cached reply, byte
//! for byte, even if the state has changed since.

use crate::msg::Xid;
use std::collections::hash_map::{Entry as Slot, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

/// Identifies one request. The checksum of the arguments keeps a client that
/// reuses an xid for a different request (after a reboot, say) from being
/// answered with the old reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrcKey {
    pub peer: SocketAddr,
    pub xid: Xid,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub args_sum: u64,
}

impl DrcKey {
    pub fn new(peer: SocketAddr, xid: Xid, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Self {
        DrcKey {
            peer,
            xid,
            prog,
            vers,
            proc_,
            args_sum: args_sum(args),
        }
    }
}

/// Hashed as five words rather than field by field: every call looks the
/// cache up, and the hasher pays per write. Equal keys hash equally: the
/// words are functions of the compared fields.
impl std::hash::Hash for DrcKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let ip = match self.peer.ip() {
            std::net::IpAddr::V4(a) => u128::from(a.to_bits()),
            std::net::IpAddr::V6(a) => a.to_bits(),
        };
        h.write_u128(ip);
        h.write_u64(u64::from(self.peer.port()) << 32 | u64::from(self.xid.0));
        h.write_u64(u64::from(self.prog) << 32 | u64::from(self.vers));
        h.write_u64(u64::from(self.proc_) ^ self.args_sum);
    }
}

/// A checksum of the arguments, eight bytes at a time (a multiply and a
/// rotate per word, as FxHash does): every cached call pays it, and it only
/// has to tell different arguments under the same (peer, xid) apart.
fn args_sum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = mix(h, u64::from_le_bytes(a));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut a = [0u8; 8];
        a[..rest.len()].copy_from_slice(rest);
        h = mix(h, u64::from_le_bytes(a));
    }
    h
}

/// The cache's hasher: a folded 128-bit multiply per word under two keys
/// drawn at random once per cache (as foldhash does), a fraction of
/// SipHash's cost. The network picks the keys hashed, but without the
/// hasher's keys nobody can aim them at one bucket; and the cache is
/// bounded, so even colliding keys would cost a scan of at most
/// `max_entries` entries, not an unbounded one.
#[derive(Clone, Copy, Debug)]
struct Keyed {
    seed: u64,
    mul: u64,
}

impl Keyed {
    fn new() -> Keyed {
        let r = RandomState::new();
        Keyed {
            seed: r.hash_one(0x243f_6a88_85a3_08d3u64),
            // Odd, so the multiply loses no bits of the word.
            mul: r.hash_one(0x1319_8a2e_0370_7344u64) | 1,
        }
    }
}

impl BuildHasher for Keyed {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            h: self.seed,
            mul: self.mul,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct KeyedHasher {
    h: u64,
    mul: u64,
}

fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.write_u64(args_sum(bytes));
    }
    fn write_u64(&mut self, w: u64) {
        self.h = fold(self.h ^ w, self.mul).wrapping_add(w);
    }
    fn write_u128(&mut self, w: u128) {
        self.write_u64(w as u64);
        self.write_u64((w >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        fold(self.h, self.mul ^ self.h.rotate_left(32))
    }
}

#[derive(Debug)]
enum Entry {
    InProgress,
    /// `None`: the procedure sends no reply (the `_MSG` procedures); a
    /// retransmission must still not run it again.
    Done(Option<Reply>),
}

/// A cached reply. NLM answers (forty-odd bytes) are kept in place: caching
/// one and evicting it later then costs no allocation, and no trip to a
/// long-cold heap block when it is freed.
#[derive(Debug)]
enum Reply {
    Inline { len: u8, buf: [u8; REPLY_INLINE] },
    Heap(Box<[u8]>),
}

const REPLY_INLINE: usize = 54;

impl Reply {
    fn new(b: &[u8]) -> Reply {
        let mut buf = [0; REPLY_INLINE];
        match buf.get_mut(..b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                Reply::Inline {
                    len: b.len() as u8,
                    buf,
                }
            }
            None => Reply::Heap(b.into()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Reply::Inline { len, buf } => buf.get(..usize::from(*len)).unwrap_or(&[]),
            Reply::Heap(b) => b,
        }
    }
}

/// What to do with an incoming request.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// First sighting: run it, then call [`Drc::finish`].
    New,
    /// Still running: drop the retransmission.
    InProgress,
    /// Already answered: send this again (`None`: there was no reply).
    Replay(Option<Vec<u8>>),
}

/// Counters for the metrics page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrcStats {
    pub hits: u64,
    pub in_progress_drops: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// A bounded cache: at most `max_entries` entries and `max_bytes` of cached
/// replies; the oldest entry goes first.
#[derive(Debug)]
pub struct Drc {
    entries: HashMap<DrcKey, Entry, Keyed>,
    order: VecDeque<DrcKey>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    pub stats: DrcStats,
}

impl Drc {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Drc {
            entries: HashMap::with_hasher(Keyed::new()),
            order: VecDeque::new(),
            bytes: 0,
            max_entries: max_entries.max(1),
            max_bytes,
            stats: DrcStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks a request up; a new one is recorded as in progress.
    pub fn begin(&mut self, key: DrcKey) -> Lookup {
        // One hash for the lookup and the insert; the oldest entry goes
        // after (the new one is the youngest, so it is not the one).
        match self.entries.entry(key) {
            Slot::Occupied(o) => match o.get() {
                Entry::InProgress => {
                    self.stats.in_progress_drops += 1;
                    Lookup::InProgress
                }
                Entry::Done(reply) => {
                    self.stats.hits += 1;
                    Lookup::Replay(reply.as_ref().map(|r| r.as_slice().to_vec()))
                }
            },
            Slot::Vacant(v) => {
                self.stats.misses += 1;
                v.insert(Entry::InProgress);
                self.order.push_back(key);
                self.make_room(0, 0);
                Lookup::New
            }
        }
    }

    /// Records the reply of a request begun with [`Drc::begin`]. If the entry
    /// was evicted meanwhile the reply is simply not cached.
    pub fn finish(&mut self, key: DrcKey, reply: Option<&[u8]>) {
        let size = reply.map_or(0, <[u8]>::len);
        if size > self.max_bytes {
            self.remove(&key);
            return;
        }
        // The entry is already counted: make room for the bytes only.
        self.make_room(0, size);
        if let Some(e) = self.entries.get_mut(&key) {
            *e = Entry::Done(reply.map(Reply::new));
            self.bytes += size;
        }
    }

    /// Forgets a request that failed in a way a retry may fix.
    pub fn abandon(&mut self, key: &DrcKey) {
        self.remove(key);
    }

    /// Whether `key` was there.
    fn remove(&mut self, key: &DrcKey) -> bool {
        match self.entries.remove(key) {
            Some(Entry::Done(Some(r))) => {
                self.bytes -= r.as_slice().len();
                true
            }
            Some(_) => true,
            // The key stays in `order` and is skipped when it reaches the front.
            None => false,
        }
    }

    /// Evicts the oldest entries until `entries` more entries and `bytes`
    /// more bytes fit.
    fn make_room(&mut self, entries: usize, bytes: usize) {
        while self.entries.len() + entries > self.max_entries
            || (self.bytes + bytes > self.max_bytes && !self.entries.is_empty())
            || self.order.len() > 2 * self.max_entries
        {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.remove(&old) {
                self.stats.evictions += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(xid: u32, args: &[u8]) -> DrcKey {
        DrcKey::new(
            "127.0.0.1:700".parse().unwrap(),
            Xid(xid),
            100021,
            4,
            2,
            args,
        )
    }

    #[test]
    fn replay_in_progress_and_done() {
        let mut c = Drc::new(8, 1024);
        assert_eq!(c.begin(key(1, b"a")), Lookup::New);
        assert_eq!(c.begin(key(1, b"a")), Lookup::InProgress);
        c.finish(key(1, b"a"), Some(b"reply"));
        assert_eq!(
            c.begin(key(1, b"a")),
            Lookup::Replay(Some(b"reply".to_vec()))
        );
        // Same xid, different arguments: a different request.
        assert_eq!(c.begin(key(1, b"b")), Lookup::New);
        assert_eq!(c.stats.hits, 1);
        assert_eq!(c.stats.in_progress_drops, 1);
    }

    #[test]
    fn no_reply_procedures_are_not_rerun() {
        let mut c = Drc::new(8, 1024);
        assert_eq!(c.begin(key(5, b"")), Lookup::New);
        c.finish(key(5, b""), None);
        assert_eq!(c.begin(key(5, b"")), Lookup::Replay(None));
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let mut c = Drc::new(4, 100);
        for i in 0..100 {
            assert_eq!(c.begin(key(i, b"")), Lookup::New);
            c.finish(key(i, b""), Some(&[0; 30]));
            assert!(c.len() <= 4);
            assert!(c.bytes <= 100);
            assert!(c.order.len() <= 2 * 4 + 1);
        }
        // The newest survive, the oldest are gone.
        assert!(matches!(c.begin(key(99, b"")), Lookup::Replay(_)));
        assert_eq!(c.begin(key(0, b"")), Lookup::New);
        // A reply larger than the whole budget is not cached.
        c.begin(key(1000, b""));
        c.finish(key(1000, b""), Some(&[0; 101]));
        assert_eq!(c.begin(key(1000, b"")), Lookup::New);
    }
}
