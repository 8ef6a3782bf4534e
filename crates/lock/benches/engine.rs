//! Engine cost against the kernel's lock table (OFD locks on tmpfs).
//!
//! cargo bench -p latch-lock --bench engine
//!
//! LATCH_BENCH_OURS_ONLY=1 skips building the kernel's tables (a minute
//! or more at a million locks) when only our figures are wanted.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Timing the kernel's table build needs the clock; this is bench code, not
// the engine.
#![allow(clippy::disallowed_methods)]

mod kernel;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kernel::KFile;
use latch_lock::{Engine, FileKey, HostId, Limits, LockAnswer, LockRequest, Mode, Owner, Range};

/// The allocator latchd runs with: large blocks on huge pages.
#[global_allocator]
static ALLOC: latch_alloc::HugePages = latch_alloc::HugePages::new();

fn owner(i: u64) -> Owner {
    Owner::new(HostId(i % 64), i as u32, &i.to_le_bytes())
}

fn big_limits() -> Limits {
    Limits {
        waiters_per_file: 1 << 21,
        entries_per_host: usize::MAX,
        entries_total: usize::MAX,
        ..Limits::default()
    }
}

fn req<'a>(f: &'a FileKey, o: &'a Owner, r: Range, m: Mode, block: bool) -> LockRequest<'a> {
    LockRequest {
        file: f,
        owner: o,
        range: r,
        mode: m,
        block,
        reclaim: false,
        id: None,
    }
}

fn one(b: u64) -> Range {
    Range::new(b, b).unwrap()
}

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("uncontended_lock_unlock");
    let files: Vec<FileKey> = (0..1000u32)
        .map(|i| FileKey::new(&i.to_le_bytes()))
        .collect();
    let o = owner(1);
    let mut e = Engine::new(Limits::default());
    let mut k = 0usize;
    g.bench_function("ours/distinct_files", |b| {
        b.iter(|| {
            k = (k + 1) % files.len();
            let r = e
                .lock(&req(&files[k], &o, one(0), Mode::Exclusive, false), 0)
                .unwrap();
            assert_eq!(r.answer, LockAnswer::Granted);
            let _ = black_box(e.unlock(&files[k], &o, one(0)).unwrap());
        })
    });
    let f = FileKey::new(b"one");
    let mut j = 0u64;
    g.bench_function("ours/distinct_ranges_one_file", |b| {
        b.iter(|| {
            j = (j + 1) % 1000;
            let r = Range::new(j * 10, j * 10 + 4).unwrap();
            let a = e.lock(&req(&f, &o, r, Mode::Exclusive, false), 0).unwrap();
            assert_eq!(a.answer, LockAnswer::Granted);
            let _ = black_box(e.unlock(&f, &o, r).unwrap());
        })
    });
    let mut kfiles: Vec<KFile> = (0..1000).map(|i| KFile::new(&format!("u{i}"))).collect();
    let fds: Vec<i32> = kfiles.iter_mut().map(|k| k.open().unwrap()).collect();
    g.bench_function("kernel/distinct_files", |b| {
        b.iter(|| {
            k = (k + 1) % fds.len();
            assert!(KFile::lock(fds[k], true, 0, 1));
            KFile::unlock(fds[k], 0, 1);
        })
    });
    let fd = fds[0];
    g.bench_function("kernel/distinct_ranges_one_file", |b| {
        b.iter(|| {
            j = (j + 1) % 1000;
            assert!(KFile::lock(fd, true, j * 10, 5));
            KFile::unlock(fd, j * 10, 5);
        })
    });
    g.finish();
}

/// `n` owners each holding one exclusive byte at 2i.
fn build_ours(n: u64) -> (Engine, FileKey) {
    let mut e = Engine::new(big_limits());
    let f = FileKey::new(b"held");
    for i in 0..n {
        let o = owner(i);
        let a = e
            .lock(&req(&f, &o, one(2 * i), Mode::Exclusive, false), 0)
            .unwrap();
        assert_eq!(a.answer, LockAnswer::Granted);
    }
    (e, f)
}

/// The same in the kernel, giving up once building takes over `budget`.
fn build_kernel(n: u64, budget: Duration) -> Result<KFile, String> {
    let mut k = KFile::new(&format!("held{n}"));
    let t = Instant::now();
    for i in 0..n {
        let Some(fd) = k.open() else {
            return Err(format!("out of file descriptors after {i}"));
        };
        assert!(KFile::lock(fd, true, 2 * i, 1));
        if t.elapsed() > budget {
            return Err(format!("building took over {budget:?} at {i} locks"));
        }
    }
    eprintln!("kernel: {n} locks built in {:?}", t.elapsed());
    Ok(k)
}

fn held(c: &mut Criterion) {
    let mut g = c.benchmark_group("held_on_one_file");
    // 10k as well: the kernel side needs a descriptor per owner and gets
    // no further than that under a 20k limit, so it is the largest size
    // with a ratio to the kernel there.
    for n in [1_000u64, 10_000, 100_000, 1_000_000] {
        let t = Instant::now();
        let (mut e, f) = build_ours(n);
        eprintln!(
            "ours: {n} locks built in {:?} ({})",
            t.elapsed(),
            huge_pages()
        );
        let me = owner(u64::MAX);
        let mut k = 0u64;
        g.bench_function(BenchmarkId::new("ours/lock_unlock_fresh", n), |b| {
            b.iter(|| {
                k = (k + 7919) % n;
                let r = one(2 * k + 1);
                let a = e.lock(&req(&f, &me, r, Mode::Exclusive, false), 0).unwrap();
                assert_eq!(a.answer, LockAnswer::Granted);
                let _ = black_box(e.unlock(&f, &me, r).unwrap());
            })
        });
        g.bench_function(BenchmarkId::new("ours/test_conflict", n), |b| {
            b.iter(|| {
                k = (k + 7919) % n;
                black_box(e.test(&f, &me, one(2 * k), Mode::Exclusive));
            })
        });
        drop(e);
    }
    if std::env::var_os("LATCH_BENCH_OURS_ONLY").is_some() {
        g.finish();
        return;
    }
    let limit = kernel::raise_nofile();
    eprintln!("kernel: RLIMIT_NOFILE now {limit}");
    for n in [1_000u64, 10_000, 100_000, 1_000_000] {
        let k = match build_kernel(n, Duration::from_secs(60)) {
            Ok(k) => k,
            Err(why) => {
                eprintln!("kernel: {n} locks NOT MEASURED: {why}");
                continue;
            }
        };
        let mut extra = KFile::new(&format!("held{n}"));
        // A separate owner on the same file: another open of its path.
        let fd = match extra.open() {
            Some(fd) => fd,
            None => {
                eprintln!("kernel: {n} locks NOT MEASURED: no descriptor left for the tester");
                continue;
            }
        };
        let mut j = 0u64;
        g.bench_function(BenchmarkId::new("kernel/lock_unlock_fresh", n), |b| {
            b.iter(|| {
                j = (j + 7919) % n;
                assert!(KFile::lock(fd, true, 2 * j + 1, 1));
                KFile::unlock(fd, 2 * j + 1, 1);
            })
        });
        g.bench_function(BenchmarkId::new("kernel/test_conflict", n), |b| {
            b.iter(|| {
                j = (j + 7919) % n;
                black_box(KFile::test(fd, true, 2 * j, 1));
            })
        });
        drop(extra);
        drop(k);
    }
    g.finish();
}

/// TEST at 1k and at 1M locks timed in alternating slices of the same
/// run, as `latch bench` does for NULL against LOCK+UNLOCK: memory latency
/// on a shared host drifts by half over minutes, and criterion's groups run
/// one size after the other, so their ratio mixes two machines. Each round
/// times a slice at each size; the ratio reported is the median of the
/// rounds' ratios (and each size's median cost). Then the 1M table takes
/// turns with one built on 4 kB pages (huge pages off, see `latch_alloc`),
/// for what huge pages are worth. Printed, as criterion has no place for a
/// ratio.
fn test_ratio(_c: &mut Criterion) {
    let built = |n: u64, huge: bool| {
        ALLOC.set_advise(huge);
        let (e, f) = build_ours(n);
        ALLOC.set_advise(true);
        (e, f, n)
    };
    let small = built(1_000, true);
    let large = built(1_000_000, true);
    eprintln!("{}", huge_pages());
    let (a, b, r) = alternate(&small, &large);
    eprintln!("test_conflict interleaved, {ROUNDS} rounds: 1k {a:.1} ns, 1M {b:.1} ns; ratio 1M/1k median {r}");
    let small_pages = built(1_000_000, false);
    let (a, b, r) = alternate(&small_pages, &large);
    eprintln!(
        "test_conflict at 1M interleaved, {ROUNDS} rounds: 4 kB pages {a:.1} ns, huge pages {b:.1} ns; \
         ratio huge/4 kB median {r}"
    );
}

const ROUNDS: usize = 41;

/// TEST on two tables in alternating slices, each round starting with the
/// other one: the median cost of each and the median ratio of the second
/// to the first, with its spread.
fn alternate(x: &(Engine, FileKey, u64), y: &(Engine, FileKey, u64)) -> (f64, f64, String) {
    const SLICE: u64 = 20_000;
    let me = owner(u64::MAX);
    let mut k = 0u64;
    let mut slice = |(e, f, n): &(Engine, FileKey, u64)| {
        let t = Instant::now();
        for _ in 0..SLICE {
            k = (k + 7919) % n;
            black_box(e.test(f, &me, one(2 * k), Mode::Exclusive));
        }
        t.elapsed().as_nanos() as f64 / SLICE as f64
    };
    let (mut xs, mut ys, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (a, b) = if round % 2 == 0 {
            let a = slice(x);
            (a, slice(y))
        } else {
            let b = slice(y);
            (slice(x), b)
        };
        xs.push(a);
        ys.push(b);
        ratios.push(b / a);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let r = median(&mut ratios);
    let spread = format!(
        "{r:.2} (10th..90th percentile {:.2}..{:.2})",
        ratios[ROUNDS / 10],
        ratios[ROUNDS - 1 - ROUNDS / 10]
    );
    (median(&mut xs), median(&mut ys), spread)
}

/// The process's memory on transparent huge pages, from the kernel.
fn huge_pages() -> String {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("AnonHugePages:"))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "AnonHugePages: unknown".into())
}

fn deadlock(c: &mut Criterion) {
    let mut g = c.benchmark_group("deadlock_check");
    let n = 100_000u64;
    // Owner i holds byte i and waits for byte i+1: a chain of n-1 waiters.
    let mut e = Engine::new(big_limits());
    let f = FileKey::new(b"chain");
    for i in 0..n {
        let o = owner(i);
        let a = e
            .lock(&req(&f, &o, one(i), Mode::Exclusive, false), 0)
            .unwrap();
        assert_eq!(a.answer, LockAnswer::Granted);
    }
    for i in 0..n - 1 {
        let o = owner(i);
        let a = e
            .lock(&req(&f, &o, one(i + 1), Mode::Exclusive, true), 0)
            .unwrap();
        assert!(matches!(a.answer, LockAnswer::Blocked(_)));
    }
    let last = owner(n - 1);
    let before = e.stats().deadlock_visits;
    let a = e
        .lock(&req(&f, &last, one(0), Mode::Exclusive, true), 0)
        .unwrap();
    assert_eq!(a.answer, LockAnswer::Deadlock);
    eprintln!(
        "deadlock: one refusal over a chain of {} waiters visited {} owners",
        n - 1,
        e.stats().deadlock_visits - before
    );
    g.bench_function("ours/refuse_cycle_through_100k_waiters", |b| {
        b.iter(|| {
            let a = e
                .lock(&req(&f, &last, one(0), Mode::Exclusive, true), 0)
                .unwrap();
            assert_eq!(a.answer, LockAnswer::Deadlock);
        })
    });
    // A newcomer that holds nothing: answered without a search.
    let fresh = owner(n + 10);
    g.bench_function("ours/block_and_cancel_behind_100k_waiters", |b| {
        b.iter(|| {
            let a = e
                .lock(&req(&f, &fresh, one(0), Mode::Exclusive, true), 0)
                .unwrap();
            let LockAnswer::Blocked(id) = a.answer else {
                panic!("{a:?}")
            };
            let _ = black_box(e.cancel(id));
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = uncontended, held, test_ratio, deadlock
}
criterion_main!(benches);
