//! The engine against a naive reference model, over random operation
//! sequences.
//!
//! The model knows nothing of trees, plans or incremental wake-ups: a file
//! is 17 cells (bytes 0..=15, and cell 16 standing for [16, u64::MAX]), each
//! holding a mode per owner; blocked requests are a FIFO list; after every
//! operation it grants, from the front, every waiter that nothing held,
//! nothing earlier and no lease blocks, until none is left to grant; the
//! deadlock check builds the whole wait-for graph and searches it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};

use latch_lock::{
    Bound, Engine, Error, Event, FileKey, Holder, HostId, LeaseAnswer, LeaseKind, Limits,
    LockAnswer, LockRequest, Mode, Owner, Range, RequestId, Share, ShareAnswer, ShareBits,
    TestAnswer,
};
use proptest::prelude::*;

const CELLS: usize = 17;
const OWNERS: [(u64, u32); 5] = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)];
const FILES: usize = 2;
const BREAK_TIME: u64 = 10;

fn owner(i: usize) -> Owner {
    let (h, svid) = OWNERS[i];
    Owner::new(HostId(h), svid, format!("oh-{i}").as_bytes())
}

fn owner_index(o: &Owner) -> usize {
    (0..OWNERS.len())
        .find(|&i| owner(i) == *o)
        .expect("known owner")
}

fn file(i: usize) -> FileKey {
    FileKey::new(format!("fh{i}").as_bytes())
}

fn file_index(k: &FileKey) -> usize {
    (0..FILES).find(|&i| file(i) == *k).expect("known file")
}

/// A range over the small file: start 0..16, end start..16 or to the end.
#[derive(Clone, Copy, Debug)]
struct R {
    start: usize,
    end: Option<usize>,
}

impl R {
    fn range(self) -> Range {
        Range::new(self.start as u64, self.end.map_or(u64::MAX, |e| e as u64)).unwrap()
    }
}

fn cells_of(r: Range) -> std::ops::RangeInclusive<usize> {
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

fn range_strategy() -> impl Strategy<Value = R> {
    (0usize..16, prop::option::weighted(0.8, 0usize..16)).prop_map(|(a, b)| match b {
        Some(b) => R {
            start: a.min(b),
            end: Some(a.max(b)),
        },
        None => R {
            start: a,
            end: None,
        },
    })
}

#[derive(Clone, Debug)]
enum Op {
    Lock {
        f: usize,
        o: usize,
        r: R,
        x: bool,
        block: bool,
        reclaim: bool,
        caller_id: bool,
    },
    Unlock {
        f: usize,
        o: usize,
        r: R,
    },
    Test {
        f: usize,
        o: usize,
        r: R,
        x: bool,
    },
    Cancel(usize),
    ReleaseOwner(usize),
    ReleaseHost(u64),
    Share {
        f: usize,
        o: usize,
        access: u32,
        deny: u32,
        reclaim: bool,
    },
    Unshare {
        f: usize,
        o: usize,
    },
    Lease {
        f: usize,
        o: usize,
        write: bool,
    },
    Unlease {
        f: usize,
        o: usize,
    },
    Tick(u64),
    Grace(bool),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let f = 0..FILES;
    let o = 0..OWNERS.len();
    prop_oneof![
        12 => (f.clone(), o.clone(), range_strategy(), any::<bool>(), prop::bool::weighted(0.6), prop::bool::weighted(0.2), any::<bool>())
            .prop_map(|(f, o, r, x, block, reclaim, caller_id)| Op::Lock { f, o, r, x, block, reclaim, caller_id }),
        5 => (f.clone(), o.clone(), range_strategy()).prop_map(|(f, o, r)| Op::Unlock { f, o, r }),
        3 => (f.clone(), o.clone(), range_strategy(), any::<bool>()).prop_map(|(f, o, r, x)| Op::Test { f, o, r, x }),
        2 => (0usize..8).prop_map(Op::Cancel),
        1 => o.clone().prop_map(Op::ReleaseOwner),
        1 => (1u64..=2).prop_map(Op::ReleaseHost),
        2 => (f.clone(), o.clone(), 0u32..4, 0u32..4, prop::bool::weighted(0.2))
            .prop_map(|(f, o, access, deny, reclaim)| Op::Share { f, o, access, deny, reclaim }),
        1 => (f.clone(), o.clone()).prop_map(|(f, o)| Op::Unshare { f, o }),
        2 => (f.clone(), o.clone(), any::<bool>()).prop_map(|(f, o, write)| Op::Lease { f, o, write }),
        1 => (f.clone(), o.clone()).prop_map(|(f, o)| Op::Unlease { f, o }),
        2 => (0u64..8).prop_map(Op::Tick),
        1 => any::<bool>().prop_map(Op::Grace),
    ]
}

fn limits_strategy() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits {
            lease_break_time: BREAK_TIME,
            ..Limits::default()
        }),
        (2usize..5, 4usize..12, 6usize..20).prop_map(|(w, h, t)| Limits {
            waiters_per_file: w,
            entries_per_host: h,
            entries_total: t,
            lease_break_time: BREAK_TIME,
            ..Limits::default()
        }),
    ]
}

// ---------------------------------------------------------------- model

#[derive(Clone, Debug)]
struct MWaiter {
    id: RequestId,
    f: usize,
    o: usize,
    r: Range,
    x: bool,
}

#[derive(Clone, Copy, Debug)]
struct MLease {
    write: bool,
    /// (deadline, break to read?)
    breaking: Option<(u64, bool)>,
}

#[derive(Clone, Debug)]
struct Model {
    limits: Limits,
    grace: bool,
    /// cells[f][o][c]: None, Some(false) shared, Some(true) exclusive.
    cells: Vec<Vec<[Option<bool>; CELLS]>>,
    waiters: Vec<MWaiter>,
    shares: BTreeMap<(usize, usize), (u32, u32)>,
    leases: BTreeMap<(usize, usize), MLease>,
    engine_ids: u64,
}

fn conflicts(a: bool, b: bool) -> bool {
    a || b
}

fn overlap(a: Range, b: Range) -> bool {
    a.start() <= b.end() && b.start() <= a.end()
}

fn host(o: usize) -> u64 {
    OWNERS[o].0
}

impl Model {
    fn new(limits: Limits) -> Self {
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

    fn runs(row: &[Option<bool>; CELLS]) -> usize {
        (0..CELLS)
            .filter(|&c| row[c].is_some() && (c == 0 || row[c - 1] != row[c]))
            .count()
    }

    fn entries_where(&self, pick: impl Fn(usize) -> bool) -> usize {
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

    fn room(&self, o: usize, delta: isize) -> Result<(), Error> {
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

    fn set_cells(&self, f: usize, o: usize, r: Range, v: Option<bool>) -> [Option<bool>; CELLS] {
        let mut row = self.cells[f][o];
        for c in cells_of(r) {
            row[c] = v;
        }
        row
    }

    fn holder_conflict(&self, f: usize, o: usize, r: Range, x: bool) -> bool {
        (0..OWNERS.len()).any(|p| {
            p != o && cells_of(r).any(|c| matches!(self.cells[f][p][c], Some(m) if conflicts(m, x)))
        })
    }

    /// The owners a request conflicts with among holders and among the
    /// waiters in `earlier`.
    fn blockers(&self, f: usize, o: usize, r: Range, x: bool, earlier: &[MWaiter]) -> Vec<usize> {
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
    fn lease_targets(&self, f: usize, o: usize, write: bool) -> Vec<(usize, bool)> {
        self.leases
            .iter()
            .filter(|((lf, lo), l)| *lf == f && *lo != o && (write || l.write))
            .map(|((_, lo), _)| (*lo, !write))
            .collect()
    }

    fn start_breaks(&mut self, f: usize, o: usize, write: bool, now: u64, ev: &mut Vec<Event>) {
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

    fn grantable(&self, i: usize) -> bool {
        let w = &self.waiters[i];
        self.blockers(w.f, w.o, w.r, w.x, &self.waiters[..i])
            .is_empty()
            && self.lease_targets(w.f, w.o, w.x).is_empty()
    }

    fn settle(&mut self, ev: &mut Vec<Event>) {
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

    fn deadlock(&self, f: usize, o: usize, r: Range, x: bool) -> bool {
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
    fn lock(
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

    fn release(&mut self, o: usize) {
        for f in 0..FILES {
            self.cells[f][o] = [None; CELLS];
        }
        self.waiters.retain(|w| w.o != o);
        self.shares.retain(|k, _| k.1 != o);
        self.leases.retain(|k, _| k.1 != o);
    }

    fn share(
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

    fn lease(
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

    fn expire(&mut self, now: u64, ev: &mut Vec<Event>) {
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

// ---------------------------------------------------------------- checks

fn sorted(mut ev: Vec<Event>) -> Vec<String> {
    let mut v: Vec<String> = ev.drain(..).map(|e| format!("{e:?}")).collect();
    v.sort();
    v
}

/// A reported holder must be a whole, maximal segment of another owner,
/// conflicting with and overlapping the request.
fn check_holder(m: &Model, f: usize, o: usize, r: Range, x: bool, h: &Holder) {
    let p = owner_index(&h.owner);
    assert_ne!(p, o, "reported self as holder");
    let hx = h.mode == Mode::Exclusive;
    assert!(conflicts(hx, x), "holder does not conflict");
    assert!(overlap(h.range, r), "holder does not overlap");
    let row = &m.cells[f][p];
    let cs = cells_of(h.range);
    let (s, e) = (*cs.start(), *cs.end());
    for c in cs {
        assert_eq!(row[c], Some(hx), "holder range not held");
    }
    assert!(s == 0 || row[s - 1] != Some(hx), "holder range not maximal");
    assert!(
        e == CELLS - 1 || row[e + 1] != Some(hx),
        "holder range not maximal"
    );
}

fn check_state(m: &Model, e: &Engine) {
    for f in 0..FILES {
        let mut got = vec![[None; CELLS]; OWNERS.len()];
        for h in e.locks(&file(f)) {
            let p = owner_index(&h.owner);
            for c in cells_of(h.range) {
                assert_eq!(got[p][c], None, "owner's segments overlap");
                got[p][c] = Some(h.mode == Mode::Exclusive);
            }
        }
        assert_eq!(got, m.cells[f], "held locks differ on file {f}");
        let waiting: Vec<RequestId> = e.blocked_on(&file(f)).iter().map(|b| b.id).collect();
        let want: Vec<RequestId> = m
            .waiters
            .iter()
            .filter(|w| w.f == f)
            .map(|w| w.id)
            .collect();
        assert_eq!(waiting, want, "queue differs on file {f}");
    }
    let st = e.stats();
    assert_eq!(st.entries, m.entries_where(|_| true), "entry count");
    assert_eq!(st.shares, m.shares.len());
    assert_eq!(st.leases, m.leases.len());
    // Segments are maximal runs: the engine never keeps two touching
    // segments of one owner and mode apart.
    let runs: usize = (0..FILES)
        .map(|f| {
            (0..OWNERS.len())
                .map(|o| Model::runs(&m.cells[f][o]))
                .sum::<usize>()
        })
        .sum();
    assert_eq!(st.segments, runs, "segments not merged");
}

struct Harness {
    e: Engine,
    m: Model,
    now: u64,
    next_caller_id: u64,
}

impl Harness {
    fn run(&mut self, op: &Op) {
        let mut ev = Vec::new();
        let now = self.now;
        let got: Vec<Event> = match *op {
            Op::Lock {
                f,
                o,
                r,
                x,
                block,
                reclaim,
                caller_id,
            } => {
                let id = caller_id.then(|| {
                    self.next_caller_id += 1;
                    RequestId(self.next_caller_id)
                });
                let (fk, ok) = (file(f), owner(o));
                let mode = if x { Mode::Exclusive } else { Mode::Shared };
                let req = LockRequest {
                    file: &fk,
                    owner: &ok,
                    range: r.range(),
                    mode,
                    block,
                    reclaim,
                    id,
                };
                let before = self.m.clone();
                let got = self.e.lock(&req, now);
                let want = self
                    .m
                    .lock(f, o, r.range(), x, block, reclaim, id, now, &mut ev);
                match (&got, &want) {
                    (Ok(g), Ok(LockAnswer::Denied(w))) => {
                        let LockAnswer::Denied(gh) = &g.answer else {
                            panic!("{op:?}: got {:?}, want Denied", g.answer)
                        };
                        assert_eq!(gh.is_some(), w.is_some(), "{op:?}: holder report");
                        if let Some(h) = gh {
                            check_holder(&before, f, o, r.range(), x, h);
                        }
                    }
                    (Ok(g), Ok(w)) => assert_eq!(&g.answer, w, "{op:?}"),
                    (Err(g), Err(w)) => assert_eq!(g, w, "{op:?}"),
                    _ => panic!("{op:?}: got {got:?}, want {want:?}"),
                }
                got.map(|r| r.events).unwrap_or_default()
            }
            Op::Unlock { f, o, r } => {
                let row = self.m.set_cells(f, o, r.range(), None);
                let delta = Model::runs(&row) as isize - Model::runs(&self.m.cells[f][o]) as isize;
                let want = self.m.room(o, delta);
                let got = self.e.unlock(&file(f), &owner(o), r.range());
                assert_eq!(got.as_ref().err(), want.as_ref().err(), "{op:?}");
                if want.is_ok() {
                    self.m.cells[f][o] = row;
                }
                got.map(|r| r.events).unwrap_or_default()
            }
            Op::Test { f, o, r, x } => {
                let mode = if x { Mode::Exclusive } else { Mode::Shared };
                let got = self.e.test(&file(f), &owner(o), r.range(), mode);
                if self.m.grace {
                    assert_eq!(got, TestAnswer::DeniedGrace);
                } else if self.m.holder_conflict(f, o, r.range(), x) {
                    let TestAnswer::Conflict(h) = got else {
                        panic!("{op:?}: got {got:?}, want a conflict")
                    };
                    check_holder(&self.m, f, o, r.range(), x, &h);
                } else {
                    assert_eq!(got, TestAnswer::Free, "{op:?}");
                }
                Vec::new()
            }
            Op::Cancel(i) => {
                let id = self
                    .m
                    .waiters
                    .get(i)
                    .map_or(RequestId(u64::MAX - 1), |w| w.id);
                let got = self.e.cancel(id);
                let before = self.m.waiters.len();
                self.m.waiters.retain(|w| w.id != id);
                assert_eq!(got.answer, before != self.m.waiters.len(), "{op:?}");
                got.events
            }
            Op::ReleaseOwner(o) => {
                self.m.release(o);
                self.e.release_owner(&owner(o)).events
            }
            Op::ReleaseHost(h) => {
                for o in 0..OWNERS.len() {
                    if host(o) == h {
                        self.m.release(o);
                    }
                }
                self.e.release_host(HostId(h)).events
            }
            Op::Share {
                f,
                o,
                access,
                deny,
                reclaim,
            } => {
                let s = Share {
                    access: ShareBits::from_wire(access).unwrap(),
                    deny: ShareBits::from_wire(deny).unwrap(),
                };
                let want = self.m.share(f, o, s, reclaim, now, &mut ev);
                let got = self.e.share(&file(f), &owner(o), s, reclaim, now);
                assert_eq!(
                    got.as_ref().map(|r| r.answer),
                    want.as_ref().copied(),
                    "{op:?}"
                );
                got.map(|r| r.events).unwrap_or_default()
            }
            Op::Unshare { f, o } => {
                let had = self.m.shares.remove(&(f, o)).is_some();
                let got = self.e.unshare(&file(f), &owner(o));
                assert_eq!(got.answer, had, "{op:?}");
                got.events
            }
            Op::Lease { f, o, write } => {
                let kind = if write {
                    LeaseKind::Write
                } else {
                    LeaseKind::Read
                };
                let want = self.m.lease(f, o, write, now, &mut ev);
                let got = self.e.lease(&file(f), &owner(o), kind, now);
                assert_eq!(
                    got.as_ref().map(|r| r.answer),
                    want.as_ref().copied(),
                    "{op:?}"
                );
                got.map(|r| r.events).unwrap_or_default()
            }
            Op::Unlease { f, o } => {
                let had = self.m.leases.remove(&(f, o)).is_some();
                let got = self.e.unlease(&file(f), &owner(o));
                assert_eq!(got.answer, had, "{op:?}");
                got.events
            }
            Op::Tick(dt) => {
                self.now += dt;
                self.m.expire(self.now, &mut ev);
                self.e.expire_leases(self.now).events
            }
            Op::Grace(on) => {
                self.m.grace = on;
                self.e.set_grace(on);
                Vec::new()
            }
        };
        self.m.settle(&mut ev);
        assert_eq!(sorted(got), sorted(ev), "events of {op:?}");
        check_state(&self.m, &self.e);
    }

    /// Liveness: with leases expired and every holder letting go round after
    /// round, every request still waiting is granted.
    fn drain(&mut self) {
        self.run(&Op::Grace(false));
        for o in 0..OWNERS.len() {
            for f in 0..FILES {
                self.run(&Op::Unlease { f, o });
            }
        }
        let rounds = self.m.waiters.len() + 1;
        for _ in 0..rounds {
            for o in 0..OWNERS.len() {
                for f in 0..FILES {
                    self.run(&Op::Unlock {
                        f,
                        o,
                        r: R {
                            start: 0,
                            end: None,
                        },
                    });
                }
            }
        }
        assert!(
            self.m.waiters.is_empty(),
            "waiters left: {:?}",
            self.m.waiters
        );
        assert_eq!(self.e.stats().waiters, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400), failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_model(limits in limits_strategy(), ops in prop::collection::vec(op_strategy(), 1..80)) {
        let mut h = Harness { e: Engine::new(limits), m: Model::new(limits), now: 0, next_caller_id: 0 };
        for op in &ops {
            h.run(op);
        }
        h.drain();
    }
}

#[test]
fn owner_index_roundtrip() {
    for i in 0..OWNERS.len() {
        assert_eq!(owner_index(&owner(i)), i);
    }
    assert_eq!(file_index(&file(1)), 1);
}
