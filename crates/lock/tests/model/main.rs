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

use latch_lock::{
    Engine, Event, FileKey, Holder, HostId, LeaseKind, Limits, LockAnswer, LockRequest, Mode,
    Owner, Range, RequestId, Share, ShareBits, TestAnswer,
};
use proptest::prelude::*;

pub const OWNERS: [(u64, u32); 5] = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)];
pub const FILES: usize = 2;
pub const BREAK_TIME: u64 = 10;

pub fn owner(i: usize) -> Owner {
    let (h, svid) = OWNERS[i];
    Owner::new(HostId(h), svid, format!("oh-{i}").as_bytes())
}

fn owner_index(o: &Owner) -> usize {
    (0..OWNERS.len())
        .find(|&i| owner(i) == *o)
        .expect("known owner")
}

pub fn file(i: usize) -> FileKey {
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

mod reference;

use reference::{cells_of, conflicts, host, overlap, Model, CELLS};

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
