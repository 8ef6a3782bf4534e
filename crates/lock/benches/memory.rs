//! Heap bytes per held lock, measured with a counting allocator.
//!
//! cargo bench -p latch-lock --bench memory

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use latch_lock::{Engine, FileKey, HostId, Limits, LockAnswer, LockRequest, Mode, Owner, Range};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
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

fn measure(label: &str, n: u64, owners: u64) {
    let f = FileKey::new(&[7u8; 32]);
    let base = LIVE.load(Ordering::Relaxed);
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
    println!(
        "| {label} | {n} | {} | {:.1} | {:.1} |",
        used,
        used as f64 / n as f64,
        e.arena_bytes() as f64 / n as f64
    );
    assert_eq!(e.stats().segments as u64, n);
}

fn main() {
    // `cargo bench` passes --bench; any argument filtering is ignored.
    println!("| workload | locks | heap bytes | bytes/lock | of which tree arena/lock |");
    println!("|---|---|---|---|---|");
    for n in [100_000u64, 1_000_000] {
        measure("distinct owners, 8-byte handles", n, n);
        measure("one owner, disjoint ranges", n, 1);
    }
}
