//! A global allocator for credvault's tests, and nothing else. It forwards every request to
//! [`System`] and can, on request:
//!
//! - **count** the allocations made by the current thread inside [`measure`] (for the
//!   allocation bound of the parsers, `tests/alloc_bound.rs`);
//! - **scan** every block being freed, and the old block of every reallocation, for up to
//!   [`MAX_PATTERNS`] canary byte strings of 32 bytes, counting the blocks that still hold
//!   one (for the memory-hygiene test, `tests/memory_hygiene.rs`). While scanning is on, a
//!   reallocation is done as allocate, copy, scan, free, so that no old block escapes the
//!   scan by being grown in place.
//!
//! credvault itself forbids `unsafe`; implementing [`GlobalAlloc`] needs it, so this small
//! crate (never published, a path dev-dependency) holds the only `unsafe` code of the
//! repository: the trait impl and two pointer reads, each commented.
//!
//! Install it in a test binary with
//! `#[global_allocator] static ALLOC: credvault_alloc_probe::Probe = credvault_alloc_probe::Probe;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// Length of a canary pattern, in bytes.
pub const PATTERN_LEN: usize = 32;
/// Most canary patterns scanned for at once.
pub const MAX_PATTERNS: usize = 4;

/// The allocator. Zero-sized; all state is in statics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe;

thread_local! {
    // Const-initialised and without destructors, so reading them never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static BYTES: Cell<usize> = const { Cell::new(0) };
}

static SCANNING: AtomicBool = AtomicBool::new(false);
static PATTERN_COUNT: AtomicUsize = AtomicUsize::new(0);
static PATTERNS: [[AtomicU8; PATTERN_LEN]; MAX_PATTERNS] =
    [const { [const { AtomicU8::new(0) }; PATTERN_LEN] }; MAX_PATTERNS];
static BLOCKS_SCANNED: AtomicUsize = AtomicUsize::new(0);
static BYTES_SCANNED: AtomicUsize = AtomicUsize::new(0);
static HITS: [AtomicUsize; MAX_PATTERNS] = [const { AtomicUsize::new(0) }; MAX_PATTERNS];

/// What the current thread allocated inside one [`measure`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocated {
    /// Calls to `alloc`, `alloc_zeroed` and `realloc`.
    pub allocations: usize,
    /// Bytes requested by them; a reallocation counts its whole new size.
    pub bytes: usize,
}

/// Runs `f` and returns what the current thread allocated while it ran. Other threads are
/// not counted. Not reentrant.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Allocated) {
    ALLOCATIONS.with(|a| a.set(0));
    BYTES.with(|b| b.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    let allocated = Allocated {
        allocations: ALLOCATIONS.with(Cell::get),
        bytes: BYTES.with(Cell::get),
    };
    (out, allocated)
}

fn count(size: usize) {
    // `try_with`: during thread teardown the slots may be gone; nothing is counted then.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        let _ = BYTES.try_with(|b| b.set(b.get() + size));
    }
}

/// What the scan found since [`scan_for`] started it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Blocks scanned (freed blocks and old blocks of reallocations).
    pub blocks: usize,
    /// Bytes scanned.
    pub bytes: usize,
    /// Per pattern, in the order given to [`scan_for`]: blocks that held it.
    pub hits: [usize; MAX_PATTERNS],
}

/// Starts scanning every freed block, on every thread, for `patterns` (at most
/// [`MAX_PATTERNS`]; extra ones are ignored), and resets the counters. The patterns are kept
/// in statics, never on the heap.
pub fn scan_for(patterns: &[&[u8; PATTERN_LEN]]) {
    SCANNING.store(false, Ordering::SeqCst);
    let n = patterns.len().min(MAX_PATTERNS);
    for (slot, pattern) in PATTERNS.iter().zip(patterns) {
        for (cell, byte) in slot.iter().zip(pattern.iter()) {
            cell.store(*byte, Ordering::SeqCst);
        }
    }
    PATTERN_COUNT.store(n, Ordering::SeqCst);
    reset_scan();
    SCANNING.store(true, Ordering::SeqCst);
}

/// Resets the scan counters without stopping the scan.
pub fn reset_scan() {
    BLOCKS_SCANNED.store(0, Ordering::SeqCst);
    BYTES_SCANNED.store(0, Ordering::SeqCst);
    for h in &HITS {
        h.store(0, Ordering::SeqCst);
    }
}

/// The counters so far.
#[must_use]
pub fn scan_report() -> ScanReport {
    let mut hits = [0; MAX_PATTERNS];
    for (out, h) in hits.iter_mut().zip(&HITS) {
        *out = h.load(Ordering::SeqCst);
    }
    ScanReport {
        blocks: BLOCKS_SCANNED.load(Ordering::SeqCst),
        bytes: BYTES_SCANNED.load(Ordering::SeqCst),
        hits,
    }
}

/// Stops scanning, wipes the patterns and returns the final counters.
pub fn stop_scan() -> ScanReport {
    SCANNING.store(false, Ordering::SeqCst);
    let report = scan_report();
    for slot in &PATTERNS {
        for cell in slot {
            cell.store(0, Ordering::SeqCst);
        }
    }
    PATTERN_COUNT.store(0, Ordering::SeqCst);
    report
}

/// Bytes read from a block at a time; consecutive chunks overlap by `PATTERN_LEN - 1`
/// bytes so that no pattern is missed at a chunk boundary.
const CHUNK: usize = 4096;

/// Counts the block at `ptr` and the patterns it holds. `read(i)` returns byte `i`.
fn scan(len: usize, read: impl Fn(usize) -> u8) {
    BLOCKS_SCANNED.fetch_add(1, Ordering::Relaxed);
    BYTES_SCANNED.fetch_add(len, Ordering::Relaxed);
    let n = PATTERN_COUNT.load(Ordering::SeqCst);
    let mut patterns = [[0u8; PATTERN_LEN]; MAX_PATTERNS];
    for (out, slot) in patterns.iter_mut().zip(&PATTERNS).take(n) {
        for (b, cell) in out.iter_mut().zip(slot) {
            *b = cell.load(Ordering::Relaxed);
        }
    }
    let mut found = [false; MAX_PATTERNS];
    let mut buf = [0u8; CHUNK + PATTERN_LEN - 1];
    let mut start = 0;
    while start < len {
        let take = (len - start).min(buf.len());
        for (i, b) in buf.iter_mut().take(take).enumerate() {
            *b = read(start + i);
        }
        let chunk = buf.get(..take).unwrap_or_default();
        for ((pattern, hit), _) in patterns.iter().zip(&mut found).zip(0..n) {
            *hit = *hit || chunk.windows(PATTERN_LEN).any(|w| w == pattern);
        }
        if start + take >= len {
            break;
        }
        start += take - (PATTERN_LEN - 1);
    }
    for (hit, count) in found.iter().zip(&HITS) {
        if *hit {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
    // The stack copies (patterns, block contents) stay on the stack and are overwritten by
    // later frames; they never reach the heap.
    buf.fill(0);
    for p in &mut patterns {
        p.fill(0);
    }
}

#[allow(
    unsafe_code,
    reason = "GlobalAlloc is an unsafe trait; every operation forwards to System"
)]
// SAFETY: every method forwards to `System` with the caller's own arguments, so `System`'s
// guarantees hold; the extra work (counting, reading a block about to be freed, copying a
// block being reallocated) never touches memory outside the blocks the caller passed in.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (non-zero size), which
        // is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if SCANNING.load(Ordering::Relaxed) {
            scan(layout.size(), |i| {
                // SAFETY: the caller guarantees that `ptr` was allocated by this allocator
                // with `layout`, so `ptr + i` for `i < layout.size()` is inside a live
                // block until it is freed below. Bytes never written are uninitialised; a
                // volatile read of a `u8` is the least the compiler can assume about them,
                // and the value is only compared with the canaries.
                unsafe { ptr.add(i).read_volatile() }
            });
        }
        // SAFETY: the caller's `dealloc` contract is `System::dealloc`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        if !SCANNING.load(Ordering::Relaxed) {
            // SAFETY: the caller's `realloc` contract is `System::realloc`'s.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Allocate, copy, then free the old block through `dealloc`, which scans it.
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `new_size` is non-zero (the caller's `realloc` contract) and the layout
        // is valid, as checked just above.
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: `ptr` is valid for `layout.size()` bytes and `new` for `new_size`;
            // they are distinct live blocks, so they do not overlap; we copy the smaller.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}
