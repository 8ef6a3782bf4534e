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
//! and asks for it together with the starts. Which chunk it wants is
//! known only at the end of the walk down the directory, whose fence
//! chunks are past the L2 as well, so it guesses that too, from its key
//! and about 50 bytes a fence chunk kept in cache, and asks for the
//! chunk's lines before the walk (see [`Grouped`]): when the guesses are
//! right, the walk's work and its own trip to the fence chunk overlap the
//! one round trip for the segment chunk. The answer to a conflict
//! question, the holder's range and key included, is then in lines
//! already loaded: it needs no lookup in the owner table, which would be
//! another trip to memory.
//!
//! Cost: insert, remove and a probe are O(log n) in the B-tree plus
//! O([`SEG_CAP`]) or O([`DIR_CAP`]) in each of the chunks on the way; an
//! insert or remove that splits or merges a fence chunk moves up to
//! `FENCE_CAP / 2` segment chunks; the probes' guide is rebuilt, in time
//! linear in the fence chunks, after a number of changes proportional to
//! them: O(1) a change, amortized.

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

/// Asks the core for the cache lines holding `x`, without waiting for
/// them: a prefetch. A load whose value went unused (`black_box`) would do
/// as much, but the core cannot retire it before the line arrives, and the
/// work behind it then stops once the reorder buffer is full: a probe's
/// walk down the directory, which should overlap the trip to memory, would
/// wait for it instead.
fn ask<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = (x as *const T).cast::<i8>();
        let n = std::mem::size_of::<T>();
        // The lines from the one holding the first byte to the one holding
        // the last.
        let skip = p as usize % 64;
        let mut at = 0;
        while at < skip + n {
            // SAFETY: a prefetch only hints: it reads nothing into the
            // program and does not fault. The address is computed with
            // wrapping arithmetic, so no pointer is formed out of bounds.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at).wrapping_sub(skip)) };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

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
    /// The chunk `key` probably belongs in, told without the walk down
    /// the directory, when the directory can (see [`Grouped`]): its id and
    /// the keys it probably covers.
    fn guess(&self, _key: u64) -> Option<(u32, u64, Option<u64>)> {
        None
    }
    /// Calls `f` on every entry, in key order.
    fn each(&self, f: &mut impl FnMut(u64, u32));
    /// Adds `key` for a new, empty chunk of `pool` and returns its id. A
    /// directory that keeps the chunks in groups may move others to make
    /// room: `keep` is an id the caller holds, changed if that one moves.
    fn add<V: Copy + Default, const C: usize>(
        &mut self,
        key: u64,
        pool: &mut Pool<V, C>,
        keep: &mut u32,
    ) -> u32;
    /// Removes `key`, whose chunk's entries have moved elsewhere; the
    /// chunk goes back to `pool`.
    fn drop_key<V: Copy + Default, const C: usize>(&mut self, key: u64, pool: &mut Pool<V, C>);
    /// Entries, one per chunk of the level it directs.
    fn count(&self) -> usize;
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
    fn add<V: Copy + Default, const C: usize>(
        &mut self,
        key: u64,
        pool: &mut Pool<V, C>,
        _keep: &mut u32,
    ) -> u32 {
        let id = pool.alloc();
        BTreeMap::insert(self, key, id);
        id
    }
    fn drop_key<V: Copy + Default, const C: usize>(&mut self, key: u64, pool: &mut Pool<V, C>) {
        pool.release(BTreeMap::remove(self, &key));
    }
    fn count(&self) -> usize {
        self.len()
    }
    fn each(&self, f: &mut impl FnMut(u64, u32)) {
        for (&k, &v) in self {
            f(k, v);
        }
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

    /// Whether the greatest key `<= at` in a sorted run that this chunk is
    /// part of must be here: a key here is `<= at`, and another is `> at`
    /// or is `at`.
    fn holds(&self, at: u64) -> bool {
        let n = self.len.min(CAP);
        n > 0 && self.keys[0] <= at && (self.keys[n - 1] >= at)
    }

    /// Asks for the value of the last entry at or before `at` as it would be
    /// placed if the chunk held `fill` entries (the level's average) evenly
    /// spread between its fence `lo` and the next fence `hi`, before the
    /// keys that tell where it is have arrived. When the guess is right
    /// (locks of one size side by side, as the records of a file are) the
    /// value's lines come in the same round trip to memory as the keys,
    /// not in a second one after them. A wrong guess costs a line or two
    /// read for nothing.
    fn touch_guess(&self, lo: u64, hi: Option<u64>, at: u64, fill: f64) {
        let Some(hi) = hi else { return };
        if hi <= lo || at < lo {
            return;
        }
        // Floating point: a guess needs no exactness, and a u64 division
        // would take longer than the read it starts.
        let p = ((at - lo) as f64 / (hi - lo) as f64 * fill + 0.5) as usize;
        ask(&self.vals[p.min(CAP - 1)]);
    }

    /// Asks for the lines of the keys and the count.
    fn touch_keys(&self) {
        ask(&self.keys);
        ask(&self.len);
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
    pool: Pool<V, CAP>,
    len: usize,
}

impl<V, D: Default, const CAP: usize> Default for Level<V, D, CAP> {
    fn default() -> Self {
        Level {
            dir: D::default(),
            pool: Pool::default(),
            len: 0,
        }
    }
}

/// A level's chunks by id, with the ids of the chunks let go, for reuse.
struct Pool<V, const CAP: usize> {
    chunks: Vec<Chunk<V, CAP>>,
    free: Vec<u32>,
}

impl<V, const CAP: usize> Default for Pool<V, CAP> {
    fn default() -> Self {
        Pool {
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<V: Copy + Default, const CAP: usize> Pool<V, CAP> {
    /// An empty chunk: one let go, or a new one.
    fn alloc(&mut self) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let n = self.chunks.len();
                self.grow(n + 1);
                // Chunk counts stay far below 2^32: a chunk holds entries
                // the engine's bounds already limit.
                n as u32
            }
        };
        self.empty(id);
        id
    }

    /// Lets chunk `id` go. It is emptied: a chunk named by no directory
    /// entry is empty, so that a probe that guessed it knows (see
    /// [`Level::chunk_of`]).
    fn release(&mut self, id: Option<u32>) {
        if let Some(id) = id {
            self.empty(id);
            self.free.push(id);
        }
    }

    /// Empties chunk `id`, the pool growing to hold it.
    fn place(&mut self, id: u32) {
        self.grow(id as usize + 1);
        self.empty(id);
    }

    fn empty(&mut self, id: u32) {
        // Entries past `len` are never read: emptying is enough.
        if let Some(c) = self.chunks.get_mut(id as usize) {
            c.len = 0;
        }
    }

    /// Moves chunk `from` to `to`, the pool growing to hold it; `from` is
    /// left empty.
    fn relocate(&mut self, from: u32, to: u32) {
        self.grow(to as usize + 1);
        if let Some(&c) = self.chunks.get(from as usize) {
            self.chunks[to as usize] = c;
        }
        self.empty(from);
    }

    fn grow(&mut self, n: usize) {
        let len = self.chunks.len();
        if n <= len {
            return;
        }
        if n > self.chunks.capacity() {
            // One chunk to begin with, not the four a first push reserves:
            // most files hold a few locks, and a single chunk is a small
            // allocation, a four-chunk one is not. Then a quarter more at a
            // time, not twice as many: at a million locks a doubling can
            // leave 50 MB reserved and unused, and growing a large block is
            // a remapping, not a copy.
            self.chunks.reserve_exact((n - len).max(len / 4));
        }
        self.chunks.resize(n, Chunk::new());
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.free.clear();
    }
}

impl<V: Copy + Default, D: Dir, const CAP: usize> Level<V, D, CAP> {
    fn chunk(&self, id: u32) -> &Chunk<V, CAP> {
        &self.pool.chunks[id as usize]
    }

    fn chunk_mut(&mut self, id: u32) -> &mut Chunk<V, CAP> {
        &mut self.pool.chunks[id as usize]
    }

    /// The chunk where `key` belongs. When the level is too large for the
    /// caches, the lines of its keys and of the value it probably wants
    /// are asked for first, from a guess of where they are (see
    /// [`Grouped`] and [`Chunk::touch_guess`]). If the chunk guessed holds
    /// a key at or before `key` and one after it (or `key` itself), it is
    /// the one: chunks hold runs of the sorted keys, and a chunk no entry
    /// names is empty. Then the walk down the directory is not needed;
    /// otherwise it is taken, and the lines of the chunk it ends at asked
    /// for in turn. `all` asks for every value instead of one, for a
    /// caller about to move them.
    fn chunk_of(&self, key: u64, all: bool) -> Option<&Chunk<V, CAP>> {
        if self.len < GUESS_FROM {
            return Some(self.chunk(self.dir.pred(key)?.1));
        }
        let fill = self.fill();
        let touch = |c: &Chunk<V, CAP>, lo, hi| {
            c.touch_keys();
            if all {
                ask(&c.vals);
            } else {
                c.touch_guess(lo, hi, key, fill);
            }
        };
        if let Some((id, lo, hi)) = self.dir.guess(key) {
            if let Some(c) = self.pool.chunks.get(id as usize) {
                touch(c, lo, hi);
                if c.holds(key) {
                    return Some(c);
                }
            }
        }
        let (fence, id, next) = self.dir.pred_next(key)?;
        let c = self.chunk(id);
        touch(c, fence, next);
        Some(c)
    }

    /// Entries per chunk in use, on average.
    fn fill(&self) -> f64 {
        self.len as f64 / self.dir.count().max(1) as f64
    }

    /// Two distinct chunks at once.
    fn pair_mut(&mut self, a: u32, b: u32) -> (&mut Chunk<V, CAP>, &mut Chunk<V, CAP>) {
        let (a, b) = (a as usize, b as usize);
        if a < b {
            let (lo, hi) = self.pool.chunks.split_at_mut(b);
            (&mut lo[a], &mut hi[0])
        } else {
            let (lo, hi) = self.pool.chunks.split_at_mut(a);
            (&mut hi[0], &mut lo[b])
        }
    }

    fn bytes(&self) -> usize {
        self.pool.chunks.capacity() * std::mem::size_of::<Chunk<V, CAP>>() + self.dir.bytes()
    }

    /// Adds an entry; the key must not be present.
    fn put(&mut self, key: u64, v: V) {
        self.len += 1;
        let Some(mut id) = self.find(key) else {
            let id = self.dir.add(0, &mut self.pool, &mut PENDING.clone());
            self.chunk_mut(id).insert_at(0, key, v);
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
        if i == CAP && self.dir.succ_above(key).is_none() {
            let nid = self.dir.add(key, &mut self.pool, &mut id);
            self.chunk_mut(nid).insert_at(0, key, v);
            return;
        }
        let half = CAP / 2;
        let fence = c.key(half);
        let nid = self.dir.add(fence, &mut self.pool, &mut id);
        let (c, n) = self.pair_mut(id, nid);
        c.split_into(half, n);
        if key < fence {
            self.chunk_mut(id).insert_at(i, key, v);
        } else {
            self.chunk_mut(nid).insert_at(i - half, key, v);
        }
    }

    /// Removes the entry with this key and returns its value.
    fn take(&mut self, key: u64) -> Option<V> {
        let id = self.find(key)?;
        let c = self.chunk(id);
        let i = c.rank(key);
        if i == 0 || c.key(i - 1) != key {
            return None;
        }
        let v = self.chunk_mut(id).remove_at(i - 1);
        self.len -= 1;
        if self.chunk(id).len < CAP / 4 {
            if let Some((fence, _)) = self.dir.pred(key) {
                self.rebalance(fence, id);
            }
        }
        Some(v)
    }

    /// The chunk where `key` belongs: the one guessed, when it brackets
    /// `key` (see [`Level::chunk_of`]), else the one the walk down the
    /// directory ends at. A LOCK or UNLOCK that has just asked for the
    /// guessed chunk's lines then changes it without the walk, whose lines
    /// nothing else asked for.
    fn find(&self, key: u64) -> Option<u32> {
        if self.len >= GUESS_FROM {
            if let Some((id, ..)) = self.dir.guess(key) {
                if self
                    .pool
                    .chunks
                    .get(id as usize)
                    .is_some_and(|c| c.holds(key))
                {
                    return Some(id);
                }
            }
        }
        Some(self.dir.pred(key)?.1)
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
            self.pool.clear();
            return;
        }
        let here = self.chunk(id).len;
        if let Some((rk, rid)) = self.dir.succ_above(fence) {
            let rlen = self.chunk(rid).len;
            // The right chunk's entries move down under this fence, which
            // is lower: the fence invariant holds. For an empty first chunk
            // that is the only way to keep fence 0.
            if here + rlen <= CAP / 2 || (here == 0 && fence == 0) {
                let r = *self.chunk(rid);
                self.chunk_mut(id).append(&r, rlen);
                self.dir.drop_key(rk, &mut self.pool);
                return;
            }
        }
        if let Some((_, lid)) = self.dir.pred_below(fence) {
            let llen = self.chunk(lid).len;
            if here + llen <= CAP / 2 || here == 0 {
                let c = *self.chunk(id);
                self.chunk_mut(lid).append(&c, here);
                self.dir.drop_key(fence, &mut self.pool);
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
    fn add<W: Copy + Default, const C: usize>(
        &mut self,
        key: u64,
        pool: &mut Pool<W, C>,
        _keep: &mut u32,
    ) -> u32 {
        let id = pool.alloc();
        self.put(key, id);
        id
    }
    fn drop_key<W: Copy + Default, const C: usize>(&mut self, key: u64, pool: &mut Pool<W, C>) {
        pool.release(self.take(key));
    }
    fn count(&self) -> usize {
        self.len
    }
    fn each(&self, f: &mut impl FnMut(u64, u32)) {
        self.dir.each(&mut |_, id| {
            let c = self.chunk(id);
            for i in 0..c.len {
                f(c.keys[i], c.vals[i]);
            }
        });
    }
    fn clear(&mut self) {
        self.dir.clear();
        self.pool.clear();
        self.len = 0;
    }
    fn bytes(&self) -> usize {
        Level::bytes(self)
    }
}

/// The fences of the segment chunks, kept so that a probe can ask for its
/// segment chunk before it knows for sure which one it is. At a million
/// locks the fence chunks (1 to 3 MB) are past a core's L2 and the segment
/// chunks far past every cache: a probe that walked down the directory to
/// its fence chunk and then to the segment chunk it names would wait for
/// the two one after the other, and do the walk's work before either.
///
/// So the segment chunks are in groups, one per fence chunk: the entries of
/// fence chunk `g` name segment chunks `CAP * g` to `CAP * g + CAP - 1`.
/// For each fence chunk a [`Hint`] (40 bytes) says where its entries' keys
/// are and which chunk of the group each names, and a [`Guide`] (two to
/// four buckets of 8 bytes a fence chunk) says which fence chunks each
/// stretch of keys is in. Both stay in cache. From its key alone a probe
/// finds the guide's bucket, the hint, and so the segment chunk it
/// probably wants, asks for its lines, and only then walks the directory,
/// which tells for sure, while they come. A wrong guess costs a few lines
/// read for nothing: the answer never depends on it.
///
/// The price is in the changes. When a fence chunk splits or merges, the
/// segment chunks of the entries that changed chunk move to their new
/// group (at most `CAP / 2` of them, about 8 kB). Every change to a fence
/// chunk brings the hints of it and its neighbours up to date, and the
/// guide's buckets over them unless they are many; the guide is built
/// again (O(fence chunks)) when the fence chunks have doubled or halved or
/// an eighth of them changed beyond what it followed. A group has room for
/// `CAP` segment chunks whatever its fence chunk holds (up to twice the
/// memory of the segment chunks, once every fence chunk has split in
/// halves), but a pool is only as long as its last used place: an index
/// of a few chunks keeps them in the first places of the first group.
#[derive(Default)]
struct Grouped<D, const CAP: usize> {
    fences: Level<u32, D, CAP>,
    hints: Vec<Hint>,
    guide: Guide,
}

/// Which fence chunks each stretch of keys is in: the keys from the second
/// segment chunk's fence (the first is 0) to the last one's, when it was
/// built, in equal buckets, two to four a fence chunk, each with the fence
/// chunk holding its first key and the one holding its last (keys past
/// either end count as in the bucket at that end). A probe takes the
/// second when its key is at or past that one's fence, else the first:
/// right unless a bucket spans three fence chunks.
#[derive(Default)]
struct Guide {
    base: u64,
    shift: u32,
    at: Vec<[u32; 2]>,
    /// Fence chunks when it was built.
    built_for: usize,
    /// Changes it has not followed since.
    stale: usize,
}

impl Guide {
    fn bucket(&self, key: u64) -> usize {
        let b = key
            .saturating_sub(self.base)
            .checked_shr(self.shift)
            .unwrap_or(0);
        usize::try_from(b)
            .unwrap_or(usize::MAX)
            .min(self.at.len().saturating_sub(1))
    }

    /// The first bucket starting at or after `key` (the count of buckets if
    /// there is none).
    fn bucket_from(&self, key: u64) -> usize {
        let b = self.bucket(key);
        b + usize::from(self.start(b) < key)
    }

    fn start(&self, b: usize) -> u64 {
        self.base
            .saturating_add((b as u64).checked_shl(self.shift).unwrap_or(u64::MAX))
    }

    /// Follows fence chunk `g`, which now spans the keys `[from, to)`:
    /// points the buckets whose first or last key it holds at it, unless
    /// they are many or it lies outside the buckets, which then need
    /// building again.
    fn point(&mut self, g: u32, from: u64, to: Option<u64>) {
        let n = self.at.len();
        let first = self.bucket_from(from)..to.map_or(n, |t| self.bucket_from(t));
        let last = self.bucket_from(from.saturating_add(1)).saturating_sub(1)..to.map_or(n, |t| {
            self.bucket_from(t.saturating_add(1)).saturating_sub(1)
        });
        if from < self.base || first.start >= n || first.len() + last.len() > 128 {
            self.stale += 1;
            return;
        }
        for b in first {
            self.at[b][0] = g;
        }
        for b in last {
            self.at[b][1] = g;
        }
    }
}

/// What a probe needs to guess its entry in a fence chunk without it: where
/// each entry's key is, to within 1/256 of the keys the chunk spans, and
/// which segment chunk of its group the entry names, four bits an entry.
#[derive(Clone, Copy, Default)]
struct Hint {
    fence: u64,
    slots: u64,
    /// `(key - fence) >> shift` of each entry, the chunk's fence being its
    /// key in the directory above.
    at: [u8; 16],
    shift: u8,
    len: u8,
}

impl Hint {
    fn of<const CAP: usize>(fence: u64, c: &Chunk<u32, CAP>) -> Hint {
        let keys = &c.keys[..c.len];
        let span = keys.last().map_or(0, |&k| k.saturating_sub(fence));
        let shift = (64 - span.leading_zeros()).saturating_sub(8) as u8;
        let mut h = Hint {
            fence,
            shift,
            len: c.len as u8,
            ..Hint::default()
        };
        for (i, (&k, &v)) in keys.iter().zip(&c.vals).enumerate() {
            h.slots |= u64::from(v % CAP as u32) << (4 * i);
            h.at[i] = (k.saturating_sub(fence) >> shift).min(255) as u8;
        }
        h
    }

    /// The entry probably holding `key`, in a chunk whose fence is
    /// `fence`: its index and the keys it probably covers.
    fn guess(&self, key: u64) -> (usize, u64, Option<u64>) {
        let fence = self.fence;
        let q = ((key - fence) >> self.shift).min(255) as u8;
        let n = usize::from(self.len);
        // A count over all sixteen, as `Chunk::rank` does over its keys.
        let r = self.at[..n]
            .iter()
            .map(|&a| usize::from(a <= q))
            .sum::<usize>()
            .saturating_sub(1);
        let key_of = |i: usize| fence + (u64::from(self.at[i]) << self.shift);
        (r, key_of(r), (r + 1 < n).then(|| key_of(r + 1)))
    }
}

/// The value of a fence entry whose segment chunk is not placed yet.
const PENDING: u32 = u32::MAX;

impl<D: Dir, const CAP: usize> Grouped<D, CAP> {
    /// Four bits an entry.
    const FITS: () = assert!(CAP <= 16);

    /// Moves the segment chunks named from fence chunk `g` that lie outside
    /// its group into free places in it, and with `pending`, places the new
    /// one there and brings the hint up to date. The place given to the new
    /// chunk, if it is here.
    fn regroup<V: Copy + Default, const C: usize>(
        &mut self,
        (fence, g): (u64, u32),
        pool: &mut Pool<V, C>,
        keep: &mut u32,
        pending: bool,
    ) -> Option<u32> {
        let () = Self::FITS;
        let cap = CAP as u32;
        let c = self.fences.pool.chunks.get_mut(g as usize)?;
        let home = |v: u32| v != PENDING && v / cap == g;
        let mut used = 0u32;
        for &v in &c.vals[..c.len] {
            if home(v) {
                used |= 1 << (v % cap);
            }
        }
        let mut placed = None;
        for v in &mut c.vals[..c.len] {
            if home(*v) || (*v == PENDING && !pending) {
                continue;
            }
            // At most CAP entries, so a free place is left.
            let to = g * cap + (!used).trailing_zeros();
            used |= 1 << (to % cap);
            if *v == PENDING {
                pool.place(to);
                placed = Some(to);
            } else {
                pool.relocate(*v, to);
                if *keep == *v {
                    *keep = to;
                }
            }
            *v = to;
        }
        if pending {
            let hint = Hint::of(fence, c);
            if self.hints.len() <= g as usize {
                self.hints.resize(g as usize + 1, Hint::default());
            }
            self.hints[g as usize] = hint;
        }
        placed
    }

    /// Regroups the fence chunk where `key` is and its two neighbours (a
    /// split or a merge of fence chunks is between neighbours), first
    /// moving what is out of place, then placing the new chunk. Its place.
    fn settle<V: Copy + Default, const C: usize>(
        &mut self,
        key: u64,
        pool: &mut Pool<V, C>,
        keep: &mut u32,
    ) -> Option<u32> {
        let here = self.fences.dir.pred(key)?;
        let near = [
            self.fences.dir.pred_below(here.0),
            Some(here),
            self.fences.dir.succ_above(here.0),
        ];
        for &g in near.iter().flatten() {
            self.regroup(g, pool, keep, false);
        }
        let mut placed = None;
        for &g in near.iter().flatten() {
            placed = placed.or(self.regroup(g, pool, keep, true));
        }
        self.follow(near);
        placed
    }

    /// Keeps the guide in step with the fence chunks `near`, which have
    /// just changed, or builds it again when the fence chunks have doubled
    /// or halved, or changed too much for it to follow.
    fn follow(&mut self, near: [Option<(u64, u32)>; 3]) {
        let live = self.fences.dir.count();
        if self.fences.len < GUESS_FROM / SEG_CAP {
            self.guide = Guide::default();
            return;
        }
        let g = &self.guide;
        if g.at.is_empty() || live > 2 * g.built_for || 2 * live < g.built_for || g.stale > live / 8
        {
            self.rebuild();
            return;
        }
        // The chunks in `near` are neighbours, in key order.
        let mut it = near.iter().flatten().peekable();
        while let Some(&(k, g)) = it.next() {
            let next = match it.peek() {
                Some(x) => Some(x.0),
                None => self.fences.dir.succ_above(k).map(|x| x.0),
            };
            self.guide.point(g, k, next);
        }
    }

    fn rebuild(&mut self) {
        let mut fences = Vec::with_capacity(self.fences.dir.count());
        self.fences.dir.each(&mut |k, g| fences.push((k, g)));
        let hi = self.fences.pred(u64::MAX).map_or(0, |x| x.0);
        let lo = self.fences.succ_above(0).map_or(hi, |x| x.0);
        let n = (fences.len() * 2).next_power_of_two();
        let span = hi.saturating_sub(lo);
        let shift = (0..64).find(|&s| (span >> s) < n as u64).unwrap_or(63);
        let mut guide = Guide {
            base: lo,
            shift,
            at: Vec::with_capacity(n),
            built_for: fences.len(),
            stale: 0,
        };
        // The fence chunk holding `key`, for keys in ascending order.
        let mut i = 0;
        let mut holder = |key: u64| {
            while fences.get(i + 1).is_some_and(|f| f.0 <= key) {
                i += 1;
            }
            fences.get(i).map_or(0, |f| f.1)
        };
        for b in 0..n {
            let first = holder(guide.start(b));
            let last = holder(guide.start(b + 1).saturating_sub(1));
            guide.at.push([first, last]);
        }
        if let Some(x) = guide.at.last_mut() {
            x[1] = fences.last().map_or(0, |f| f.1);
        }
        self.guide = guide;
    }
}

impl<D: Dir, const CAP: usize> Dir for Grouped<D, CAP> {
    fn pred(&self, key: u64) -> Option<(u64, u32)> {
        self.fences.pred(key)
    }
    fn pred_next(&self, key: u64) -> Option<(u64, u32, Option<u64>)> {
        self.fences.pred_next(key)
    }
    fn pred_below(&self, key: u64) -> Option<(u64, u32)> {
        self.fences.pred_below(key)
    }
    fn succ_above(&self, key: u64) -> Option<(u64, u32)> {
        self.fences.succ_above(key)
    }
    fn guess(&self, key: u64) -> Option<(u32, u64, Option<u64>)> {
        let [first, last] = *self.guide.at.get(self.guide.bucket(key))?;
        let h = |g: u32| {
            self.hints
                .get(g as usize)
                .filter(|h| h.len > 0 && key >= h.fence)
        };
        let (g, h) = match h(last) {
            Some(h) => (last, h),
            None => (first, h(first)?),
        };
        let (r, lo, hi) = h.guess(key);
        Some((g * CAP as u32 + ((h.slots >> (4 * r)) & 15) as u32, lo, hi))
    }
    fn each(&self, f: &mut impl FnMut(u64, u32)) {
        self.fences.each(f);
    }
    fn add<V: Copy + Default, const C: usize>(
        &mut self,
        key: u64,
        pool: &mut Pool<V, C>,
        keep: &mut u32,
    ) -> u32 {
        self.fences.put(key, PENDING);
        match self.settle(key, pool, keep) {
            Some(id) => id,
            // Not reached: the entry just added is in one of the chunks
            // settled. Should it be, the chunk goes where a plain
            // directory would put it, and only its guesses miss.
            None => {
                let id = pool.alloc();
                if let Some(v) = self.fences.pred(key).and_then(|(k, g)| {
                    let c = self.fences.pool.chunks.get_mut(g as usize)?;
                    let i = c.rank(key).checked_sub(1)?;
                    (k <= key && c.keys[i] == key).then_some(&mut c.vals[i])
                }) {
                    *v = id;
                }
                id
            }
        }
    }
    fn drop_key<V: Copy + Default, const C: usize>(&mut self, key: u64, pool: &mut Pool<V, C>) {
        // Its chunk's place in the group is free once no entry names it;
        // emptied before any chunk is moved there.
        if let Some(id) = self.fences.take(key) {
            pool.empty(id);
        }
        self.settle(key, pool, &mut PENDING.clone());
    }
    fn count(&self) -> usize {
        self.fences.len
    }
    fn clear(&mut self) {
        Dir::clear(&mut self.fences);
        self.hints.clear();
        self.guide = Guide::default();
    }
    fn bytes(&self) -> usize {
        self.fences.bytes()
            + self.hints.capacity() * std::mem::size_of::<Hint>()
            + self.guide.at.capacity() * std::mem::size_of::<[u32; 2]>()
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

type Segs = Level<Tail, Grouped<Level<u32, BTreeMap<u64, u32>, DIR_CAP>, FENCE_CAP>, SEG_CAP>;

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
        let c = l.chunk_of(e, false)?;
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
        // A LOCK checks for conflicts here and then inserts into this
        // chunk, moving the values after its own: every line of them is
        // asked for with the keys.
        let c = l.chunk_of(e, true)?;
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
        groups(x);
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

    /// The segment chunks are in the groups of their fence chunks, each in
    /// a place of its own, and the hints say which.
    fn groups(x: &ExclIndex) {
        let g = &x.segs.dir;
        let mut at = g.fences.dir.pred(0);
        let mut seen = std::collections::HashSet::new();
        while let Some((k, id)) = at {
            let c = g.fences.chunk(id);
            let h = g.hints[id as usize];
            assert_eq!(h.len as usize, c.len);
            for (i, &v) in c.vals[..c.len].iter().enumerate() {
                assert_eq!(v / FENCE_CAP as u32, id, "segment chunk out of its group");
                assert_eq!((h.slots >> (4 * i)) & 15, u64::from(v) % FENCE_CAP as u64);
                assert!(seen.insert(v), "two entries name segment chunk {v}");
            }
            at = g.fences.dir.succ_above(k);
        }
        assert_eq!(seen.len(), g.fences.len);
        // A chunk no entry names is empty, so a probe's guess cannot take it
        // for a live one.
        for (id, c) in x.segs.pool.chunks.iter().enumerate() {
            if !seen.contains(&(id as u32)) {
                assert_eq!(c.len, 0, "segment chunk {id} is named by no entry");
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
        assert!(x.segs.dir.fences.pool.chunks.len() > 4);
        assert!(x.segs.dir.fences.dir.pool.chunks.len() > 1);
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

    /// How often a probe's guess names the segment chunk the fence chunk
    /// then names, out of `keys.len()` probes.
    fn guessed(x: &ExclIndex, keys: impl Iterator<Item = u64>) -> (usize, usize) {
        let (mut right, mut all) = (0, 0);
        for k in keys {
            let guess = x.segs.dir.guess(k).map(|g| g.0);
            right += usize::from(guess.is_some() && guess == x.segs.dir.pred(k).map(|g| g.1));
            all += 1;
        }
        (right, all)
    }

    /// The guesses of a probe are right for segments of one size side by
    /// side, whether added in order (full chunks) or scrambled (chunks
    /// split in halves, their places in the groups in no order), and
    /// still for most probes once a third of them are gone at random.
    #[test]
    fn probes_guess_their_segment_chunk() {
        let n = GUESS_FROM as u64 * 2;
        for order in [1u64, 7919] {
            let mut x = ExclIndex::default();
            for j in 0..n {
                let k = (j * order) % n;
                x.insert(4 * k, 4 * k + 1, OwnerId(1), Who::default());
            }
            let (right, all) = guessed(&x, (0..n).map(|k| 4 * k + 1));
            assert!(right * 100 >= all * 99, "order {order}: {right} of {all}");
            for j in 0..n / 3 {
                x.remove(4 * ((j * 104_729) % n));
            }
            let (right, all) = guessed(&x, (0..n).map(|k| 4 * k + 1));
            assert!(
                right * 100 >= all * 95,
                "order {order}, thinned: {right} of {all}"
            );
        }
    }

    /// Chunks let go (merged away, or moved to another group) keep no
    /// keys a probe could take for live ones: after a stretch of segments
    /// is removed, and another stretch moved about by splits, probes there
    /// get what the model says.
    #[test]
    fn probes_do_not_answer_from_chunks_let_go() {
        let n = GUESS_FROM as u64 * 2;
        let mut x = ExclIndex::default();
        let mut model = BTreeMap::new();
        for k in 0..n {
            x.insert(4 * k, 4 * k + 1, OwnerId(1), Who::default());
            model.insert(4 * k, 4 * k + 1);
        }
        for k in n / 3..2 * n / 3 {
            assert!(x.remove(4 * k));
            model.remove(&(4 * k));
        }
        for k in (2 * n / 3..n).step_by(3) {
            x.insert(4 * k + 2, 4 * k + 2, OwnerId(2), Who::default());
            model.insert(4 * k + 2, 4 * k + 2);
        }
        for k in 0..n {
            for e in [4 * k, 4 * k + 2] {
                let want = model.range(..=e).next_back().filter(|(_, &end)| end >= e);
                let got = x.first_candidate(e, e).map(|(g, _)| (g.start, g.end));
                if got.is_some() {
                    assert_eq!(got, want.map(|(&a, &b)| (a, b)), "first_candidate({e})");
                }
                let got = x.other_than(OwnerId(3), e, e).map(|g| (g.start, g.end));
                assert_eq!(got, want.map(|(&a, &b)| (a, b)), "other_than({e})");
            }
        }
        check(&x, &model);
    }

    #[test]
    fn an_emptied_index_keeps_one_chunk_for_the_next_entry() {
        let mut x = ExclIndex::default();
        for round in 0..3u64 {
            x.insert(10 + round, 20 + round, OwnerId(1), Who::default());
            assert!(x.remove(10 + round));
            check(&x, &BTreeMap::new());
            // Still one chunk at each level, reused: nothing allocated.
            assert_eq!(x.segs.pool.chunks.len(), 1);
            assert_eq!(x.segs.dir.fences.pool.chunks.len(), 1);
            assert_eq!(x.segs.dir.fences.dir.pool.chunks.len(), 1);
            assert_eq!(x.segs.dir.fences.dir.dir.len(), 1);
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
