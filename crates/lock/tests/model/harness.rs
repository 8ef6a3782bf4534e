//! The engine-against-model harness, shared by the proptest state machine
//! (`main.rs`) and the fuzz target (`fuzz/fuzz_targets/engine.rs`).

use crate::reference::{cells_of, conflicts, host, overlap, Model, CELLS};
use latch_lock::{
    Engine, Event, FileKey, Holder, HostId, LeaseKind, LockAnswer, LockRequest, Mode, Owner, Range,
    RequestId, Share, ShareBits, TestAnswer,
};

pub const OWNERS: [(u64, u32); 5] = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)];
pub const FILES: usize = 2;
pub const BREAK_TIME: u64 = 10;

pub fn owner(i: usize) -> Owner {
    let (h, svid) = OWNERS[i];
    Owner::new(HostId(h), svid, format!("oh-{i}").as_bytes())
}

pub fn owner_index(o: &Owner) -> usize {
    (0..OWNERS.len())
        .find(|&i| owner(i) == *o)
        .expect("known owner")
}

pub fn file(i: usize) -> FileKey {
    FileKey::new(format!("fh{i}").as_bytes())
}

pub fn file_index(k: &FileKey) -> usize {
    (0..FILES).find(|&i| file(i) == *k).expect("known file")
}

/// A range over the small file: start 0..16, end start..16 or to the end.
#[derive(Clone, Copy, Debug)]
pub struct R {
    pub start: usize,
    pub end: Option<usize>,
}

impl R {
    pub fn range(self) -> Range {
        Range::new(self.start as u64, self.end.map_or(u64::MAX, |e| e as u64)).unwrap()
    }
}

#[derive(Clone, Debug)]
pub enum Op {
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

pub struct Harness {
    pub e: Engine,
    pub m: Model,
    pub now: u64,
    pub next_caller_id: u64,
}

impl Harness {
    pub fn run(&mut self, op: &Op) {
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
    pub fn drain(&mut self) {
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
