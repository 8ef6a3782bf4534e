//! The allocator as a program's global allocator: vectors grown by push
//! and by `reserve_exact` (as the lock engine grows its chunk vectors)
//! keep their contents, and end up in an aligned mapping marked for huge
//! pages.

#![allow(clippy::unwrap_used)]

use latch_alloc::{vm_flags, HugePages, HUGE};

#[global_allocator]
static A: HugePages = HugePages::new();

#[test]
fn growing_vectors_keep_their_contents_in_huge_page_mappings() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..3_000_000u64 {
        v.push(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    let mut w: Vec<[u64; 8]> = Vec::new();
    for i in 0..200_000u64 {
        if w.len() == w.capacity() {
            w.reserve_exact((w.len() / 4).max(1));
        }
        w.push([i; 8]);
    }
    for (i, x) in v.iter().enumerate() {
        assert_eq!(*x, (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    for (i, x) in w.iter().enumerate() {
        assert_eq!(*x, [i as u64; 8]);
    }
    for p in [v.as_ptr().cast::<u8>(), w.as_ptr().cast::<u8>()] {
        assert_eq!(p as usize % HUGE, 0);
        // Without THP in the kernel the advice fails and marks nothing.
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
        assert!(!thp || vm_flags(p).unwrap().split_whitespace().any(|f| f == "hg"));
    }
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v[9], 9u64.wrapping_mul(0x9e37_79b9_7f4a_7c15));
}
