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
//! size class) and allocated with `ALIGN`; at most `MAX_CACHED` bytes in
//! `SLOTS` blocks are kept, a parked one evicted round-robin when full, so a
//! process holds at most that much more than it uses. Each slot is one
//! atomic word (size class and address together), so no lock is taken and
//! no thread waits on another. Growing a large block is the system's
//! `realloc` (`mremap`, no copy); within its size class it is free. Nothing
//! on these paths can panic: unwinding out of an allocator is undefined
//! behaviour. `release_parked` empties the cache at the next allocator
//! call: the engine asks for it when it frees a model, whose weight tensors
//! would otherwise be parked. (Lending parked pages to the kernel with
//! `MADV_FREE` was tried: the TLB shootdowns cost 3 % of a VAE decode.)
//! Everything else goes straight to the system allocator. Install with
//! `#[global_allocator] static A: BlockCacheAlloc = BlockCacheAlloc::new();`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
/// The alignment of every cached block (the system allocator's own for
/// blocks this large); requests for more bypass the cache.
const ALIGN: usize = 16;
/// A slot's word: the block's size in granules above this bit, its address
/// below (user-space addresses fit 47 bits on x86-64 and 48 on AArch64).
const ADDRESS_BITS: u32 = 48;

/// A parked block as one word, or None when it cannot be packed.
fn pack(ptr: *mut u8, size: usize) -> Option<usize> {
    let (address, granules) = (ptr as usize, size / GRANULE);
    (address < 1 << ADDRESS_BITS && granules < 1 << (usize::BITS - ADDRESS_BITS))
        .then_some(granules << ADDRESS_BITS | address)
}

fn unpack(word: usize) -> (*mut u8, usize) {
    let address = word & ((1 << ADDRESS_BITS) - 1);
    (address as *mut u8, (word >> ADDRESS_BITS) * GRANULE)
}

/// The layout a cached block of `size` bytes is allocated and freed with.
fn block_layout(size: usize) -> Layout {
    // SAFETY: ALIGN is a power of two; size is a request's size rounded up
    // to whole MiB, far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked(size, ALIGN) }
}

pub struct BlockCacheAlloc {
    /// 0 when empty, else `pack(ptr, size)`.
    slots: [AtomicUsize; SLOTS],
    /// Bytes parked, or reserved by a block being parked.
    bytes: AtomicUsize,
    /// The next slot to evict from when the cache is full.
    cursor: AtomicUsize,
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
            slots: [const { AtomicUsize::new(0) }; SLOTS],
            bytes: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
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
        for slot in &self.slots {
            self.free_slot(slot);
        }
    }

    /// Empties `slot`, freeing its block; false if it was empty.
    fn free_slot(&self, slot: &AtomicUsize) -> bool {
        let word = slot.swap(0, Ordering::AcqRel);
        if word == 0 {
            return false;
        }
        let (ptr, size) = unpack(word);
        self.bytes.fetch_sub(size, Ordering::AcqRel);
        // SAFETY: a parked block is a System block of this rounded size and
        // ALIGN, no longer reachable from the cache (swapped out above).
        unsafe { System.dealloc(ptr, block_layout(size)) };
        true
    }

    /// Frees one parked block, round-robin; false if none is parked.
    fn evict_one(&self) -> bool {
        (0..SLOTS).any(|_| {
            let index = self.cursor.fetch_add(1, Ordering::Relaxed) % SLOTS;
            self.free_slot(&self.slots[index])
        })
    }

    /// A parked block of exactly `size` bytes, taken out of the cache.
    fn take(&self, size: usize) -> Option<*mut u8> {
        self.release_if_requested();
        for slot in &self.slots {
            let word = slot.load(Ordering::Acquire);
            if word == 0 || unpack(word).1 != size {
                continue;
            }
            // Whoever swaps the word out owns the block; a lost race moves on.
            if slot
                .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.bytes.fetch_sub(size, Ordering::AcqRel);
                return Some(unpack(word).0);
            }
        }
        None
    }

    /// Parks a freed block of `size` bytes; false when it cannot be kept
    /// (the caller frees it).
    fn park(&self, ptr: *mut u8, size: usize) -> bool {
        self.release_if_requested();
        let Some(word) = pack(ptr, size).filter(|_| size <= MAX_CACHED) else {
            return false;
        };
        // Room in bytes first: evict until the block fits under the cap.
        while self.bytes.fetch_add(size, Ordering::AcqRel) + size > MAX_CACHED {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            if !self.evict_one() {
                return false;
            }
        }
        // Then a slot: bounded tries, evicting when all are taken.
        for _ in 0..=SLOTS {
            for slot in &self.slots {
                if slot
                    .compare_exchange(0, word, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return true;
                }
            }
            if !self.evict_one() {
                break;
            }
        }
        self.bytes.fetch_sub(size, Ordering::AcqRel);
        false
    }

    /// Bytes parked now (for tests and diagnostics).
    pub fn parked_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Sizes of the blocks parked now.
    #[cfg(test)]
    fn parked_sizes(&self) -> Vec<usize> {
        self.slots
            .iter()
            .map(|slot| slot.load(Ordering::Acquire))
            .filter(|&word| word != 0)
            .map(|word| unpack(word).1)
            .collect()
    }
}

// SAFETY: every block handed out is either fresh from `System` or a parked
// block of the same size class; cached-class blocks are always allocated,
// grown and freed with `block_layout(class)` (ALIGN ≥ the caller's
// alignment, size ≥ the caller's), every other block with the caller's own
// layout; no path panics.
unsafe impl GlobalAlloc for BlockCacheAlloc {
    /// # Safety
    /// The contract of the `GlobalAlloc` method of this name.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::class(layout) {
            Some(size) => match self.take(size) {
                Some(ptr) => ptr,
                // SAFETY: a non-zero size.
                None => unsafe { System.alloc(block_layout(size)) },
            },
            // SAFETY: forwarded.
            None => unsafe { System.alloc(layout) },
        }
    }

    /// # Safety
    /// The contract of the `GlobalAlloc` method of this name.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::class(layout) {
            Some(size) => match self.take(size) {
                Some(ptr) => {
                    // SAFETY: the block holds `size` ≥ layout.size() bytes.
                    unsafe { ptr.write_bytes(0, layout.size()) };
                    ptr
                }
                // SAFETY: as in alloc; fresh pages from the system are
                // zero without a pass over them.
                None => unsafe { System.alloc_zeroed(block_layout(size)) },
            },
            // SAFETY: forwarded.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    /// # Safety
    /// The contract of the `GlobalAlloc` method of this name.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::class(layout) {
            Some(size) => {
                if !self.park(ptr, size) {
                    // SAFETY: allocated with this layout (see alloc).
                    unsafe { System.dealloc(ptr, block_layout(size)) }
                }
            }
            // SAFETY: forwarded.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    /// # Safety
    /// The contract of the `GlobalAlloc` method of this name.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size is valid for this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Self::class(layout), Self::class(new_layout)) {
            // The block already has the room.
            (Some(old), Some(new)) if old == new => ptr,
            // Both cached classes: the system moves or extends the pages
            // (mremap) rather than copying; the result is a System block
            // of the new rounded size and ALIGN, as the class wants.
            // SAFETY: allocated with block_layout(old); new is non-zero.
            (Some(old), Some(new)) => unsafe { System.realloc(ptr, block_layout(old), new) },
            // SAFETY: forwarded.
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            // Into or out of the cached classes: the two sides' layouts
            // differ in alignment, so a new block and a copy.
            _ => {
                // SAFETY: new_layout has a non-zero size (the caller's).
                let new_ptr = unsafe { self.alloc(new_layout) };
                if !new_ptr.is_null() {
                    // SAFETY: both blocks hold at least the bytes copied,
                    // and are distinct.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new_ptr
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// `release_parked` reaches every instance: tests that check what is
    /// parked take turns.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    fn layout(bytes: usize, align: usize) -> Layout {
        Layout::from_size_align(bytes, align).unwrap()
    }

    #[test]
    fn a_freed_large_block_serves_the_next_request_of_its_class() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let cache = BlockCacheAlloc::new();
        let big = layout(6 << 20, 8);
        let near = layout((6 << 20) - 100, 8);
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
            let other = layout(9 << 20, 8);
            let third = cache.alloc(other);
            assert_ne!(third, first);
            cache.dealloc(third, other);
            // Small blocks and over-aligned ones bypass the cache.
            let small = layout(1024, 8);
            let s = cache.alloc(small);
            cache.dealloc(s, small);
            let aligned = layout(8 << 20, 4096);
            let a = cache.alloc(aligned);
            assert_eq!(a as usize % 4096, 0);
            cache.dealloc(a, aligned);
        }
        assert_eq!(cache.parked_bytes(), (6 << 20) + (9 << 20));
        let mut sizes = cache.parked_sizes();
        sizes.sort();
        assert_eq!(sizes, [6 << 20, 9 << 20]);
    }

    #[test]
    fn parked_blocks_are_freed_on_request() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let cache = BlockCacheAlloc::new();
        let (big, small) = (layout(5 << 20, 16), layout(64, 16));
        unsafe {
            let block = cache.alloc(big);
            cache.dealloc(block, big);
            assert_eq!(cache.parked_bytes(), 5 << 20);
            release_parked();
            // Small requests do not look at the cache; the next large one does.
            let s = cache.alloc(small);
            cache.dealloc(s, small);
            let other = layout(7 << 20, 16);
            let fresh = cache.alloc(other);
            assert_eq!(cache.parked_bytes(), 0);
            cache.dealloc(fresh, other);
        }
    }

    #[test]
    fn the_cache_stays_within_its_bounds() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let cache = BlockCacheAlloc::new();
        let mib = |n: usize| layout(n << 20, 16);
        unsafe {
            // More blocks than slots, then more bytes than the cap.
            let blocks: Vec<_> = (0..SLOTS + 4)
                .map(|i| (cache.alloc(mib(4 + i)), mib(4 + i)))
                .collect();
            for (ptr, l) in blocks {
                cache.dealloc(ptr, l);
            }
            let huge = mib(600);
            let h1 = cache.alloc(huge);
            let h2 = cache.alloc(huge);
            let h3 = cache.alloc(huge);
            cache.dealloc(h1, huge);
            cache.dealloc(h2, huge);
            cache.dealloc(h3, huge);
        }
        let sizes = cache.parked_sizes();
        assert!(sizes.len() <= SLOTS && cache.parked_bytes() <= MAX_CACHED);
        // The newest block was kept, by evicting older ones.
        assert!(sizes.contains(&(600 << 20)));
        // The count matches what is parked.
        assert_eq!(sizes.iter().sum::<usize>(), cache.parked_bytes());
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes_and_the_block_within_one() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let cache = BlockCacheAlloc::new();
        let fill = |ptr: *mut u8, len: usize| {
            for i in (0..len).step_by(997) {
                unsafe { *ptr.add(i) = (i % 251) as u8 };
            }
        };
        let check = |ptr: *mut u8, len: usize| {
            (0..len)
                .step_by(997)
                .all(|i| unsafe { *ptr.add(i) } == (i % 251) as u8)
        };
        unsafe {
            // Small to large (a copy into a cached-class block).
            let small = layout(1 << 20, 8);
            let p = cache.alloc(small);
            fill(p, small.size());
            let large = layout(5 << 20, 8);
            let p = cache.realloc(p, small, large.size());
            assert!(check(p, small.size()));
            fill(p, large.size());
            // Within the class: the same block.
            let same = cache.realloc(p, large, (5 << 20) - 10);
            assert_eq!(same, p);
            // To another class: grown by the system, contents kept.
            let grown = cache.realloc(same, layout((5 << 20) - 10, 8), 12 << 20);
            assert!(check(grown, (5 << 20) - 10));
            // Back below the cache: a copy into a small block.
            let shrunk = cache.realloc(grown, layout(12 << 20, 8), 1 << 20);
            assert!(check(shrunk, 1 << 20));
            cache.dealloc(shrunk, layout(1 << 20, 8));
            // Over-aligned blocks go to the system both ways.
            let aligned = layout(8 << 20, 4096);
            let a = cache.alloc(aligned);
            fill(a, 1 << 20);
            let a = cache.realloc(a, aligned, 16 << 20);
            assert!(check(a, 1 << 20) && (a as usize).is_multiple_of(4096));
            cache.dealloc(a, layout(16 << 20, 4096));
        }
    }

    #[test]
    fn threads_share_the_cache_without_losing_a_block() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let cache = BlockCacheAlloc::new();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let cache = &cache;
                scope.spawn(move || {
                    for i in 0..200 {
                        let l = layout((4 + (t + i) % 6) << 20, 16);
                        unsafe {
                            let p = cache.alloc(l);
                            assert!(!p.is_null());
                            *p = t as u8;
                            *p.add(l.size() - 1) = i as u8;
                            assert_eq!((*p, *p.add(l.size() - 1)), (t as u8, i as u8));
                            cache.dealloc(p, l);
                        }
                    }
                });
            }
        });
        let sizes = cache.parked_sizes();
        assert_eq!(sizes.iter().sum::<usize>(), cache.parked_bytes());
        assert!(cache.parked_bytes() <= MAX_CACHED);
    }
}
