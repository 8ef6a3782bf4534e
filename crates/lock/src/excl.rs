//! The exclusive held segments of one file, by start.
//!
//! They are pairwise disjoint (an exclusive lock conflicts with every other
//! owner's lock, and one owner's segments never overlap), so their ends are
//! sorted as well and the ones overlapping a range are one run. That needs
//! no interval tree, only an ordered index, and the index is laid out for
//! the memory hierarchy: sorted chunks of up to [`SEG_CAP`] segments, found
//! through a directory of the chunks' lower fences which is itself chunked
//! the same way, twice, under a small B-tree. The directory is 16 bytes
//! per 8 to 16 segments (one or two megabytes at a million locks, in L2 or
//! L3), where a treap or a B-tree of small nodes would pay a trip to
//! memory per level.
//!
//! In a chunk the starts come first, in two cache lines, then the count;
//! each start's tail (end, owner and the owner's key) is in the lines after
//! them. A probe of a table far larger than the caches reads the two lines
//! of starts and the line or two of the tail it wants, not the fifteen
//! lines of a chunk of (start, tail) pairs: on this kind of machine every
//! line fetched from memory costs, even fetched side by side. Which tail
//! it wants is known only once the starts have arrived, so a probe guesses
//! it first from the fences around the chunk (see `Chunk::touch_guess`)
//! and asks for it together with the starts: one round trip when the guess
//! is right. The answer to a conflict question, the holder's range and key
//! included, is then in lines already loaded: it needs no lookup in the
//! owner table, which would be another trip to memory.
//!
//! Cost: insert, remove and a probe are O(log n) in the B-tree plus
//! O([`SEG_CAP`]) or O([`DIR_CAP`]) in each of the chunks on the way.

use std::collections::BTreeMap;

use crate::owner::Who;
use crate::types::OwnerId;

/// Entries per chunk of the directory level over the segment chunks (a
/// fence and a chunk id each): the keys fill two lines. The capacities are
/// even: a full chunk splits into equal halves, which refill to full chunks
/// when each segment chunk below splits once (15 would leave the level
/// with 1.7 times as many chunks, and a probe slower by a fifth).
const FENCE_CAP: usize = 16;
/// Entries per chunk of the level above it, which stays in L1 or L2: four
/// lines of keys.
const DIR_CAP: usize = 32;
/// Segments per chunk: the starts fill two lines; a probe then reads the
/// one 48-byte tail (end, owner, owner's key) it wants.
const SEG_CAP: usize = 16;
/// Segments in an index from which a probe guesses where its tail is (see
/// `Chunk::touch_guess`): about 2 MB of chunks, a core's L2. Below that
/// they are mostly in cache and a guess saves nothing.
const GUESS_FROM: usize = 1 << 15;

/// A held segment as the conflict questions report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub start: u64,
    pub end: u64,
    pub owner: OwnerId,
    pub excl: bool,
}

/// An ordered map from u64 keys to chunk ids: the directory a [`Level`]
/// finds its chunks through.
trait Dir: Default {
    /// The entry with the greatest key `<= key`.
    fn pred(&self, key: u64) -> Option<(u64, u32)>;
    /// As [`Dir::pred`], with the next key when it comes at no extra cost
    /// (it is in the lines already read).
    fn pred_next(&self, key: u64) -> Option<(u64, u32, Option<u64>)> {
        self.pred(key).map(|(k, v)| (k, v, None))
    }
    /// The entry with the greatest key `< key`.
    fn pred_below(&self, key: u64) -> Option<(u64, u32)>;
    /// The entry with the least key `> key`.
    fn succ_above(&self, key: u64) -> Option<(u64, u32)>;
    fn insert(&mut self, key: u64, v: u32);
    fn remove(&mut self, key: u64) -> Option<u32>;
    fn clear(&mut self);
    fn bytes(&self) -> usize;
}

impl Dir for BTreeMap<u64, u32> {
    fn pred(&self, key: u64) -> Option<(u64, u32)> {
        self.range(..=key).next_back().map(|(&k, &v)| (k, v))
    }
    fn pred_below(&self, key: u64) -> Option<(u64, u32)> {
        self.range(..key).next_back().map(|(&k, &v)| (k, v))
    }
    fn succ_above(&self, key: u64) -> Option<(u64, u32)> {
        let from = key.checked_add(1)?;
        self.range(from..).next().map(|(&k, &v)| (k, v))
    }
    fn insert(&mut self, key: u64, v: u32) {
        BTreeMap::insert(self, key, v);
    }
    fn remove(&mut self, key: u64) -> Option<u32> {
        BTreeMap::remove(self, &key)
    }
    fn clear(&mut self) {
        BTreeMap::clear(self);
    }
    fn bytes(&self) -> usize {
        // Leaf nodes of 11 twelve-byte entries, two thirds full on average.
        self.len() * 20
    }
}

/// Up to `CAP` entries in key order, the keys apart from the values and
/// first, the chunk aligned to cache lines: finding an entry reads the
/// lines of the keys (two, for 16) and the count's, all at once (the
/// count bounds a loop the core runs ahead on, not an address), and then
/// the line or two of the one value it wants. A chunk of (key, value)
/// pairs would have every one of its lines fetched, and on a table far
/// larger than the caches each line is a fetch from memory: they cost by
/// the line, not only by the round trip.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk<V, const CAP: usize> {
    keys: [u64; CAP],
    len: usize,
    vals: [V; CAP],
}

impl<V: Copy + Default, const CAP: usize> Chunk<V, CAP> {
    fn new() -> Chunk<V, CAP> {
        Chunk {
            len: 0,
            keys: [0; CAP],
            vals: [V::default(); CAP],
        }
    }

    /// How many keys are `<= at` (a branch-free count whose loads are
    /// independent of each other).
    fn rank(&self, at: u64) -> usize {
        self.keys[..self.len]
            .iter()
            .map(|&k| usize::from(k <= at))
            .sum()
    }

    fn key(&self, i: usize) -> u64 {
        self.keys[i]
    }

    /// Reads the value of the last entry at or before `at` as it would be
    /// placed if the chunk held `fill` entries (the level's average) evenly
    /// spread between its fence `lo` and the next fence `hi`, before the
    /// keys that tell where it is have arrived. When the guess is right
    /// (locks of one size side by side, as the records of a file are) the
    /// value's lines come in the same round trip to memory as the keys,
    /// not in a second one after them. A wrong guess costs a line or two
    /// read for nothing; nothing depends on the value read.
    fn touch_guess(&self, lo: u64, hi: Option<u64>, at: u64, fill: f64) {
        let Some(hi) = hi else { return };
        if hi <= lo || at < lo {
            return;
        }
        // Floating point: a guess needs no exactness, and a u64 division
        // would take longer than the read it starts.
        let p = ((at - lo) as f64 / (hi - lo) as f64 * fill + 0.5) as usize;
        std::hint::black_box(self.vals[p.min(CAP - 1)]);
    }

    fn entry(&self, i: usize) -> (u64, V) {
        (self.keys[i], self.vals[i])
    }

    fn insert_at(&mut self, i: usize, key: u64, v: V) {
        let n = self.len;
        self.keys.copy_within(i..n, i + 1);
        self.vals.copy_within(i..n, i + 1);
        self.keys[i] = key;
        self.vals[i] = v;
        self.len += 1;
    }

    fn remove_at(&mut self, i: usize) -> V {
        let v = self.vals[i];
        let n = self.len;
        self.keys.copy_within(i + 1..n, i);
        self.vals.copy_within(i + 1..n, i);
        self.len -= 1;
        v
    }

    /// Appends the first `n` entries of `from`; they must all be greater
    /// than the keys here and fit.
    fn append(&mut self, from: &Self, n: usize) {
        let at = self.len;
        self.keys[at..at + n].copy_from_slice(&from.keys[..n]);
        self.vals[at..at + n].copy_from_slice(&from.vals[..n]);
        self.len += n;
    }

    /// Moves the entries from index `n` on into `to`, which must be empty.
    fn split_into(&mut self, n: usize, to: &mut Self) {
        let m = self.len - n;
        to.keys[..m].copy_from_slice(&self.keys[n..self.len]);
        to.vals[..m].copy_from_slice(&self.vals[n..self.len]);
        to.len = m;
        self.len = n;
    }
}

/// A sorted map of u64 keys in chunks, with the chunks' lower fences in a
/// directory `D`. Invariants: the lowest fence is 0 (every key has a
/// chunk); a chunk's keys lie at or above its fence and below the next
/// fence, in order; no chunk is empty unless the map is (then there is
/// one empty chunk under fence 0, or none). A chunk this small after a removal, `CAP / 4`, is merged into a
/// neighbour when the two fit in half a chunk together, so chunks hold
/// `CAP / 8` entries or more on average and a directory has O(n / CAP)
/// entries.
struct Level<V, D, const CAP: usize> {
    dir: D,
    chunks: Vec<Chunk<V, CAP>>,
    free: Vec<u32>,
    len: usize,
}

impl<V, D: Default, const CAP: usize> Default for Level<V, D, CAP> {
    fn default() -> Self {
        Level {
            dir: D::default(),
            chunks: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<V: Copy + Default, D: Dir, const CAP: usize> Level<V, D, CAP> {
    fn alloc(&mut self) -> u32 {
        match self.free.pop() {
            Some(id) => {
                // Entries past `len` are never read: emptying is enough.
                self.chunks[id as usize].len = 0;
                id
            }
            None => {
                let n = self.chunks.len();
                if n == self.chunks.capacity() {
                    // One chunk to begin with, not the four a first push
                    // reserves: most files hold a few locks, and a single
                    // chunk is a small allocation, a four-chunk one is not.
                    // Then a quarter more at a time, not twice as many:
                    // at a million locks a doubling can leave 50 MB
                    // reserved and unused, and growing a large block is a
                    // remapping, not a copy.
                    self.chunks.reserve_exact((n / 4).max(1));
                }
                self.chunks.push(Chunk::new());
                // Chunk counts stay far below 2^32: a chunk holds entries
                // the engine's bounds already limit.
                (self.chunks.len() - 1) as u32
            }
        }
    }

    fn chunk(&self, id: u32) -> &Chunk<V, CAP> {
        &self.chunks[id as usize]
    }

    fn chunk_mut(&mut self, id: u32) -> &mut Chunk<V, CAP> {
        &mut self.chunks[id as usize]
    }

    /// The chunk where `key` belongs, with the line of its value asked for
    /// by a guess (see [`Chunk::touch_guess`]) when the level is too large
    /// for the caches.
    fn chunk_of(&self, key: u64) -> Option<&Chunk<V, CAP>> {
        if self.len < GUESS_FROM {
            return Some(self.chunk(self.dir.pred(key)?.1));
        }
        let (fence, id, next) = self.dir.pred_next(key)?;
        let c = self.chunk(id);
        c.touch_guess(fence, next, key, self.fill());
        Some(c)
    }

    /// Entries per chunk in use, on average.
    fn fill(&self) -> f64 {
        let live = self.chunks.len() - self.free.len();
        self.len as f64 / live.max(1) as f64
    }

    /// Two distinct chunks at once.
    fn pair_mut(&mut self, a: u32, b: u32) -> (&mut Chunk<V, CAP>, &mut Chunk<V, CAP>) {
        let (a, b) = (a as usize, b as usize);
        if a < b {
            let (lo, hi) = self.chunks.split_at_mut(b);
            (&mut lo[a], &mut hi[0])
        } else {
            let (lo, hi) = self.chunks.split_at_mut(a);
            (&mut hi[0], &mut lo[b])
        }
    }

    fn bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk<V, CAP>>() + self.dir.bytes()
    }

    /// Adds an entry; the key must not be present.
    fn put(&mut self, key: u64, v: V) {
        self.len += 1;
        let Some((_, id)) = self.dir.pred(key) else {
            let id = self.alloc();
            self.chunk_mut(id).insert_at(0, key, v);
            self.dir.insert(0, id);
            return;
        };
        let c = self.chunk(id);
        let i = c.rank(key);
        if c.len < CAP {
            self.chunk_mut(id).insert_at(i, key, v);
            return;
        }
        // Full. Appending past the last chunk starts a new one (so keys
        // added in ascending order pack their chunks full); otherwise the
        // chunk splits in halves.
        let last = self.dir.succ_above(key).is_none();
        let nid = self.alloc();
        let fence = if last && i == CAP {
            self.chunk_mut(nid).insert_at(0, key, v);
            key
        } else {
            let half = CAP / 2;
            let (c, n) = self.pair_mut(id, nid);
            c.split_into(half, n);
            let fence = n.key(0);
            if key < fence {
                self.chunk_mut(id).insert_at(i, key, v);
            } else {
                self.chunk_mut(nid).insert_at(i - half, key, v);
            }
            fence
        };
        self.dir.insert(fence, nid);
    }

    /// Removes the entry with this key and returns its value.
    fn take(&mut self, key: u64) -> Option<V> {
        let (fence, id) = self.dir.pred(key)?;
        let c = self.chunk(id);
        let i = c.rank(key);
        if i == 0 || c.key(i - 1) != key {
            return None;
        }
        let v = self.chunk_mut(id).remove_at(i - 1);
        self.len -= 1;
        if self.chunk(id).len < CAP / 4 {
            self.rebalance(fence, id);
        }
        Some(v)
    }

    /// Merges a small chunk with a neighbour when they fit in half a chunk
    /// together; drops it when it is empty.
    fn rebalance(&mut self, fence: u64, id: u32) {
        if self.len == 0 {
            // A lone chunk stays, empty, under fence 0: the next entry
            // goes into it with no allocation and no directory change
            // (a file locked and unlocked over and over, the common case).
            if fence == 0 && self.dir.succ_above(0).is_none() {
                return;
            }
            self.dir.clear();
            self.chunks.clear();
            self.free.clear();
            return;
        }
        let here = self.chunk(id).len;
        if let Some((rk, rid)) = self.dir.succ_above(fence) {
            let rlen = self.chunk(rid).len;
            // The right chunk's entries move down under this fence, which
            // is lower: the fence invariant holds. For an empty first chunk
            // that is the only way to keep fence 0.
            if here + rlen <= CAP / 2 || (here == 0 && fence == 0) {
                self.dir.remove(rk);
                let r = *self.chunk(rid);
                self.chunk_mut(id).append(&r, rlen);
                self.free.push(rid);
                return;
            }
        }
        if let Some((_, lid)) = self.dir.pred_below(fence) {
            let llen = self.chunk(lid).len;
            if here + llen <= CAP / 2 || here == 0 {
                self.dir.remove(fence);
                let c = *self.chunk(id);
                self.chunk_mut(lid).append(&c, here);
                self.free.push(id);
            }
        }
    }

    /// The entry with the greatest key `<= key`.
    fn pred_entry(&self, key: u64) -> Option<(u64, V)> {
        let (fence, id) = self.dir.pred(key)?;
        let c = self.chunk(id);
        let i = c.rank(key);
        if i > 0 {
            return Some(c.entry(i - 1));
        }
        let (_, pid) = self.dir.pred_below(fence)?;
        let p = self.chunk(pid);
        p.len.checked_sub(1).map(|j| p.entry(j))
    }

    /// As [`Level::pred_entry`], with the next key when it is in the same
    /// chunk.
    fn pred_entry_next(&self, key: u64) -> Option<(u64, V, Option<u64>)> {
        let (_, id) = self.dir.pred(key)?;
        let c = self.chunk(id);
        let i = c.rank(key);
        if i == 0 {
            return self.pred_entry(key).map(|(k, v)| (k, v, None));
        }
        let (k, v) = c.entry(i - 1);
        Some((k, v, (i < c.len).then(|| c.key(i))))
    }

    /// The entry with the least key `> key`.
    fn succ_entry(&self, key: u64) -> Option<(u64, V)> {
        let next = match self.dir.pred(key) {
            Some((fence, id)) => {
                let c = self.chunk(id);
                let i = c.rank(key);
                if i < c.len {
                    return Some(c.entry(i));
                }
                self.dir.succ_above(fence)
            }
            None => self.dir.succ_above(key),
        };
        let (_, nid) = next?;
        let n = self.chunk(nid);
        (n.len > 0).then(|| n.entry(0))
    }
}

/// A directory that is itself chunked: the fences of the segment chunks.
impl<D: Dir, const CAP: usize> Dir for Level<u32, D, CAP> {
    fn pred(&self, key: u64) -> Option<(u64, u32)> {
        self.pred_entry(key)
    }
    fn pred_next(&self, key: u64) -> Option<(u64, u32, Option<u64>)> {
        self.pred_entry_next(key)
    }
    fn pred_below(&self, key: u64) -> Option<(u64, u32)> {
        self.pred_entry(key.checked_sub(1)?)
    }
    fn succ_above(&self, key: u64) -> Option<(u64, u32)> {
        self.succ_entry(key)
    }
    fn insert(&mut self, key: u64, v: u32) {
        self.put(key, v);
    }
    fn remove(&mut self, key: u64) -> Option<u32> {
        self.take(key)
    }
    fn clear(&mut self) {
        self.dir.clear();
        self.chunks.clear();
        self.free.clear();
        self.len = 0;
    }
    fn bytes(&self) -> usize {
        Level::bytes(self)
    }
}

impl Chunk<Tail, SEG_CAP> {
    /// Reads every line of the values (a value is shorter than a line, so
    /// each line holds the start of one).
    fn touch_values(&self) {
        std::hint::black_box(self.vals.iter().fold(0, |a, t| a ^ t.end));
    }
}

/// End and owner of a segment, beside its start in a chunk, with the
/// owner's key: a conflict answer needs nothing else.
#[derive(Clone, Copy)]
struct Tail {
    end: u64,
    owner: OwnerId,
    who: Who,
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            end: 0,
            owner: OwnerId(0),
            who: Who::default(),
        }
    }
}

type Segs = Level<Tail, Level<u32, Level<u32, BTreeMap<u64, u32>, DIR_CAP>, FENCE_CAP>, SEG_CAP>;

#[derive(Default)]
pub(crate) struct ExclIndex {
    segs: Segs,
}

fn seg(x: (u64, Tail)) -> Seg {
    Seg {
        start: x.0,
        end: x.1.end,
        owner: x.1.owner,
        excl: true,
    }
}

/// Calls `f` on the segments of `c` from index `i` on that start at or
/// before `e` and end at or after `s`. `Some(keep_going)` once the run is
/// over (a segment starts past `e`, or `f` said stop), `None` if the chunk
/// ran out first.
fn scan(
    c: &Chunk<Tail, SEG_CAP>,
    i: usize,
    s: u64,
    e: u64,
    f: &mut impl FnMut(Seg) -> bool,
) -> Option<bool> {
    for j in i.min(c.len)..c.len {
        let x = c.entry(j);
        if x.0 > e {
            return Some(true);
        }
        if x.1.end >= s && !f(seg(x)) {
            return Some(false);
        }
    }
    None
}

impl ExclIndex {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.segs.len
    }

    /// Heap bytes, for the memory report.
    pub fn bytes(&self) -> usize {
        self.segs.bytes()
    }

    /// Adds a segment; it must not overlap any segment already here.
    /// `who` is the key of `owner`.
    pub fn insert(&mut self, start: u64, end: u64, owner: OwnerId, who: Who) {
        self.segs.put(start, Tail { end, owner, who });
    }

    /// Removes the segment starting at `start`; `false` if there is none.
    pub fn remove(&mut self, start: u64) -> bool {
        self.segs.take(start).is_some()
    }

    /// Calls `f` on every segment overlapping `[s, e]`, in start order,
    /// until it returns `false`; returns `false` if stopped early.
    pub fn visit(&self, s: u64, e: u64, mut f: impl FnMut(Seg) -> bool) -> bool {
        let l = &self.segs;
        let Some((fence, id)) = l.dir.pred(s) else {
            return true;
        };
        // The segment that may contain `s` is the last one starting at or
        // before it: in this chunk, or else the previous chunk's last.
        let c = l.chunk(id);
        let i = c.rank(s);
        if i == 0 {
            if let Some((_, pid)) = l.dir.pred_below(fence) {
                let p = l.chunk(pid);
                if let Some(done) = scan(p, p.len.saturating_sub(1), s, e, &mut f) {
                    return done;
                }
            }
        }
        if let Some(done) = scan(c, i.saturating_sub(1), s, e, &mut f) {
            return done;
        }
        let mut at = fence;
        while let Some((next, nid)) = l.dir.succ_above(at) {
            if let Some(done) = scan(l.chunk(nid), 0, s, e, &mut f) {
                return done;
            }
            at = next;
        }
        true
    }

    /// The segment [`ExclIndex::other_than`] looks at first, when it lies
    /// in the chunk holding `e`: the last one starting at or before `e`, if
    /// it reaches `s`; with its owner's key, so that a caller can tell the
    /// owner apart from the asker without looking the asker up.
    pub fn first_candidate(&self, s: u64, e: u64) -> Option<(Seg, Who)> {
        let l = &self.segs;
        let c = l.chunk_of(e)?;
        let i = c.rank(e).checked_sub(1)?;
        let x = c.entry(i);
        (x.1.end >= s).then(|| (seg(x), x.1.who))
    }

    /// A segment overlapping `[s, e]` held by someone other than `owner`.
    /// The common case is answered from the chunk holding `e`, walking back
    /// from the last segment starting at or before `e` (ends are sorted
    /// too); the general walk covers runs that leave the chunk.
    pub fn other_than(&self, owner: OwnerId, s: u64, e: u64) -> Option<Seg> {
        let l = &self.segs;
        let c = l.chunk(l.dir.pred(e)?.1);
        if l.len >= GUESS_FROM {
            // A LOCK checks for conflicts here and then inserts into this
            // chunk, moving the values after its own: every line of them
            // comes in the same round trip as the keys.
            c.touch_values();
        }
        let mut i = c.rank(e);
        while i > 0 {
            i -= 1;
            let x = c.entry(i);
            if x.1.end < s {
                // Everything before ends before `s` as well.
                return None;
            }
            if x.1.owner != owner {
                return Some(seg(x));
            }
        }
        let mut found = None;
        self.visit(s, e, |g| {
            if g.owner == owner {
                return true;
            }
            found = Some(g);
            false
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn all(x: &ExclIndex) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        x.visit(0, u64::MAX, |s| {
            v.push((s.start, s.end));
            true
        });
        v
    }

    fn check(x: &ExclIndex, model: &std::collections::BTreeMap<u64, u64>) {
        let want: Vec<(u64, u64)> = model.iter().map(|(&a, &b)| (a, b)).collect();
        assert_eq!(all(x), want);
        assert_eq!(x.len(), model.len());
        // Every chunk non-empty, at or above its fence, below the next.
        let mut fence = x.segs.dir.pred(0);
        if model.is_empty() {
            // Nothing, or the one chunk kept empty for the next entry.
            if let Some((k, id)) = fence {
                assert_eq!(k, 0);
                assert_eq!(x.segs.chunk(id).len, 0);
                assert!(x.segs.dir.succ_above(0).is_none());
            }
            return;
        }
        assert_eq!(fence.map(|f| f.0), Some(0));
        while let Some((k, id)) = fence {
            let c = x.segs.chunk(id);
            assert!(c.len > 0, "empty chunk");
            assert!(c.key(0) >= k);
            fence = x.segs.dir.succ_above(k);
            if let Some((nk, _)) = fence {
                assert!(c.key(c.len - 1) < nk);
            }
        }
        for s in (0..400u64).step_by(3) {
            for e in [s, s + 1, s + 5, s + 40] {
                let mut got = Vec::new();
                x.visit(s, e, |g| {
                    got.push((g.start, g.end));
                    true
                });
                let want: Vec<(u64, u64)> = model
                    .iter()
                    .filter(|(&a, &b)| a <= e && b >= s)
                    .map(|(&a, &b)| (a, b))
                    .collect();
                assert_eq!(got, want, "visit({s}, {e})");
            }
        }
    }

    #[test]
    fn matches_a_map_under_churn() {
        // Segments [4k, 4k+1] for k in a scrambled order, removed again in
        // another: splits, appends, merges and the first chunk emptying.
        let mut x = ExclIndex::default();
        let mut model = std::collections::BTreeMap::new();
        let n = 97u64;
        for j in 0..n {
            let k = (j * 37) % n;
            x.insert(4 * k, 4 * k + 1, OwnerId(k as u32), Who::default());
            model.insert(4 * k, 4 * k + 1);
            if j % 7 == 0 {
                check(&x, &model);
            }
        }
        check(&x, &model);
        for j in 0..n {
            let k = (j * 53 + 11) % n;
            assert!(x.remove(4 * k));
            assert!(!x.remove(4 * k));
            model.remove(&(4 * k));
            check(&x, &model);
        }
        check(&x, &BTreeMap::new());
        for k in 0..200u64 {
            x.insert(2 * k, 2 * k, OwnerId(0), Who::default());
            model.insert(2 * k, 2 * k);
        }
        check(&x, &model);
        for k in 0..200u64 {
            assert!(x.remove(2 * k));
            model.remove(&(2 * k));
            if k % 5 == 0 {
                check(&x, &model);
            }
        }
    }

    #[test]
    fn directory_chunks_split_and_merge() {
        // Enough segments for the directory of fences to fill several of
        // its own chunks, in a scrambled order, then most of them removed.
        let mut x = ExclIndex::default();
        let mut model = std::collections::BTreeMap::new();
        let n = 20_011u64;
        for j in 0..n {
            let k = (j * 7919) % n;
            x.insert(3 * k, 3 * k + 1, OwnerId(k as u32), Who::default());
            model.insert(3 * k, 3 * k + 1);
        }
        check(&x, &model);
        assert!(x.segs.dir.chunks.len() > 4);
        assert!(x.segs.dir.dir.chunks.len() > 1);
        for j in 0..n - 50 {
            let k = (j * 104_729 + 5) % n;
            assert!(x.remove(3 * k));
            model.remove(&(3 * k));
            if j % 2_000 == 0 {
                check(&x, &model);
            }
        }
        check(&x, &model);
        for k in 0..n {
            x.remove(3 * k);
        }
        check(&x, &BTreeMap::new());
    }

    /// Probes of an index past `GUESS_FROM`, where they guess where their
    /// entry is, against a model: evenly spaced segments (the guesses hit)
    /// and then, after removals and inserts in a scrambled order, uneven
    /// chunks (they miss); the answers must not depend on either.
    #[test]
    fn probes_agree_with_a_model_past_the_guessing_size() {
        let mut x = ExclIndex::default();
        let mut model = BTreeMap::new();
        let n = GUESS_FROM as u64 + 5_000;
        let owner = |k: u64| OwnerId((k % 3) as u32);
        for k in 0..n {
            x.insert(4 * k, 4 * k + 1, owner(k), Who::default());
            model.insert(4 * k, 4 * k + 1);
        }
        let probe = |x: &ExclIndex, model: &BTreeMap<u64, u64>| {
            let mut answered = 0;
            for j in 0..5_000u64 {
                let s = (j * 7_919) % (4 * n + 8);
                for e in [s, s + 1, s + 2, s + 9, u64::MAX] {
                    let last = model.range(..=e).next_back();
                    let want = last.filter(|(_, &end)| end >= s).map(|(&a, &b)| (a, b));
                    // It may say nothing when that segment is in an
                    // earlier chunk (its caller then searches), never
                    // something else.
                    let got = x.first_candidate(s, e).map(|(g, _)| (g.start, g.end));
                    if got.is_some() || want.is_none() {
                        assert_eq!(got, want, "first_candidate({s}, {e})");
                        answered += 1;
                    }
                    for o in 0..3u32 {
                        let got = x.other_than(OwnerId(o), s, e);
                        let any = model
                            .range(..=e)
                            .rev()
                            .take_while(|(_, &end)| end >= s)
                            .any(|(&a, _)| owner(a / 4) != OwnerId(o));
                        assert_eq!(got.is_some(), any, "other_than({o}, {s}, {e})");
                        if let Some(g) = got {
                            assert_eq!(model.get(&g.start), Some(&g.end));
                            assert!(g.start <= e && g.end >= s && g.owner != OwnerId(o));
                        }
                    }
                }
            }
            // Nearly every probe is answered from its own chunk.
            assert!(answered > 5_000 * 5 * 9 / 10, "{answered}");
        };
        assert!(x.segs.len >= GUESS_FROM);
        probe(&x, &model);
        for j in 0..n / 2 {
            let k = (j * 104_729) % n;
            if model.remove(&(4 * k)).is_some() {
                assert!(x.remove(4 * k));
            }
            // Segments of other lengths in the gaps.
            let k = (j * 7_919 + 3) % n;
            if let std::collections::btree_map::Entry::Vacant(v) = model.entry(4 * k + 2) {
                v.insert(4 * k + 2 + (j % 2));
                x.insert(4 * k + 2, 4 * k + 2 + (j % 2), owner(k), Who::default());
            }
        }
        assert!(x.segs.len >= GUESS_FROM);
        check(&x, &model);
        probe(&x, &model);
    }

    #[test]
    fn an_emptied_index_keeps_one_chunk_for_the_next_entry() {
        let mut x = ExclIndex::default();
        for round in 0..3u64 {
            x.insert(10 + round, 20 + round, OwnerId(1), Who::default());
            assert!(x.remove(10 + round));
            check(&x, &BTreeMap::new());
            // Still one chunk at each level, reused: nothing allocated.
            assert_eq!(x.segs.chunks.len(), 1);
            assert_eq!(x.segs.dir.chunks.len(), 1);
            assert_eq!(x.segs.dir.dir.chunks.len(), 1);
            assert_eq!(x.segs.dir.dir.dir.len(), 1);
            assert!(x.first_candidate(0, u64::MAX).is_none());
            assert!(x.other_than(OwnerId(2), 0, u64::MAX).is_none());
            assert!(x.visit(0, u64::MAX, |_| false));
        }
        // Emptied from several chunks, it lets them all go.
        for k in 0..100u64 {
            x.insert(2 * k, 2 * k, OwnerId(1), Who::default());
        }
        assert!(x.segs.dir.succ_above(0).is_some());
        for k in (0..100u64).rev() {
            assert!(x.remove(2 * k));
        }
        check(&x, &BTreeMap::new());
    }
}
