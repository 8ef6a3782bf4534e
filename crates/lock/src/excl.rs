//! The exclusive held segments of one file, by start.
//!
//! They are pairwise disjoint (an exclusive lock conflicts with every other
//! owner's lock, and one owner's segments never overlap), so their ends are
//! sorted as well and the ones overlapping a range are one run. That needs
//! no interval tree, only an ordered index, and the index is laid out for
//! the memory hierarchy: sorted chunks of up to [`CAP`] segments with start,
//! end and owner in contiguous arrays, found through a B-tree of the
//! chunks' lower fences. The fence tree holds one key per chunk (1/16 to
//! 1/32 of the segments), so it stays in cache at a million locks, and a
//! probe reads one chunk: about one cache miss where a treap or a B-tree of
//! small nodes takes one per level, and the answer (end and owner) comes
//! with it.
//!
//! Cost: insert, remove and a probe are O(log n) for the fence tree plus
//! O([`CAP`]) within a chunk.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};

use crate::types::OwnerId;

/// Segments per chunk: 32 starts fill four cache lines, searched without
/// dependent loads.
const CAP: usize = 32;
/// A chunk this small after a removal is merged into a neighbour when the
/// two fit in half a chunk together, so chunks hold CAP/8 segments or more
/// on average and the fence tree stays O(n / CAP).
const LOW: usize = CAP / 4;

/// A held segment as the conflict questions report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub start: u64,
    pub end: u64,
    pub owner: OwnerId,
    pub excl: bool,
}

struct Chunk {
    len: usize,
    start: [u64; CAP],
    end: [u64; CAP],
    owner: [OwnerId; CAP],
}

impl Chunk {
    fn new() -> Box<Chunk> {
        Box::new(Chunk {
            len: 0,
            start: [0; CAP],
            end: [0; CAP],
            owner: [OwnerId(0); CAP],
        })
    }

    /// How many segments start at or before `at` (a branch-free count the
    /// compiler vectorises: all four lines are loaded at once).
    fn rank(&self, at: u64) -> usize {
        self.start[..self.len]
            .iter()
            .map(|&s| usize::from(s <= at))
            .sum()
    }

    fn seg(&self, i: usize) -> Seg {
        Seg {
            start: self.start[i],
            end: self.end[i],
            owner: self.owner[i],
            excl: true,
        }
    }

    fn insert_at(&mut self, i: usize, start: u64, end: u64, owner: OwnerId) {
        let n = self.len;
        self.start.copy_within(i..n, i + 1);
        self.end.copy_within(i..n, i + 1);
        self.owner.copy_within(i..n, i + 1);
        self.start[i] = start;
        self.end[i] = end;
        self.owner[i] = owner;
        self.len += 1;
    }

    fn remove_at(&mut self, i: usize) {
        let n = self.len;
        self.start.copy_within(i + 1..n, i);
        self.end.copy_within(i + 1..n, i);
        self.owner.copy_within(i + 1..n, i);
        self.len -= 1;
    }

    /// Appends `other`, whose segments all start after ours; the caller
    /// checked that they fit.
    fn append(&mut self, other: &Chunk) {
        let (n, m) = (self.len, other.len);
        self.start[n..n + m].copy_from_slice(&other.start[..m]);
        self.end[n..n + m].copy_from_slice(&other.end[..m]);
        self.owner[n..n + m].copy_from_slice(&other.owner[..m]);
        self.len += m;
    }

    /// Moves the segments from `at` on into a new chunk.
    fn split_off(&mut self, at: usize) -> Box<Chunk> {
        let mut upper = Chunk::new();
        let m = self.len - at;
        upper.start[..m].copy_from_slice(&self.start[at..self.len]);
        upper.end[..m].copy_from_slice(&self.end[at..self.len]);
        upper.owner[..m].copy_from_slice(&self.owner[at..self.len]);
        upper.len = m;
        self.len = at;
        upper
    }

    /// Calls `f` on the segments from index `i` on that start at or before
    /// `e` and end at or after `s`. `Some(keep_going)` once the run is over
    /// (a segment starts past `e`, or `f` said stop), `None` if the chunk
    /// ran out first.
    fn scan(&self, i: usize, s: u64, e: u64, f: &mut impl FnMut(Seg) -> bool) -> Option<bool> {
        for j in i..self.len {
            if self.start[j] > e {
                return Some(true);
            }
            if self.end[j] >= s && !f(self.seg(j)) {
                return Some(false);
            }
        }
        None
    }
}

/// Invariants: the chunk with the lowest fence has fence 0 (so every start
/// has a chunk); each chunk's segments start at or after its fence and
/// before the next fence, in order; no chunk is empty unless the index is
/// (then there is no chunk at all).
#[derive(Default)]
pub(crate) struct ExclIndex {
    chunks: BTreeMap<u64, Box<Chunk>>,
    len: usize,
}

impl ExclIndex {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes (chunks, and the fence tree estimated), for the memory
    /// report.
    pub fn bytes(&self) -> usize {
        self.chunks.len() * (std::mem::size_of::<Chunk>() + 24)
    }

    /// Adds a segment; it must not overlap any segment already here.
    pub fn insert(&mut self, start: u64, end: u64, owner: OwnerId) {
        self.len += 1;
        let Some((_, c)) = self.chunks.range_mut(..=start).next_back() else {
            let mut c = Chunk::new();
            c.insert_at(0, start, end, owner);
            self.chunks.insert(0, c);
            return;
        };
        let i = c.rank(start);
        if c.len < CAP {
            c.insert_at(i, start, end, owner);
            return;
        }
        // Full. Appending past the last chunk starts a new one (so a file
        // locked in ascending order packs its chunks full); otherwise the
        // chunk splits in halves.
        let last = self
            .chunks
            .range((Excluded(start), Unbounded))
            .next()
            .is_none();
        let Some((_, c)) = self.chunks.range_mut(..=start).next_back() else {
            return;
        };
        let (fence, upper) = if last && i == CAP {
            let mut upper = Chunk::new();
            upper.insert_at(0, start, end, owner);
            (start, upper)
        } else {
            let mut upper = c.split_off(CAP / 2);
            let fence = upper.start[0];
            if start < fence {
                c.insert_at(i, start, end, owner);
            } else {
                upper.insert_at(i - CAP / 2, start, end, owner);
            }
            (fence, upper)
        };
        self.chunks.insert(fence, upper);
    }

    /// Removes the segment starting at `start`; `false` if there is none.
    pub fn remove(&mut self, start: u64) -> bool {
        let Some((&fence, c)) = self.chunks.range_mut(..=start).next_back() else {
            return false;
        };
        let i = c.rank(start);
        if i == 0 || c.start[i - 1] != start {
            return false;
        }
        c.remove_at(i - 1);
        self.len -= 1;
        if c.len < LOW {
            self.rebalance(fence);
        }
        true
    }

    /// Merges a small chunk with a neighbour when they fit in half a chunk;
    /// drops it when it is empty.
    fn rebalance(&mut self, fence: u64) {
        if self.len == 0 {
            self.chunks.clear();
            return;
        }
        let size = |c: Option<(&u64, &Box<Chunk>)>| c.map(|(&k, c)| (k, c.len));
        let here = self.chunks.get(&fence).map_or(0, |c| c.len);
        let right = size(self.chunks.range((Excluded(fence), Unbounded)).next());
        let left = size(self.chunks.range(..fence).next_back());
        if let Some((rk, rlen)) = right {
            if here + rlen <= CAP / 2 || (here == 0 && fence == 0) {
                // The right chunk's segments move down into this one, whose
                // fence is lower: the fence invariant holds. When this is
                // the first chunk and empty, that is the only way to keep
                // fence 0 without an empty chunk.
                if let Some(r) = self.chunks.remove(&rk) {
                    if here == 0 {
                        self.chunks.insert(fence, r);
                    } else if let Some(c) = self.chunks.get_mut(&fence) {
                        c.append(&r);
                    }
                }
                return;
            }
        }
        if let Some((lk, llen)) = left {
            if here + llen <= CAP / 2 || here == 0 {
                if let Some(c) = self.chunks.remove(&fence) {
                    if let Some(l) = self.chunks.get_mut(&lk) {
                        l.append(&c);
                    }
                }
            }
        }
    }

    /// Calls `f` on every segment overlapping `[s, e]`, in start order,
    /// until it returns `false`; returns `false` if stopped early.
    pub fn visit(&self, s: u64, e: u64, mut f: impl FnMut(Seg) -> bool) -> bool {
        let Some((&fence, c)) = self.chunks.range(..=s).next_back() else {
            return true;
        };
        // The segment that may contain `s` is the last one starting at or
        // before it: in this chunk, or else the previous chunk's last.
        let i = c.rank(s);
        if i == 0 {
            if let Some((_, p)) = self.chunks.range(..fence).next_back() {
                if let Some(done) = p.scan(p.len.saturating_sub(1), s, e, &mut f) {
                    return done;
                }
            }
        }
        if let Some(done) = c.scan(i.saturating_sub(1), s, e, &mut f) {
            return done;
        }
        for (_, c) in self.chunks.range((Excluded(fence), Unbounded)) {
            if let Some(done) = c.scan(0, s, e, &mut f) {
                return done;
            }
        }
        true
    }

    /// The first segment overlapping `[s, e]` held by someone other than
    /// `owner`.
    pub fn other_than(&self, owner: OwnerId, s: u64, e: u64) -> Option<Seg> {
        let mut found = None;
        self.visit(s, e, |seg| {
            if seg.owner == owner {
                return true;
            }
            found = Some(seg);
            false
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut prev: Option<u64> = None;
        for (&k, c) in &x.chunks {
            assert!(c.len > 0, "empty chunk");
            if prev.is_none() {
                assert_eq!(k, 0);
            }
            assert!(c.start[0] >= k);
            prev = Some(k);
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
            x.insert(4 * k, 4 * k + 1, OwnerId(k as u32));
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
        assert!(x.chunks.is_empty());
        for k in 0..200u64 {
            x.insert(2 * k, 2 * k, OwnerId(0));
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
}
