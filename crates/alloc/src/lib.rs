//! The global allocator of `latchd` and of the lock engine's benchmarks:
//! the system allocator, except that a block of [`LARGE`] bytes or more
//! is a mapping of its own, aligned to 2 MB and marked for transparent
//! huge pages (`madvise(MADV_HUGEPAGE)`).
//!
//! Why: a lock table of a million locks keeps its index in a few vectors
//! of hundreds of megabytes, and a probe lands on a random line of one.
//! With 4 kB pages nearly every probe also misses the TLB and walks the
//! page tables (in a virtual machine, two sets of them). With 2 MB pages
//! the walk is shorter and its entries stay cached: TEST at a million
//! locks took 0.71 to 0.85 of its time on 4 kB pages, the two timed in
//! turns in one process (the engine bench prints the comparison). Hosts
//! whose THP setting is `madvise`, the common default, give huge pages
//! only to memory marked this way; glibc marks its own mappings only when
//! `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` is set at start.
//!
//! The price, on a virtual machine whose free memory goes back to its
//! host (virtio-balloon free page reporting): a 2 MB page taken from
//! memory untouched since is faulted in by the host 4 kB at a time, up to
//! milliseconds for one page, where a 4 kB page is mostly one freed
//! recently. A table growing into such memory grows at half the speed;
//! `latchd` has `huge_pages = false` for that.
//!
//! A block that grows is moved with `mremap` to a new aligned range (page
//! tables, not bytes, move: a 2 MB page moves whole), or grown in place
//! when the range after it is free. A rounding to 2 MB wastes at most 2 MB
//! on a block of 4 MB or more. Off Linux everything goes to the system
//! allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// The huge page size this allocator aligns to (x86-64 and aarch64 with
/// 4 kB base pages).
pub const HUGE: usize = 2 << 20;
/// Blocks of this size or more get their own aligned mapping.
pub const LARGE: usize = 2 * HUGE;

/// The allocator. `HugePages::new()` in a `#[global_allocator]` static.
pub struct HugePages {
    advise: AtomicBool,
}

impl HugePages {
    pub const fn new() -> HugePages {
        HugePages {
            advise: AtomicBool::new(true),
        }
    }

    /// Whether large blocks mapped from now on are marked for huge pages
    /// (on by default). A block keeps its mark, or its lack, when it grows
    /// or moves. Off, blocks are still aligned mappings of their own: the
    /// one difference left is the page size, which is what a benchmark
    /// comparing the two wants.
    pub fn set_advise(&self, on: bool) {
        self.advise.store(on, Ordering::Relaxed);
    }

    fn advising(&self) -> bool {
        self.advise.load(Ordering::Relaxed)
    }
}

impl Default for HugePages {
    fn default() -> Self {
        HugePages::new()
    }
}

/// Whether a block of this layout is one of ours (a mapping) or the
/// system allocator's. Every entry point decides by this alone.
fn large(size: usize, align: usize) -> bool {
    cfg!(target_os = "linux") && size >= LARGE && align <= HUGE
}

#[cfg(target_os = "linux")]
mod map {
    use super::HUGE;

    /// `size` rounded up to whole huge pages.
    pub fn span(size: usize) -> Option<usize> {
        size.checked_add(HUGE - 1).map(|n| n & !(HUGE - 1))
    }

    /// A private anonymous mapping of `n` bytes (a multiple of [`HUGE`])
    /// at an address aligned to [`HUGE`], or null.
    ///
    /// # Safety
    /// Only maps fresh memory; the caller owns the result.
    pub unsafe fn aligned(n: usize, prot: libc::c_int) -> *mut u8 {
        let Some(total) = n.checked_add(HUGE) else {
            return std::ptr::null_mut();
        };
        // Memory to use is accounted as malloc's is (an allocation past
        // the commit limit fails here, not at a later page fault); a
        // reservation for a move is not.
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        if prot == libc::PROT_NONE {
            flags |= libc::MAP_NORESERVE;
        }
        // SAFETY: a fresh anonymous mapping, at an address the kernel picks.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), total, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        let a = p as usize;
        let at = (a + HUGE - 1) & !(HUGE - 1);
        let head = at - a;
        let tail = total - head - n;
        // SAFETY: both ranges lie inside the mapping just made and outside
        // the part kept.
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((at + n) as *mut libc::c_void, tail);
            }
        }
        at as *mut u8
    }

    /// # Safety
    /// `p..p + n` must be a range this module mapped.
    pub unsafe fn advise(p: *mut u8, n: usize) {
        // Failure (a kernel without THP) leaves ordinary pages: nothing to
        // report.
        // SAFETY: the range is ours, and advice changes no contents.
        unsafe {
            libc::madvise(p.cast(), n, libc::MADV_HUGEPAGE);
        }
    }

    /// # Safety
    /// `p..p + n` must be a range this module mapped, no longer used.
    pub unsafe fn unmap(p: *mut u8, n: usize) {
        // SAFETY: per the contract.
        unsafe {
            libc::munmap(p.cast(), n);
        }
    }

    /// Grows the mapping `p` of `old` bytes to `new` (both whole huge
    /// pages): in place when the range after it is free, else moved to a
    /// fresh aligned range. Null when neither works; `p` is then intact.
    ///
    /// # Safety
    /// `p..p + old` must be a range this module mapped.
    pub unsafe fn grow(p: *mut u8, old: usize, new: usize) -> *mut u8 {
        // SAFETY: without MREMAP_MAYMOVE the kernel extends the mapping
        // only into free address space, or fails and changes nothing.
        let q = unsafe { libc::mremap(p.cast(), old, new, 0) };
        if q != libc::MAP_FAILED {
            return p;
        }
        // SAFETY: a reservation of our own, replaced below.
        let to = unsafe { aligned(new, libc::PROT_NONE) };
        if to.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: MREMAP_FIXED replaces the reservation `to..to + new`,
        // which is ours; on failure nothing moved.
        let q = unsafe {
            libc::mremap(
                p.cast(),
                old,
                new,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to.cast::<libc::c_void>(),
            )
        };
        if q == libc::MAP_FAILED {
            // SAFETY: the reservation is still ours and unused.
            unsafe { unmap(to, new) };
            return std::ptr::null_mut();
        }
        to
    }
}

// SAFETY: small blocks go to the system allocator under its contract;
// large ones are whole mappings of their own (aligned to HUGE, so to any
// alignment `large` accepts), freed by `munmap` of the same rounded span,
// which `large` and `map::span` compute from the layout alone.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !large(l.size(), l.align()) {
            // SAFETY: the caller's contract.
            return unsafe { System.alloc(l) };
        }
        self.map_large(l.size())
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !large(l.size(), l.align()) {
            // SAFETY: the caller's contract.
            return unsafe { System.alloc_zeroed(l) };
        }
        // A fresh anonymous mapping reads as zeros.
        self.map_large(l.size())
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if !large(l.size(), l.align()) {
            // SAFETY: the caller's contract.
            return unsafe { System.dealloc(p, l) };
        }
        #[cfg(target_os = "linux")]
        if let Some(n) = map::span(l.size()) {
            // SAFETY: a large block is a mapping of exactly its span.
            unsafe { map::unmap(p, n) };
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let was = large(l.size(), l.align());
        let will = large(new, l.align());
        if !was && !will {
            // SAFETY: the caller's contract.
            return unsafe { System.realloc(p, l, new) };
        }
        #[cfg(target_os = "linux")]
        if was && will {
            // SAFETY: `p` is one of our mappings, of its span.
            if let Some(q) = unsafe { self.remap(p, l.size(), new) } {
                return q;
            }
        }
        // Across the threshold (or a failed remap): a new block and a copy.
        // SAFETY: `new` is non-zero and the alignment is `l`'s, valid.
        let nl = unsafe { Layout::from_size_align_unchecked(new, l.align()) };
        // SAFETY: the caller's contract carries over to the new layout.
        let q = unsafe { self.alloc(nl) };
        if !q.is_null() {
            // SAFETY: both blocks hold at least the bytes copied and are
            // distinct; the old one is freed with its own layout.
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new));
                self.dealloc(p, l);
            }
        }
        q
    }
}

impl HugePages {
    fn map_large(&self, size: usize) -> *mut u8 {
        #[cfg(target_os = "linux")]
        {
            let Some(n) = map::span(size) else {
                return std::ptr::null_mut();
            };
            // SAFETY: a fresh mapping; advice on our own range.
            unsafe {
                let p = map::aligned(n, libc::PROT_READ | libc::PROT_WRITE);
                if !p.is_null() && self.advising() {
                    map::advise(p, n);
                }
                p
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = size;
            std::ptr::null_mut()
        }
    }

    /// A large block resized in its mapping: `None` when only a new block
    /// and a copy will do (the mapping could not grow).
    ///
    /// # Safety
    /// `p` must be a large block of `old` bytes.
    #[cfg(target_os = "linux")]
    unsafe fn remap(&self, p: *mut u8, old: usize, new: usize) -> Option<*mut u8> {
        let (o, n) = (map::span(old)?, map::span(new)?);
        if n <= o {
            if n < o {
                // SAFETY: the tail past the new span is ours and unused.
                unsafe { map::unmap(p.add(n), o - n) };
            }
            return Some(p);
        }
        // The mapping keeps its flags, the huge page mark among them, when
        // `mremap` extends or moves it.
        // SAFETY: per the contract.
        let q = unsafe { map::grow(p, o, n) };
        (!q.is_null()).then_some(q)
    }
}

/// The `VmFlags` of the mapping holding `p`, from `/proc/self/smaps`
/// (`hg` marks one advised for huge pages); `None` when no mapping holds
/// it or the file cannot be read. For tests and diagnostics.
pub fn vm_flags(p: *const u8) -> Option<String> {
    let a = p as usize;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = head.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = lo <= a && a < hi;
                continue;
            }
        }
        if let (true, Some(f)) = (inside, line.strip_prefix("VmFlags:")) {
            return Some(f.trim().to_string());
        }
    }
    None
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Whether the kernel has transparent huge pages at all (without, the
    /// advice fails and marks nothing).
    fn thp() -> bool {
        std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists()
    }

    fn fill(p: *mut u8, n: usize, seed: u8) {
        for i in (0..n).step_by(4093) {
            // SAFETY: within the block.
            unsafe { *p.add(i) = seed.wrapping_add(i as u8) };
        }
    }

    fn check(p: *const u8, n: usize, seed: u8) {
        for i in (0..n).step_by(4093) {
            // SAFETY: within the block.
            assert_eq!(unsafe { *p.add(i) }, seed.wrapping_add(i as u8), "byte {i}");
        }
    }

    #[test]
    fn a_large_block_is_an_aligned_mapping_marked_for_huge_pages() {
        let a = HugePages::new();
        let l = Layout::from_size_align(LARGE + 5, 8).unwrap();
        // SAFETY: a valid non-zero layout, freed with it below.
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        assert_eq!(p as usize % HUGE, 0);
        let flags = vm_flags(p).unwrap();
        assert!(
            !thp() || flags.split_whitespace().any(|f| f == "hg"),
            "{flags}"
        );
        fill(p, l.size(), 1);
        check(p, l.size(), 1);
        // SAFETY: allocated above with `l`.
        unsafe { a.dealloc(p, l) };

        // Advice off: still aligned, no mark.
        a.set_advise(false);
        // SAFETY: as above.
        let p = unsafe { a.alloc(l) };
        assert_eq!(p as usize % HUGE, 0);
        let flags = vm_flags(p).unwrap();
        assert!(!flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        // SAFETY: as above.
        unsafe { a.dealloc(p, l) };
    }

    #[test]
    fn zeroed_large_blocks_read_as_zeros() {
        let a = HugePages::new();
        let l = Layout::from_size_align(3 * HUGE, 64).unwrap();
        // SAFETY: valid layout, freed below.
        let p = unsafe { a.alloc_zeroed(l) };
        assert!(!p.is_null());
        for i in (0..l.size()).step_by(4096) {
            // SAFETY: within the block.
            assert_eq!(unsafe { *p.add(i) }, 0);
        }
        // SAFETY: allocated above with `l`.
        unsafe { a.dealloc(p, l) };
    }

    /// Grows a block from small to large and on, with a mapping in the
    /// way of growing in place half the time, then shrinks it back below
    /// the threshold: the contents survive every step.
    #[test]
    fn contents_survive_growing_across_the_threshold_and_moving() {
        let a = HugePages::new();
        let mut size = 1000usize;
        let mut l = Layout::from_size_align(size, 16).unwrap();
        // SAFETY: valid layout.
        let mut p = unsafe { a.alloc(l) };
        fill(p, size, 7);
        let mut blockers = Vec::new();
        let mut moved = 0;
        for step in 0..12 {
            let new = size * 2 + 12345;
            // SAFETY: `p` is a live block of layout `l`.
            let q = unsafe { a.realloc(p, l, new) };
            assert!(!q.is_null());
            check(q, size, 7);
            if large(new, 16) {
                assert_eq!(q as usize % HUGE, 0);
                assert!(!thp() || vm_flags(q).unwrap().split_whitespace().any(|f| f == "hg"));
                if step % 2 == 0 {
                    // Map something right after the block, so the next
                    // growth has to move it.
                    let end = q as usize + map::span(new).unwrap();
                    // SAFETY: a hint only; the kernel picks a free range.
                    let b = unsafe {
                        libc::mmap(
                            end as *mut libc::c_void,
                            4096,
                            libc::PROT_READ,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        )
                    };
                    assert_ne!(b, libc::MAP_FAILED);
                    blockers.push(b);
                }
            }
            if q != p && large(size, 16) {
                moved += 1;
            }
            p = q;
            size = new;
            l = Layout::from_size_align(size, 16).unwrap();
            fill(p, size, 7);
        }
        assert!(moved > 0, "no growth had to move");
        // Shrink within large sizes, then below the threshold.
        for new in [size / 3, LARGE + 1, 1000] {
            // SAFETY: `p` is a live block of layout `l`.
            let q = unsafe { a.realloc(p, l, new) };
            assert!(!q.is_null());
            check(q, new, 7);
            p = q;
            size = new;
            l = Layout::from_size_align(size, 16).unwrap();
        }
        // SAFETY: live block of layout `l`; the blockers are ours.
        unsafe {
            a.dealloc(p, l);
            for b in blockers {
                libc::munmap(b, 4096);
            }
        }
    }

    #[test]
    fn over_aligned_and_small_blocks_go_to_the_system_allocator() {
        assert!(!large(LARGE, 2 * HUGE));
        assert!(!large(LARGE - 1, 8));
        assert!(large(LARGE, HUGE));
        let a = HugePages::new();
        let l = Layout::from_size_align(LARGE, 4 * HUGE).unwrap();
        // SAFETY: valid layout, freed below.
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        assert_eq!(p as usize % (4 * HUGE), 0);
        // SAFETY: allocated above with `l`.
        unsafe { a.dealloc(p, l) };
    }
}
