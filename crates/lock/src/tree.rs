//! An arena treap of ranges with two intrusive orders over the same nodes.
//!
//! Order 0 sorts by `(start, slot)` and carries the largest `end` of each
//! subtree, for all nodes and for exclusive nodes alone, so "is there an
//! exclusive range, or any range, overlapping `[s, e]`" prunes to
//! O(log n + hits) even when thousands of owners hold overlapping shared
//! ranges. Order 1 (optional) sorts by `(owner, start, slot)`, which gives
//! each owner's ranges in order for POSIX merge and split without a
//! per-owner map (a `BTreeMap` per owner would cost a few hundred bytes per
//! owner holding a single lock).
//!
//! Priorities are a hash of the slot number: deterministic (the engine must
//! replay exactly) and independent of the keys, which is all a treap needs
//! for expected O(log n) depth.

use crate::types::OwnerId;

pub(crate) const NIL: u32 = u32::MAX;

pub(crate) struct Node<P> {
    pub start: u64,
    pub end: u64,
    pub owner: OwnerId,
    pub excl: bool,
    pub payload: P,
    link: [[u32; 2]; 2],
    max_end: u64,
    /// `None` when the subtree holds no exclusive range.
    max_end_excl: Option<u64>,
    /// `None` when the subtree holds no shared range: a file with only
    /// exclusive locks answers "any shared lock here?" at the root.
    max_end_shared: Option<u64>,
}

/// Which ranges a visit looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    All,
    Excl,
    Shared,
}

impl Filter {
    /// The ranges a request in mode `excl` conflicts with.
    pub fn conflicting(excl: bool) -> Filter {
        if excl {
            Filter::All
        } else {
            Filter::Excl
        }
    }
}

pub(crate) struct Tree<P> {
    nodes: Vec<Node<P>>,
    free: Vec<u32>,
    root: [u32; 2],
    len: usize,
    owner_order: bool,
    /// Whether exclusive nodes are in order 0. The held-lock tree leaves
    /// them out: they are pairwise disjoint and live in the file's
    /// [`crate::excl::ExclIndex`], which answers for them with fewer cache
    /// misses, so order 0 there holds the shared segments only.
    excl_in_order0: bool,
}

type Key = (u32, u64, u32);

fn prio(slot: u32) -> u64 {
    // splitmix64 finaliser: a bijection, so distinct slots never tie.
    let mut z = u64::from(slot).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl<P> Tree<P> {
    pub fn new(owner_order: bool, excl_in_order0: bool) -> Self {
        Tree {
            nodes: Vec::new(),
            free: Vec::new(),
            root: [NIL; 2],
            len: 0,
            owner_order,
            excl_in_order0,
        }
    }

    fn linked(&self, order: usize, slot: u32) -> bool {
        order != 0 || self.excl_in_order0 || !self.nodes[slot as usize].excl
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, slot: u32) -> &Node<P> {
        &self.nodes[slot as usize]
    }

    /// Heap bytes reserved by the arena (for the memory report).
    pub fn capacity_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node<P>>()
            + self.free.capacity() * std::mem::size_of::<u32>()
    }

    fn key(&self, order: usize, slot: u32) -> Key {
        let n = &self.nodes[slot as usize];
        if order == 0 {
            (0, n.start, slot)
        } else {
            (n.owner.0, n.start, slot)
        }
    }

    fn child(&self, slot: u32, order: usize, side: usize) -> u32 {
        self.nodes[slot as usize].link[order][side]
    }

    fn set_child(&mut self, slot: u32, order: usize, side: usize, to: u32) {
        self.nodes[slot as usize].link[order][side] = to;
    }

    fn update(&mut self, slot: u32, order: usize) {
        if order != 0 {
            return;
        }
        let n = &self.nodes[slot as usize];
        let mut max_end = n.end;
        let mut max_excl = n.excl.then_some(n.end);
        let mut max_shared = (!n.excl).then_some(n.end);
        for side in 0..2 {
            let c = n.link[0][side];
            if c != NIL {
                let cn = &self.nodes[c as usize];
                max_end = max_end.max(cn.max_end);
                max_excl = max_excl.max(cn.max_end_excl);
                max_shared = max_shared.max(cn.max_end_shared);
            }
        }
        let n = &mut self.nodes[slot as usize];
        n.max_end = max_end;
        n.max_end_excl = max_excl;
        n.max_end_shared = max_shared;
    }

    /// Splits `t` into keys `< key` and keys `>= key`.
    fn split(&mut self, t: u32, key: Key, order: usize) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.key(order, t) < key {
            let (a, b) = self.split(self.child(t, order, 1), key, order);
            self.set_child(t, order, 1, a);
            self.update(t, order);
            (t, b)
        } else {
            let (a, b) = self.split(self.child(t, order, 0), key, order);
            self.set_child(t, order, 0, b);
            self.update(t, order);
            (a, t)
        }
    }

    /// Joins two treaps where every key of `a` is below every key of `b`.
    fn merge(&mut self, a: u32, b: u32, order: usize) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if prio(a) > prio(b) {
            let r = self.merge(self.child(a, order, 1), b, order);
            self.set_child(a, order, 1, r);
            self.update(a, order);
            a
        } else {
            let l = self.merge(a, self.child(b, order, 0), order);
            self.set_child(b, order, 0, l);
            self.update(b, order);
            b
        }
    }

    /// Puts `slot` (keyed `key`, linked to nothing) into the subtree `t`;
    /// returns the subtree's new root. One descent: the new node goes in
    /// where its priority places it, over the split of what was there.
    fn insert_rec(&mut self, t: u32, slot: u32, key: Key, order: usize) -> u32 {
        if t == NIL {
            return slot;
        }
        if prio(slot) > prio(t) {
            let (a, b) = self.split(t, key, order);
            self.set_child(slot, order, 0, a);
            self.set_child(slot, order, 1, b);
            self.update(slot, order);
            return slot;
        }
        let side = usize::from(key > self.key(order, t));
        let c = self.insert_rec(self.child(t, order, side), slot, key, order);
        self.set_child(t, order, side, c);
        self.update(t, order);
        t
    }

    /// Takes the node keyed `key` out of the subtree `t`, which holds it;
    /// returns the subtree's new root. One descent, then the node's two
    /// children joined in its place.
    fn remove_rec(&mut self, t: u32, key: Key, order: usize) -> u32 {
        if t == NIL {
            return NIL;
        }
        let k = self.key(order, t);
        if k == key {
            return self.merge(self.child(t, order, 0), self.child(t, order, 1), order);
        }
        let side = usize::from(key > k);
        let c = self.remove_rec(self.child(t, order, side), key, order);
        self.set_child(t, order, side, c);
        self.update(t, order);
        t
    }

    fn orders(&self) -> usize {
        if self.owner_order {
            2
        } else {
            1
        }
    }

    pub fn insert(&mut self, start: u64, end: u64, owner: OwnerId, excl: bool, payload: P) -> u32 {
        let node = Node {
            start,
            end,
            owner,
            excl,
            payload,
            link: [[NIL; 2]; 2],
            max_end: end,
            max_end_excl: excl.then_some(end),
            max_end_shared: (!excl).then_some(end),
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.nodes[s as usize] = node;
                s
            }
            None => {
                self.nodes.push(node);
                // Slot NIL is never handed out: the engine's bounds keep
                // every file far below 2^32 entries.
                (self.nodes.len() - 1) as u32
            }
        };
        for order in 0..self.orders() {
            if !self.linked(order, slot) {
                continue;
            }
            let key = self.key(order, slot);
            self.root[order] = self.insert_rec(self.root[order], slot, key, order);
        }
        self.len += 1;
        slot
    }

    pub fn remove(&mut self, slot: u32) {
        for order in 0..self.orders() {
            if !self.linked(order, slot) {
                continue;
            }
            let key = self.key(order, slot);
            self.root[order] = self.remove_rec(self.root[order], key, order);
        }
        self.nodes[slot as usize].link = [[NIL; 2]; 2];
        self.free.push(slot);
        self.len -= 1;
    }

    /// Calls `f` on every node in order 0 overlapping `[s, e]` that passes
    /// `filter`, in start order, until `f` returns `false`. Returns `false` if stopped
    /// early.
    pub fn visit_overlaps(
        &self,
        s: u64,
        e: u64,
        filter: Filter,
        f: &mut dyn FnMut(u32) -> bool,
    ) -> bool {
        self.visit_rec(self.root[0], s, e, filter, f)
    }

    fn visit_rec(
        &self,
        t: u32,
        s: u64,
        e: u64,
        filter: Filter,
        f: &mut dyn FnMut(u32) -> bool,
    ) -> bool {
        if t == NIL {
            return true;
        }
        let n = &self.nodes[t as usize];
        let reach = match filter {
            Filter::All => Some(n.max_end),
            Filter::Excl => n.max_end_excl,
            Filter::Shared => n.max_end_shared,
        };
        match reach {
            Some(m) if m >= s => {}
            _ => return true,
        }
        if !self.visit_rec(n.link[0][0], s, e, filter, f) {
            return false;
        }
        if n.start > e {
            return true;
        }
        let pass = match filter {
            Filter::All => true,
            Filter::Excl => n.excl,
            Filter::Shared => !n.excl,
        };
        if n.end >= s && pass && !f(t) {
            return false;
        }
        self.visit_rec(n.link[0][1], s, e, filter, f)
    }

    /// The nodes of `owner` with `from <= start <= to`, in start order.
    pub fn owner_range(&self, owner: OwnerId, from: u64, to: u64, out: &mut Vec<u32>) {
        debug_assert!(self.owner_order);
        self.owner_rec(self.root[1], (owner.0, from, 0), (owner.0, to, NIL), out);
    }

    fn owner_rec(&self, t: u32, lo: Key, hi: Key, out: &mut Vec<u32>) {
        if t == NIL {
            return;
        }
        let k = self.key(1, t);
        if k > lo {
            self.owner_rec(self.child(t, 1, 0), lo, hi, out);
        }
        if lo <= k && k <= hi {
            out.push(t);
        }
        if k < hi {
            self.owner_rec(self.child(t, 1, 1), lo, hi, out);
        }
    }

    /// The node of `owner` with the largest start `<= at`.
    pub fn owner_pred(&self, owner: OwnerId, at: u64) -> Option<u32> {
        debug_assert!(self.owner_order);
        let bound = (owner.0, at, NIL);
        let mut t = self.root[1];
        let mut best = None;
        while t != NIL {
            let k = self.key(1, t);
            if k <= bound {
                if k.0 == owner.0 {
                    best = Some(t);
                }
                t = self.child(t, 1, 1);
            } else {
                t = self.child(t, 1, 0);
            }
        }
        best
    }

    /// Every node of `owner` overlapping `[s, e]`, in start order. An
    /// owner's ranges in this tree never overlap each other, so only the
    /// predecessor of `s` can reach into the range from the left.
    pub fn owner_overlaps(&self, owner: OwnerId, s: u64, e: u64, out: &mut Vec<u32>) {
        if let Some(p) = self.owner_pred(owner, s) {
            if self.nodes[p as usize].end >= s {
                out.push(p);
            }
        }
        if s < e {
            self.owner_range(owner, s + 1, e, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks both orders against `model` (slot -> (start, end, owner,
    /// excl)): in-order keys, heap order of priorities, and the maxima of
    /// order 0.
    fn check(t: &Tree<()>, model: &std::collections::BTreeMap<u32, (u64, u64, u32, bool)>) {
        assert_eq!(t.len(), model.len());
        for order in 0..2 {
            let mut got = Vec::new();
            walk(t, t.root[order], order, &mut got);
            let mut want: Vec<Key> = model
                .iter()
                .filter(|(_, v)| order == 1 || !v.3)
                .map(|(&slot, v)| {
                    if order == 0 {
                        (0, v.0, slot)
                    } else {
                        (v.2, v.0, slot)
                    }
                })
                .collect();
            want.sort();
            assert_eq!(got, want, "order {order}");
        }
    }

    /// In-order keys of subtree `n`; asserts heap order and the maxima.
    fn walk(
        t: &Tree<()>,
        n: u32,
        order: usize,
        out: &mut Vec<Key>,
    ) -> (u64, Option<u64>, Option<u64>) {
        if n == NIL {
            return (0, None, None);
        }
        let node = t.get(n);
        let mut max = (
            node.end,
            node.excl.then_some(node.end),
            (!node.excl).then_some(node.end),
        );
        for side in 0..2 {
            let c = t.child(n, order, side);
            if side == 1 {
                out.push(t.key(order, n));
            }
            let m = walk(t, c, order, out);
            if c != NIL {
                assert!(prio(c) < prio(n), "heap order");
                max = (max.0.max(m.0), max.1.max(m.1), max.2.max(m.2));
            }
        }
        if order == 0 {
            assert_eq!((node.max_end, node.max_end_excl, node.max_end_shared), max);
        }
        max
    }

    #[test]
    fn inserts_and_removes_keep_both_orders() {
        let mut t: Tree<()> = Tree::new(true, false);
        let mut model = std::collections::BTreeMap::new();
        let mut x = 12345u64;
        for step in 0..3000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = x >> 33;
            if r % 5 < 3 || model.is_empty() {
                let (start, owner, excl) = (r % 200, (r >> 8) as u32 % 7, (r >> 12) % 2 == 0);
                let end = start + (r >> 16) % 30;
                let slot = t.insert(start, end, OwnerId(owner), excl, ());
                assert!(model.insert(slot, (start, end, owner, excl)).is_none());
            } else {
                let pick = (r >> 20) as usize % model.len();
                let slot = *model.keys().nth(pick).unwrap_or(&0);
                t.remove(slot);
                model.remove(&slot);
            }
            if step % 50 == 0 {
                check(&t, &model);
            }
        }
        check(&t, &model);
        for slot in model.keys().copied().collect::<Vec<_>>() {
            t.remove(slot);
        }
        model.clear();
        check(&t, &model);
        assert_eq!(t.root, [NIL; 2]);
    }
}
