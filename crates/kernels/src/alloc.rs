//! The process's global allocator: mimalloc, tuned to keep the page-fault
//! win a diffusion engine needs.
//!
//! Every layer of a UNet or VAE returns a fresh tensor, tens to hundreds of
//! MiB at 512²; glibc serves blocks that large with `mmap` and returns them
//! with `munmap`, so each new tensor costs a page fault and a kernel zeroing
//! per page (1.35 M faults in a 512² VAE decode, 1.65× its time). mimalloc
//! reuses freed memory for the next block of any size, and returns it to the
//! system only after a purge delay. Its default delay (10 ms) is shorter
//! than a layer, so freed activations went back and came in again, one fault
//! per (huge) page; at `PURGE_DELAY_MS` they stay for the next layer and
//! step. BENCHMARKS.md ("Allocator") has the measurements behind the choice
//! (against the block cache this replaced, mimalloc's defaults and glibc).
//!
//! When the engine frees a model it calls [`release_freed_memory`], so its
//! weights go back to the system at once rather than after the delay.
//! Install with
//! `#[global_allocator] static A: EngineAllocator = EngineAllocator;`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

/// How long freed memory stays committed for reuse before mimalloc returns
/// it to the system (its arenas wait 10× this, mimalloc's own ratio).
pub const PURGE_DELAY_MS: i64 = 10_000;

/// mimalloc 3's `mi_option_purge_delay` (its `mi_option_t` enum,
/// `mimalloc.h`; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

static CONFIGURED: AtomicBool = AtomicBool::new(false);

/// Sets the purge delay once, at the first allocation (before `main`: the
/// runtime allocates first, so no call in `main` can come earlier).
fn configure() {
    if !CONFIGURED.load(Ordering::Relaxed) {
        CONFIGURED.store(true, Ordering::Relaxed);
        // SAFETY: sets one option's value; allocates nothing, so it may run
        // inside an allocation, and racing callers write the same value.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _) };
    }
}

/// The purge delay mimalloc is using now (for tests and diagnostics).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reads one option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

/// Returns freed memory to the system now instead of after the purge delay
/// (a model was dropped: its weights must not stay resident). A no-op for
/// memory other allocators hold.
pub fn release_freed_memory() {
    // SAFETY: mimalloc's collection of the calling thread's heap and the
    // process's free memory; callable at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// mimalloc with the purge delay above.
pub struct EngineAllocator;

// SAFETY: every call is forwarded unchanged to mimalloc's allocator, which
// upholds GlobalAlloc's contract; `configure` allocates nothing and cannot
// panic.
unsafe impl GlobalAlloc for EngineAllocator {
    /// # Safety
    /// The contract of the `GlobalAlloc` method of this name.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        configure();
        // SAFETY: forwarded.
        unsafe { MiMalloc.alloc(layout) }
    }

    /// # Safety
    /// The contract of the `GlobalAlloc` method of this name.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        configure();
        // SAFETY: forwarded.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    /// # Safety
    /// The contract of the `GlobalAlloc` method of this name.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; the block came from MiMalloc.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    /// # Safety
    /// The contract of the `GlobalAlloc` method of this name.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded; the block came from MiMalloc.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident memory of this process, in MiB.
    fn rss_mib() -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// Freed memory stays resident for reuse (no fault on the next block),
    /// the option is what the engine set, and a release hands it back.
    #[test]
    fn freed_memory_is_kept_for_reuse_and_released_on_request() {
        let allocator = EngineAllocator;
        let layout = Layout::from_size_align(256 << 20, 64).unwrap();
        unsafe {
            let block = allocator.alloc(layout);
            assert!(!block.is_null());
            assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
            block.write_bytes(1, layout.size());
            let touched = rss_mib();
            allocator.dealloc(block, layout);
            // Kept: well within the delay, the pages are still resident,
            // and the next block of that size reuses them.
            assert!(
                rss_mib() > touched - 64.0,
                "freed at once: {} -> {}",
                touched,
                rss_mib()
            );
            let again = allocator.alloc(layout);
            again.write_bytes(2, layout.size());
            assert!(
                rss_mib() < touched + 64.0,
                "not reused: {} -> {}",
                touched,
                rss_mib()
            );
            allocator.dealloc(again, layout);
            release_freed_memory();
            assert!(
                rss_mib() < touched - 192.0,
                "not released: {} -> {}",
                touched,
                rss_mib()
            );
        }
    }
}
