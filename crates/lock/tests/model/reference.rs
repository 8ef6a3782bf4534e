//! The naive reference model: cells, a FIFO list, a fixpoint and a full
//! wait-for graph search.

use std::collections::{BTreeMap, HashSet};

use latch_lock::{
    Bound, Error, Event, Holder, LeaseAnswer, LeaseKind, Limits, LockAnswer, Mode, Range,
    RequestId, Share, ShareAnswer,
};

use super::{file, owner, BREAK_TIME, FILES, OWNERS};

pub const CELLS: usize = 17;

pub fn cells_of(r: Range) -> std::ops::RangeInclusive<usize> {
    let s = r.start() as usize;
    let e = if r.end() == u64::MAX {
        CELLS - 1
    } else {
        r.end() as usize
    };
    assert!(
        s < CELLS && e < CELLS - 1 || r.end() == u64::MAX,
        "odd range {r:?}"
    );
    s..=e
}

#[derive(Clone, Debug)]
pub struct MWaiter {
    pub id: RequestId,
    pub f: usize,
    pub o: usize,
    pub r: Range,
    pub x: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct MLease {
    pub write: bool,
    /// (deadline, break to read?)
    pub breaking: Option<(u64, bool)>,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub limits: Limits,
    pub grace: bool,
    /// cells[f][o][c]: None, Some(false) shared, Some(true) exclusive.
    pub cells: Vec<Vec<[Option<bool>; CELLS]>>,
    pub waiters: Vec<MWaiter>,
    pub shares: BTreeMap<(usize, usize), (u32, u32)>,
    pub leases: BTreeMap<(usize, usize), MLease>,
    pub engine_ids: u64,
}

pub fn conflicts(a: bool, b: bool) -> bool {
    a || b
}

pub fn overlap(a: Range, b: Range) -> bool {
    a.start() <= b.end() && b.start() <= a.end()
}

pub fn host(o: usize) -> u64 {
    OWNERS[o].0
}

impl Model {
    pub fn new(limits: Limits) -> Self {
        Model {
            limits,
            grace: false,
            cells: vec![vec![[None; CELLS]; OWNERS.len()]; FILES],
            waiters: Vec::new(),
            shares: BTreeMap::new(),
            leases: BTreeMap::new(),
            engine_ids: RequestId::ENGINE_BASE,
        }
    }

    pub fn runs(row: &[Option<bool>; CELLS]) -> usize {
        (0..CELLS)
            .filter(|&c| row[c].is_some() && (c == 0 || row[c - 1] != row[c]))
            .count()
    }

    pub fn entries_where(&self, pick: impl Fn(usize) -> bool) -> usize {
        let mut n = 0;
        for f in 0..FILES {
            for o in 0..OWNERS.len() {
                if pick(o) {
                    n += Self::runs(&self.cells[f][o]);
                }
            }
        }
        n += self.waiters.iter().filter(|w| pick(w.o)).count();
        n += self.shares.keys().filter(|k| pick(k.1)).count();
        n += self.leases.keys().filter(|k| pick(k.1)).count();
        n
    }

    pub fn room(&self, o: usize, delta: isize) -> Result<(), Error> {
        if delta <= 0 {
            return Ok(());
        }
        let d = delta as usize;
        if self.entries_where(|_| true) + d > self.limits.entries_total {
            return Err(Error::NoLocks(Bound::EntriesTotal));
        }
        if self.entries_where(|p| host(p) == host(o)) + d > self.limits.entries_per_host {
            return Err(Error::NoLocks(Bound::EntriesPerHost));
        }
        Ok(())
    }

    pub fn set_cells(
        &self,
        f: usize,
        o: usize,
        r: Range,
        v: Option<bool>,
    ) -> [Option<bool>; CELLS] {
        let mut row = self.cells[f][o];
        for c in cells_of(r) {
            row[c] = v;
        }
        row
    }

    pub fn holder_conflict(&self, f: usize, o: usize, r: Range, x: bool) -> bool {
        (0..OWNERS.len()).any(|p| {
            p != o && cells_of(r).any(|c| matches!(self.cells[f][p][c], Some(m) if conflicts(m, x)))
        })
    }

    /// The owners a request conflicts with among holders and among the
    /// waiters in `earlier`.
    pub fn blockers(
        &self,
        f: usize,
        o: usize,
        r: Range,
        x: bool,
        earlier: &[MWaiter],
    ) -> Vec<usize> {
        let mut b: Vec<usize> = (0..OWNERS.len())
            .filter(|&p| {
                p != o
                    && cells_of(r)
                        .any(|c| matches!(self.cells[f][p][c], Some(m) if conflicts(m, x)))
            })
            .collect();
        for w in earlier {
            if w.f == f && w.o != o && overlap(w.r, r) && conflicts(w.x, x) {
                b.push(w.o);
            }
        }
        b
    }

    /// A lease interest is "write" for exclusive locks, write leases and
    /// shares that write or deny reads.
    pub fn lease_targets(&self, f: usize, o: usize, write: bool) -> Vec<(usize, bool)> {
        self.leases
            .iter()
            .filter(|((lf, lo), l)| *lf == f && *lo != o && (write || l.write))
            .map(|((_, lo), _)| (*lo, !write))
            .collect()
    }

    pub fn start_breaks(&mut self, f: usize, o: usize, write: bool, now: u64, ev: &mut Vec<Event>) {
        for (p, to_read) in self.lease_targets(f, o, write) {
            let l = self.leases.get_mut(&(f, p)).unwrap();
            let announce = match &mut l.breaking {
                None => {
                    l.breaking = Some((now + BREAK_TIME, to_read));
                    true
                }
                Some((_, tr)) if *tr && !to_read => {
                    *tr = false;
                    true
                }
                _ => false,
            };
            if announce {
                ev.push(Event::LeaseBreak {
                    file: file(f),
                    holder: owner(p),
                    to: to_read.then_some(LeaseKind::Read),
                });
            }
        }
    }

    pub fn grantable(&self, i: usize) -> bool {
        let w = &self.waiters[i];
        self.blockers(w.f, w.o, w.r, w.x, &self.waiters[..i])
            .is_empty()
            && self.lease_targets(w.f, w.o, w.x).is_empty()
    }

    pub fn settle(&mut self, ev: &mut Vec<Event>) {
        'again: loop {
            for i in 0..self.waiters.len() {
                if self.grantable(i) {
                    let w = self.waiters.remove(i);
                    let x = w.x;
                    self.cells[w.f][w.o] = self.set_cells(w.f, w.o, w.r, Some(x));
                    ev.push(Event::Granted {
                        id: w.id,
                        file: file(w.f),
                        owner: owner(w.o),
                        range: w.r,
                        mode: if x { Mode::Exclusive } else { Mode::Shared },
                    });
                    continue 'again;
                }
            }
            break;
        }
    }

    pub fn deadlock(&self, f: usize, o: usize, r: Range, x: bool) -> bool {
        let mut edges: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, w) in self.waiters.iter().enumerate() {
            let b = self.blockers(w.f, w.o, w.r, w.x, &self.waiters[..i]);
            edges.entry(w.o).or_default().extend(b);
        }
        let mut stack = self.blockers(f, o, r, x, &self.waiters);
        let mut seen = HashSet::new();
        while let Some(p) = stack.pop() {
            if p == o {
                return true;
            }
            if seen.insert(p) {
                stack.extend(edges.get(&p).into_iter().flatten().copied());
            }
        }
        false
    }

    #[allow(clippy::too_many_arguments)]
    pub fn lock(
        &mut self,
        f: usize,
        o: usize,
        r: Range,
        x: bool,
        block: bool,
        reclaim: bool,
        id: Option<RequestId>,
        now: u64,
        ev: &mut Vec<Event>,
    ) -> Result<LockAnswer, Error> {
        if self.grace && !reclaim {
            return Ok(LockAnswer::DeniedGrace);
        }
        if block {
            if let Some(w) = self
                .waiters
                .iter()
                .find(|w| w.f == f && w.o == o && w.r == r && w.x == x)
            {
                return Ok(LockAnswer::Blocked(w.id));
            }
        }
        let row = self.cells[f][o];
        let covered = cells_of(r).all(|c| matches!(row[c], Some(m) if m || !x));
        let new_row = self.set_cells(f, o, r, Some(x));
        let delta = Self::runs(&new_row) as isize - Self::runs(&row) as isize;
        if covered {
            self.room(o, delta)?;
            self.cells[f][o] = new_row;
            return Ok(LockAnswer::Granted);
        }
        let holder = self.holder_conflict(f, o, r, x);
        let blockers = self.blockers(f, o, r, x, &self.waiters);
        let leases = !self.lease_targets(f, o, x).is_empty();
        if blockers.is_empty() && !leases {
            self.room(o, delta)?;
            self.cells[f][o] = new_row;
            return Ok(LockAnswer::Granted);
        }
        if !block {
            self.start_breaks(f, o, x, now, ev);
            // The holder itself is checked against the model by the caller.
            return Ok(LockAnswer::Denied(holder.then(|| Holder {
                owner: owner(o),
                mode: Mode::Shared,
                range: r,
            })));
        }
        if self.deadlock(f, o, r, x) {
            return Ok(LockAnswer::Deadlock);
        }
        if self.waiters.iter().filter(|w| w.f == f).count() >= self.limits.waiters_per_file {
            return Err(Error::NoLocks(Bound::WaitersPerFile));
        }
        self.room(o, 1)?;
        self.start_breaks(f, o, x, now, ev);
        let id = id.unwrap_or_else(|| {
            self.engine_ids += 1;
            RequestId(self.engine_ids - 1)
        });
        self.waiters.push(MWaiter { id, f, o, r, x });
        Ok(LockAnswer::Blocked(id))
    }

    pub fn release(&mut self, o: usize) {
        for f in 0..FILES {
            self.cells[f][o] = [None; CELLS];
        }
        self.waiters.retain(|w| w.o != o);
        self.shares.retain(|k, _| k.1 != o);
        self.leases.retain(|k, _| k.1 != o);
    }

    pub fn share(
        &mut self,
        f: usize,
        o: usize,
        s: Share,
        reclaim: bool,
        now: u64,
        ev: &mut Vec<Event>,
    ) -> Result<ShareAnswer, Error> {
        if self.grace && !reclaim {
            return Ok(ShareAnswer::DeniedGrace);
        }
        let (acc, deny) = (s.access.wire(), s.deny.wire());
        let clash = self
            .shares
            .iter()
            .any(|(k, (a, d))| k.0 == f && k.1 != o && (acc & d != 0 || a & deny != 0));
        let write = acc & 2 != 0 || deny & 1 != 0;
        let leases = !self.lease_targets(f, o, write).is_empty();
        if clash || leases {
            self.start_breaks(f, o, write, now, ev);
            return Ok(ShareAnswer::Denied);
        }
        if !self.shares.contains_key(&(f, o)) {
            self.room(o, 1)?;
        }
        self.shares.insert((f, o), (acc, deny));
        Ok(ShareAnswer::Granted)
    }

    pub fn lease(
        &mut self,
        f: usize,
        o: usize,
        write: bool,
        now: u64,
        ev: &mut Vec<Event>,
    ) -> Result<LeaseAnswer, Error> {
        if self.grace {
            return Ok(LeaseAnswer::DeniedGrace);
        }
        if let Some(l) = self.leases.get_mut(&(f, o)) {
            if l.write == write {
                return Ok(LeaseAnswer::Granted);
            }
            if !write {
                l.write = false;
                if matches!(l.breaking, Some((_, true))) {
                    l.breaking = None;
                }
                return Ok(LeaseAnswer::Granted);
            }
            if l.breaking.is_some() {
                return Ok(LeaseAnswer::Denied);
            }
        }
        let others = |p: usize| p != o;
        let held = (0..OWNERS.len()).any(|p| {
            others(p)
                && self.cells[f][p]
                    .iter()
                    .any(|c| matches!(c, Some(m) if *m || write))
        });
        let waiting = self
            .waiters
            .iter()
            .any(|w| w.f == f && others(w.o) && (w.x || write));
        let shared = self
            .shares
            .iter()
            .any(|(k, (a, d))| k.0 == f && others(k.1) && (write || a & 2 != 0 || d & 1 != 0));
        let leases = !self.lease_targets(f, o, write).is_empty();
        if held || waiting || shared || leases {
            self.start_breaks(f, o, write, now, ev);
            return Ok(LeaseAnswer::Denied);
        }
        if !self.leases.contains_key(&(f, o)) {
            self.room(o, 1)?;
        }
        self.leases.insert(
            (f, o),
            MLease {
                write,
                breaking: None,
            },
        );
        Ok(LeaseAnswer::Granted)
    }

    pub fn expire(&mut self, now: u64, ev: &mut Vec<Event>) {
        let due: Vec<(usize, usize)> = self
            .leases
            .iter()
            .filter(|(_, l)| matches!(l.breaking, Some((d, _)) if d <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            let to_read = self.leases[&k].breaking.unwrap().1;
            if to_read {
                self.leases.insert(
                    k,
                    MLease {
                        write: false,
                        breaking: None,
                    },
                );
            } else {
                self.leases.remove(&k);
            }
            ev.push(Event::LeaseRevoked {
                file: file(k.0),
                holder: owner(k.1),
                to: to_read.then_some(LeaseKind::Read),
            });
        }
    }
}
