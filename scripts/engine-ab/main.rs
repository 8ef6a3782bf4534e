//! Two revisions of latch-lock (crates `lock_a` and `lock_b`, written by
//! `scripts/engine-ab/run`) timed side by side in one process.

use std::time::Instant;

/// latchd's allocator: the tables' large blocks on huge pages.
#[global_allocator]
static ALLOC: latch_alloc::HugePages = latch_alloc::HugePages::new();

macro_rules! world {
    ($m:ident, $c:ident) => {
        mod $m {
            use $c::{Engine, FileKey, HostId, Limits, LockAnswer, LockRequest, Mode, Owner, Range};
            use std::hint::black_box;
            pub struct W { pub e: Engine, f: FileKey, me: Owner, pub keys: Vec<u64> }
            fn owner(i: u64) -> Owner { Owner::new(HostId(i % 64), i as u32, &i.to_le_bytes()) }
            fn one(b: u64) -> Range { Range::new(b, b).unwrap() }
            impl W {
                pub fn new(keys: Vec<u64>) -> W {
                    let mut e = Engine::new(Limits { waiters_per_file: 1 << 21, entries_per_host: usize::MAX, entries_total: usize::MAX, ..Limits::default() });
                    let f = FileKey::new(b"held");
                    for (i, &k) in keys.iter().enumerate() {
                        let o = owner(i as u64);
                        let r = LockRequest { file: &f, owner: &o, range: one(k), mode: Mode::Exclusive, block: false, reclaim: false, id: None };
                        assert_eq!(e.lock(&r, 0).unwrap().answer, LockAnswer::Granted);
                    }
                    W { e, f, me: owner(u64::MAX), keys }
                }
                pub fn test(&self, j: usize) { black_box(self.e.test(&self.f, &self.me, one(self.keys[j]), Mode::Exclusive)); }
                pub fn lu(&mut self, j: usize) {
                    let r = one(self.keys[j] + 1);
                    let q = LockRequest { file: &self.f, owner: &self.me, range: r, mode: Mode::Exclusive, block: false, reclaim: false, id: None };
                    assert_eq!(self.e.lock(&q, 0).unwrap().answer, LockAnswer::Granted);
                    let _ = black_box(self.e.unlock(&self.f, &self.me, r));
                }
            }
        }
    };
}
world!(wa, lock_a);
world!(wb, lock_b);

fn med(v: &mut Vec<f64>) -> f64 { v.sort_by(f64::total_cmp); v[v.len() / 2] }

fn main() {
    let even = |n: u64| (0..n).map(|i| 2 * i).collect::<Vec<u64>>();
    let random = {
        let n = 1_000_000usize;
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut slots: Vec<u64> = (0..4 * n as u64).collect();
        for i in (1..slots.len()).rev() { x ^= x << 13; x ^= x >> 7; x ^= x << 17; let j = (x % (i as u64 + 1)) as usize; slots.swap(i, j); }
        slots[..n].iter().map(|s| 2 * s).collect::<Vec<u64>>()
    };
    let mut a = [wa::W::new(even(1000)), wa::W::new(even(1_000_000)), wa::W::new(random.clone()), wa::W::new(even(1_000_000))];
    let mut b = [wb::W::new(even(1000)), wb::W::new(even(1_000_000)), wb::W::new(random), wb::W::new(even(1_000_000))];
    // The fourth: every chunk split once by a lock between two held ones, as criterion's held group leaves it.
    let mut k = 0usize;
    for _ in 0..1_600_000 { k = (k + 7919) % 1_000_000; a[3].lu(k); b[3].lu(k); }
    let names = ["even 1k", "even 1M", "random 1M", "split 1M"];
    const R: usize = 21;
    let run = |a: &mut [wa::W; 4], b: &mut [wb::W; 4], label: &str| {
        for (w, name) in names.iter().enumerate() {
            let (mut ta, mut tb, mut la, mut lb, mut rt, mut rl) = (vec![], vec![], vec![], vec![], vec![], vec![]);
            let n = a[w].keys.len();
            let mut k = 0usize;
            for r in 0..R {
                let mut slice = |which: usize, k: &mut usize| -> (f64, f64) {
                    let s = Instant::now();
                    for _ in 0..20000 { *k = (*k + 7919) % n; if which == 0 { a[w].test(*k) } else { b[w].test(*k) } }
                    let t = s.elapsed().as_nanos() as f64 / 20000.0;
                    let s = Instant::now();
                    if label != "nolu" { for _ in 0..4000 { *k = (*k + 7919) % n; if which == 0 { a[w].lu(*k) } else { b[w].lu(*k) } } }
                    (t, s.elapsed().as_nanos() as f64 / 4000.0)
                };
                let (x, y) = if r % 2 == 0 { let x = slice(0, &mut k); (x, slice(1, &mut k)) } else { let y = slice(1, &mut k); (slice(0, &mut k), y) };
                ta.push(x.0); tb.push(y.0); la.push(x.1); lb.push(y.1); rt.push(y.0 / x.0); rl.push(y.1 / x.1);
            }
            let test = format!("TEST ns A {:6.1} B {:6.1} B/A {:.3}", med(&mut ta), med(&mut tb), med(&mut rt));
            if label == "nolu" {
                println!("{name:10} {test}");
            } else {
                println!("{name:10} {test} | LOCK+UNLOCK ns A {:7.1} B {:7.1} B/A {:.3} (TEST between them)", med(&mut la), med(&mut lb), med(&mut rl));
            }
        }
    };
    run(&mut a, &mut b, "nolu");
    run(&mut a, &mut b, "lu");
}
