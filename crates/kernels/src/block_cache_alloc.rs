//! A global allocator that keeps a few freed large blocks for reuse.
//!
//! Every layer of a UNet or VAE returns a fresh tensor, tens to hundreds of
//! MiB at 512² (a 128-channel 512×512 f32 activation is 128 MiB). glibc
//! serves blocks that large with `mmap` and returns them with `munmap`, so
//! each new tensor costs a page fault and a kernel zeroing per 4 KiB page:
//! 1.2 M faults per 512² VAE decode, 9 % of its time in the kernel. The
//! same sizes recur layer after layer and step after step, so a freed block
//! parked here and handed to the next request of its size class skips all
//! of that.
//!
//! Blocks of at least `MIN_BLOCK` bytes are rounded up to whole MiB (the
//! size class); at most `MAX_CACHED` bytes in `SLOTS` blocks are kept, the
//! oldest freed first when full, so a process holds at most that much more
//! than it uses. `release_parked` empties the cache at the next allocator
//! call: the engine asks for it when it frees a model, whose weight tensors
//! would otherwise be parked. (Lending parked pages to the kernel with
//! `MADV_FREE` was tried: the TLB shootdowns cost 3 % of a VAE decode.)
//! Everything else goes straight to the system allocator. Install with
//! `#[global_allocator] static A: BlockCacheAlloc = BlockCacheAlloc::new();`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counts `release_parked` calls; an allocator that has seen fewer frees
/// everything parked at its next large allocation or free.
static RELEASES: AtomicU64 = AtomicU64::new(0);

/// Asks whichever `BlockCacheAlloc` is installed to free its parked blocks
/// (a model was just dropped: its weights must go back to the system). A
/// no-op when another allocator is installed.
pub fn release_parked() {
    RELEASES.fetch_add(1, Ordering::AcqRel);
}

/// Blocks below this go straight to the system allocator.
const MIN_BLOCK: usize = 4 << 20;
/// Size classes are whole multiples of this.
const GRANULE: usize = 1 << 20;
/// Most bytes parked at once.
const MAX_CACHED: usize = 2 << 30;
/// Most blocks parked at once.
const SLOTS: usize = 32;
/// Alignment the system allocator gives every large block; requests for
/// more bypass the cache.
const ALIGN: usize = 16;

#[derive(Clone, Copy)]
struct Parked {
    ptr: usize,
    size: usize,
    /// Order of parking: the smallest is the oldest.
    stamp: u64,
}

struct Parking {
    blocks: [Option<Parked>; SLOTS],
    bytes: usize,
    clock: u64,
}

pub struct BlockCacheAlloc {
    parking: Mutex<Parking>,
    /// The `RELEASES` count this allocator last acted on.
    releases_seen: AtomicU64,
}

impl Default for BlockCacheAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockCacheAlloc {
    pub const fn new() -> Self {
        Self {
            parking: Mutex::new(Parking {
                blocks: [None; SLOTS],
                bytes: 0,
                clock: 0,
            }),
            releases_seen: AtomicU64::new(0),
        }
    }

    /// The size class of a request, or None when it bypasses the cache.
    fn class(layout: Layout) -> Option<usize> {
        (layout.size() >= MIN_BLOCK && layout.align() <= ALIGN)
            .then(|| layout.size().div_ceil(GRANULE) * GRANULE)
    }

    /// Frees every parked block if `release_parked` asked for it.
    fn release_if_requested(&self) {
        let requested = RELEASES.load(Ordering::Acquire);
        if self.releases_seen.swap(requested, Ordering::AcqRel) == requested {
            return;
        }
        let blocks = match self.parking.lock() {
            Ok(mut parking) => {
                parking.bytes = 0;
                std::mem::replace(&mut parking.blocks, [None; SLOTS])
            }
            Err(_) => return,
        };
        for block in blocks.into_iter().flatten() {
            // SAFETY: as in dealloc.
            unsafe {
                System.dealloc(
                    block.ptr as *mut u8,
                    Layout::from_size_align_unchecked(block.size, ALIGN),
                )
            };
        }
    }

    /// A parked block of exactly `size` bytes, taken out of the cache.
    fn take(&self, size: usize) -> Option<*mut u8> {
        self.release_if_requested();
        let mut parking = self.parking.lock().ok()?;
        let slot = parking
            .blocks
            .iter_mut()
            .find(|b| b.is_some_and(|b| b.size == size))?;
        let block = slot.take()?;
        parking.bytes -= block.size;
        Some(block.ptr as *mut u8)
    }

    /// Parks a freed block; returns the blocks to free for good (evicted
    /// to make room, or this one when it cannot be kept).
    fn park(&self, ptr: *mut u8, size: usize) -> [Option<(usize, usize)>; SLOTS + 1] {
        self.release_if_requested();
        let mut release = [None; SLOTS + 1];
        let Ok(mut parking) = self.parking.lock() else {
            release[0] = Some((ptr as usize, size));
            return release;
        };
        if size > MAX_CACHED {
            release[0] = Some((ptr as usize, size));
            return release;
        }
        let mut evicted = 0;
        loop {
            let full = parking.blocks.iter().all(Option::is_some);
            if !full && parking.bytes + size <= MAX_CACHED {
                break;
            }
            let oldest = parking
                .blocks
                .iter_mut()
                .filter(|b| b.is_some())
                .min_by_key(|b| b.map(|b| b.stamp))
                .and_then(Option::take)
                .expect("a full cache has a block");
            parking.bytes -= oldest.size;
            release[evicted] = Some((oldest.ptr, oldest.size));
            evicted += 1;
        }
        parking.clock += 1;
        let stamp = parking.clock;
        let slot = parking
            .blocks
            .iter_mut()
            .find(|b| b.is_none())
            .expect("room was made");
        *slot = Some(Parked {
            ptr: ptr as usize,
            size,
            stamp,
        });
        parking.bytes += size;
        release
    }
}

// SAFETY: every block handed out is either fresh from `System` with the
// caller's alignment and a size at least the caller's, or a parked block
// of the same size class (same rounded size, alignment ≤ ALIGN, which is
// what System gave it); blocks are returned to `System` with the rounded
// layout they were allocated with.
unsafe impl GlobalAlloc for BlockCacheAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::class(layout) {
            Some(size) => self.take(size).unwrap_or_else(|| {
                // SAFETY: size ≥ layout.size() > 0, alignment unchanged.
                unsafe { System.alloc(Layout::from_size_align_unchecked(size, layout.align())) }
            }),
            // SAFETY: forwarded.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::class(layout) {
            Some(size) => match self.take(size) {
                Some(ptr) => {
                    // SAFETY: the block holds `size` bytes.
                    unsafe { ptr.write_bytes(0, layout.size()) };
                    ptr
                }
                // SAFETY: as in alloc; fresh pages from the system are
                // zero without a pass over them.
                None => unsafe {
                    System.alloc_zeroed(Layout::from_size_align_unchecked(size, layout.align()))
                },
            },
            // SAFETY: forwarded.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(size) = Self::class(layout) else {
            // SAFETY: forwarded.
            return unsafe { System.dealloc(ptr, layout) };
        };
        for (ptr, size) in self.park(ptr, size).into_iter().flatten() {
            // SAFETY: allocated by System with this rounded size and an
            // alignment ≤ ALIGN (System ignores a smaller one for blocks
            // this large).
            unsafe {
                System.dealloc(
                    ptr as *mut u8,
                    Layout::from_size_align_unchecked(size, ALIGN),
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `release_parked` reaches every instance: tests that check what is
    /// parked take turns.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    #[test]
    fn a_freed_large_block_serves_the_next_request_of_its_class() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let cache = BlockCacheAlloc::new();
        let big = Layout::from_size_align(6 << 20, 8).unwrap();
        let near = Layout::from_size_align((6 << 20) - 100, 8).unwrap();
        unsafe {
            let first = cache.alloc(big);
            first.write_bytes(0xAB, big.size());
            cache.dealloc(first, big);
            // Same class (6 MiB rounded): the same block, zeroed on request.
            let again = cache.alloc_zeroed(near);
            assert_eq!(again, first);
            assert!((0..near.size()).step_by(4099).all(|i| *again.add(i) == 0));
            cache.dealloc(again, near);
            // Another class gets its own block.
            let other = Layout::from_size_align(9 << 20, 8).unwrap();
            let third = cache.alloc(other);
            assert_ne!(third, first);
            cache.dealloc(third, other);
            // Small blocks and over-aligned ones bypass the cache.
            let small = Layout::from_size_align(1024, 8).unwrap();
            let s = cache.alloc(small);
            cache.dealloc(s, small);
            let aligned = Layout::from_size_align(8 << 20, 4096).unwrap();
            let a = cache.alloc(aligned);
            assert_eq!(a as usize % 4096, 0);
            cache.dealloc(a, aligned);
        }
        let parking = cache.parking.lock().unwrap();
        assert_eq!(parking.bytes, (6 << 20) + (9 << 20));
    }

    #[test]
    fn parked_blocks_are_freed_on_request() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let cache = BlockCacheAlloc::new();
        let big = Layout::from_size_align(5 << 20, 16).unwrap();
        let small = Layout::from_size_align(64, 16).unwrap();
        unsafe {
            let block = cache.alloc(big);
            cache.dealloc(block, big);
            assert_eq!(cache.parking.lock().unwrap().bytes, 5 << 20);
            release_parked();
            // Small requests do not look at the cache; the next large one does.
            let s = cache.alloc(small);
            cache.dealloc(s, small);
            let other = Layout::from_size_align(7 << 20, 16).unwrap();
            let fresh = cache.alloc(other);
            assert_eq!(cache.parking.lock().unwrap().bytes, 0);
            cache.dealloc(fresh, other);
        }
    }

    #[test]
    fn the_cache_stays_within_its_bounds() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let cache = BlockCacheAlloc::new();
        let layout = |mib: usize| Layout::from_size_align(mib << 20, 16).unwrap();
        unsafe {
            // More blocks than slots, then more bytes than the cap.
            let blocks: Vec<_> = (0..SLOTS + 4)
                .map(|i| (cache.alloc(layout(4 + i)), layout(4 + i)))
                .collect();
            for (ptr, l) in blocks {
                cache.dealloc(ptr, l);
            }
            let huge = layout(600);
            let h1 = cache.alloc(huge);
            let h2 = cache.alloc(huge);
            cache.dealloc(h1, huge);
            cache.dealloc(h2, huge);
        }
        let parking = cache.parking.lock().unwrap();
        let kept = parking.blocks.iter().flatten().count();
        assert!(kept <= SLOTS && parking.bytes <= MAX_CACHED);
        // The newest block was kept; the oldest small ones were released.
        assert!(parking.blocks.iter().flatten().any(|b| b.size == 600 << 20));
        assert!(!parking.blocks.iter().flatten().any(|b| b.size == 4 << 20));
        // The sum matches what is parked.
        let sum: usize = parking.blocks.iter().flatten().map(|b| b.size).sum();
        assert_eq!(sum, parking.bytes);
    }
}
