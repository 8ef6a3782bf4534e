//! Heap bytes per held lock, measured with a counting allocator over the
//! allocator latchd runs with (`latch_alloc::HugePages`), and the resident
//! memory the table added, from the kernel. Each workload runs in a
//! process of its own, so memory freed by one is not reused by the next.
//!
//! cargo bench -p latch-lock --bench memory

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

use latch_alloc::HugePages;
use latch_lock::{Engine, FileKey, HostId, Limits, LockAnswer, LockRequest, Mode, Owner, Range};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

static INNER: HugePages = HugePages::new();

// SAFETY: forwards to latchd's allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { INNER.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { INNER.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { INNER.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn limits() -> Limits {
    Limits {
        entries_per_host: usize::MAX,
        entries_total: usize::MAX,
        ..Limits::default()
    }
}

/// The process's resident memory in bytes, from the kernel.
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn measure(label: &str, n: u64, owners: u64) {
    let f = FileKey::new(&[7u8; 32]);
    let base = LIVE.load(Ordering::Relaxed);
    let rss = resident();
    let mut e = Engine::new(limits());
    for i in 0..n {
        let o = i % owners;
        let ow = Owner::new(HostId(o % 64), o as u32, &o.to_le_bytes());
        let r = Range::new(2 * i, 2 * i).unwrap();
        let req = LockRequest {
            file: &f,
            owner: &ow,
            range: r,
            mode: Mode::Exclusive,
            block: false,
            reclaim: false,
            id: None,
        };
        assert_eq!(e.lock(&req, 0).unwrap().answer, LockAnswer::Granted);
    }
    let used = LIVE.load(Ordering::Relaxed) - base;
    let added = resident().saturating_sub(rss);
    println!(
        "| {label} | {n} | {} | {:.1} | {:.1} | {:.1} |",
        used,
        used as f64 / n as f64,
        e.arena_bytes() as f64 / n as f64,
        added as f64 / n as f64
    );
    assert_eq!(e.stats().segments as u64, n);
}

const WORKLOADS: [(&str, u64, u64); 4] = [
    ("distinct owners, 8-byte handles", 100_000, 100_000),
    ("one owner, disjoint ranges", 100_000, 1),
    ("distinct owners, 8-byte handles", 1_000_000, 1_000_000),
    ("one owner, disjoint ranges", 1_000_000, 1),
];

fn main() {
    // `cargo bench` passes --bench; other arguments are ignored, but for
    // `--workload I`, which runs one workload (in a child process).
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--workload") {
        let (label, n, owners) = WORKLOADS[args[i + 1].parse::<usize>().unwrap()];
        measure(label, n, owners);
        return;
    }
    println!(
        "| workload | locks | heap bytes | bytes/lock | of which tree arena/lock | resident bytes/lock |"
    );
    println!("|---|---|---|---|---|---|");
    let me = std::env::current_exe().unwrap();
    for i in 0..WORKLOADS.len() {
        let st = std::process::Command::new(&me)
            .args(["--workload", &i.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "workload {i}: {st}");
    }
}
