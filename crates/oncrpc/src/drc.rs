//! The duplicate request cache: execute-at-most-once for procedures that are
//! not idempotent (LOCK, UNLOCK, CANCEL, SHARE...). A retransmission that
//! arrives while the original is still executing is dropped (the client will
//! retransmit again); one that arrives after it gets the cached reply, byte
//! for byte, even if the state has changed since.

use crate::msg::Xid;
use latch_hash::KeyedState;
use std::hash::BuildHasher;
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
///
/// The entries sit in a ring in arrival order, so the oldest is always the
/// next to be overwritten and evicting it touches memory already on its
/// way (a map of entries pays a trip to a long-cold bucket per eviction,
/// and a full cache evicts on every call). They are found through an open
/// addressing index of 8 bytes a slot (hash tag and ring position, linear
/// probing, deletion by backward shift) that stays in cache; it grows with
/// the ring, to at most twice the entries.
#[derive(Debug)]
pub struct Drc {
    ring: Vec<Slot>,
    /// The oldest ring position in use, and how many are in use from it
    /// (entries removed early stay as dead slots until overwritten).
    tail: usize,
    used: usize,
    /// 0: empty; else the hash's high 32 bits above (ring position + 1).
    index: Vec<u64>,
    live: usize,
    /// Where the last new request went: [`Drc::finish`] usually follows at
    /// once, and finds it there without a probe.
    last: usize,
    hasher: KeyedState,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    pub stats: DrcStats,
}

#[derive(Debug)]
struct Slot {
    key: DrcKey,
    hash: u32,
    /// `None`: evicted or removed.
    entry: Option<Entry>,
}

impl Drc {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        // Ring positions must fit the index's 32 bits.
        let max_entries = max_entries.clamp(1, u32::MAX as usize - 1);
        Drc {
            ring: Vec::new(),
            tail: 0,
            used: 0,
            index: vec![0; 16],
            live: 0,
            last: 0,
            hasher: KeyedState::new(),
            bytes: 0,
            max_entries,
            max_bytes,
            stats: DrcStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn hash(&self, key: &DrcKey) -> u32 {
        (self.hasher.hash_one(key) >> 32) as u32
    }

    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    /// The index slot and ring position of `key`.
    fn find(&self, key: &DrcKey, hash: u32) -> Option<(usize, usize)> {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        loop {
            let e = self.index[i];
            if e == 0 {
                return None;
            }
            if (e >> 32) as u32 == hash {
                let pos = (e as u32 as usize) - 1;
                if self.ring.get(pos).is_some_and(|s| s.key == *key) {
                    return Some((i, pos));
                }
            }
            i = (i + 1) & mask;
        }
    }

    fn index_insert(&mut self, hash: u32, pos: usize) {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        while self.index[i] != 0 {
            i = (i + 1) & mask;
        }
        self.index[i] = u64::from(hash) << 32 | (pos as u64 + 1);
    }

    /// Empties index slot `i`, shifting back the entries after it that
    /// would otherwise no longer be found.
    fn index_remove(&mut self, mut i: usize) {
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let e = self.index[j];
            if e == 0 {
                break;
            }
            let home = (e >> 32) as usize & mask;
            // Leave it unless its home is cyclically outside (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.index[i] = e;
                i = j;
            }
        }
        self.index[i] = 0;
    }

    /// Twice the size once more than half full, up to twice the entries.
    fn grow_index(&mut self) {
        if 2 * (self.live + 1) <= self.index.len() {
            return;
        }
        let size = self.index.len() * 2;
        self.index = vec![0; size];
        for pos in 0..self.ring.len() {
            if self.ring[pos].entry.is_some() {
                let h = self.ring[pos].hash;
                self.index_insert(h, pos);
            }
        }
    }

    /// Looks a request up; a new one is recorded as in progress.
    pub fn begin(&mut self, key: DrcKey) -> Lookup {
        let hash = self.hash(&key);
        if let Some((_, pos)) = self.find(&key, hash) {
            return match &self.ring[pos].entry {
                Some(Entry::InProgress) | None => {
                    self.stats.in_progress_drops += 1;
                    Lookup::InProgress
                }
                Some(Entry::Done(reply)) => {
                    self.stats.hits += 1;
                    Lookup::Replay(reply.as_ref().map(|r| r.as_slice().to_vec()))
                }
            };
        }
        self.stats.misses += 1;
        if self.used == self.max_entries {
            self.evict_oldest();
        }
        self.grow_index();
        let pos = (self.tail + self.used) % self.max_entries;
        let slot = Slot {
            key,
            hash,
            entry: Some(Entry::InProgress),
        };
        if pos == self.ring.len() {
            self.ring.push(slot);
        } else {
            self.ring[pos] = slot;
        }
        self.used += 1;
        self.live += 1;
        self.last = pos;
        self.index_insert(hash, pos);
        Lookup::New
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
        while self.bytes + size > self.max_bytes && self.used > 0 {
            self.evict_oldest();
        }
        let at_last = self
            .ring
            .get(self.last)
            .is_some_and(|s| s.entry.is_some() && s.key == key);
        let pos = if at_last {
            Some(self.last)
        } else {
            let hash = self.hash(&key);
            self.find(&key, hash).map(|(_, pos)| pos)
        };
        if let Some(pos) = pos {
            let old = self.ring[pos]
                .entry
                .replace(Entry::Done(reply.map(Reply::new)));
            if let Some(Entry::Done(Some(r))) = old {
                self.bytes -= r.as_slice().len();
            }
            self.bytes += size;
        }
    }

    /// Forgets a request that failed in a way a retry may fix.
    pub fn abandon(&mut self, key: &DrcKey) {
        self.remove(key);
    }

    /// Whether `key` was there.
    fn remove(&mut self, key: &DrcKey) -> bool {
        let hash = self.hash(key);
        let Some((i, pos)) = self.find(key, hash) else {
            return false;
        };
        self.index_remove(i);
        self.clear(pos);
        true
    }

    /// Empties ring position `pos`, which the index no longer names.
    fn clear(&mut self, pos: usize) {
        if let Some(e) = self.ring[pos].entry.take() {
            self.live -= 1;
            if let Entry::Done(Some(r)) = e {
                self.bytes -= r.as_slice().len();
            }
        }
    }

    /// The oldest ring position goes, and its entry if it still has one.
    fn evict_oldest(&mut self) {
        let pos = self.tail;
        if self.ring[pos].entry.is_some() {
            // Found by position: no key to compare.
            let mask = self.mask();
            let want = u64::from(self.ring[pos].hash) << 32 | (pos as u64 + 1);
            let mut i = self.ring[pos].hash as usize & mask;
            while self.index[i] != want && self.index[i] != 0 {
                i = (i + 1) & mask;
            }
            if self.index[i] == want {
                self.index_remove(i);
            }
            self.clear(pos);
            self.stats.evictions += 1;
        }
        self.tail = (self.tail + 1) % self.max_entries;
        self.used -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

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
            assert!(c.used <= 4 && c.ring.len() <= 4);
        }
        // The newest survive, the oldest are gone.
        assert!(matches!(c.begin(key(99, b"")), Lookup::Replay(_)));
        assert_eq!(c.begin(key(0, b"")), Lookup::New);
        // A reply larger than the whole budget is not cached.
        c.begin(key(1000, b""));
        c.finish(key(1000, b""), Some(&[0; 101]));
        assert_eq!(c.begin(key(1000, b"")), Lookup::New);
    }

    /// Random calls against a plain model of the ring (a queue searched
    /// linearly), with few buckets' worth of keys so that the index probes,
    /// wraps and shifts back often.
    #[test]
    fn the_index_agrees_with_a_linear_model() {
        #[derive(Clone, PartialEq, Debug)]
        enum M {
            Running,
            Done(usize),
        }
        let (cap, max_bytes) = (7usize, 120usize);
        let mut c = Drc::new(cap, max_bytes);
        // (key, state); `None` for a dead slot.
        let mut model: VecDeque<(u32, Option<M>)> = VecDeque::new();
        let mut bytes = 0usize;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let evict = |model: &mut VecDeque<(u32, Option<M>)>, bytes: &mut usize| {
            if let Some((_, Some(M::Done(n)))) = model.pop_front() {
                *bytes -= n;
            }
        };
        for step in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x >> 8) as u32 % 24;
            let op = x % 8;
            let found = model.iter().position(|(mk, st)| *mk == k && st.is_some());
            match op {
                0..=3 => {
                    let got = c.begin(key(k, b"x"));
                    let want = match found.and_then(|i| model[i].1.clone()) {
                        Some(M::Running) => Lookup::InProgress,
                        Some(M::Done(n)) => Lookup::Replay(Some(vec![k as u8; n])),
                        None => {
                            if model.len() == cap {
                                evict(&mut model, &mut bytes);
                            }
                            model.push_back((k, Some(M::Running)));
                            Lookup::New
                        }
                    };
                    assert_eq!(got, want, "step {step} begin {k}");
                }
                4..=6 => {
                    let n = (x >> 40) as usize % 50;
                    c.finish(key(k, b"x"), Some(&vec![k as u8; n]));
                    while bytes + n > max_bytes && !model.is_empty() {
                        evict(&mut model, &mut bytes);
                    }
                    let found = model.iter().position(|(mk, st)| *mk == k && st.is_some());
                    if let Some(i) = found {
                        if let Some(M::Done(old)) = model[i].1 {
                            bytes -= old;
                        }
                        model[i].1 = Some(M::Done(n));
                        bytes += n;
                    }
                }
                _ => {
                    c.abandon(&key(k, b"x"));
                    if let Some(i) = found {
                        if let Some(M::Done(n)) = model[i].1 {
                            bytes -= n;
                        }
                        model[i].1 = None;
                    }
                }
            }
            assert_eq!(c.bytes, bytes, "step {step}");
            assert_eq!(c.len(), model.iter().filter(|(_, s)| s.is_some()).count());
            assert!(c.len() <= cap && c.bytes <= max_bytes);
        }
    }
}
