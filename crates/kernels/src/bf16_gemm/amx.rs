//! The Intel AMX loop nest (`tdpbf16ps`): tile matrix products on
//! Sapphire Rapids and later Xeons, about eight times the bf16
//! multiply-adds per cycle of `vdpbf16ps`.
//!
//! Eight tile registers of 16 rows × 64 bytes: four hold a 32×32 block of C
//! (f32), two hold 32 rows of A (16 k-pairs each) and two hold 16 k-pairs
//! of B for 32 columns. The operands are laid out by the parent module for
//! [`Kernel::Amx`](super::Kernel::Amx): A as `[row][pair]` in blocks of
//! [`ROWS`] rows, B as the AVX-512 kernel's `[pair][column]` panels, both
//! padded with zero pairs to a multiple of 16 so that every tile is whole.
//!
//! The tile instructions are written as inline assembly (the intrinsics
//! are not stable Rust); the compiler never uses the tile registers, so
//! they keep their values from one `asm!` block to the next. Linux hands
//! a process the tile state only after it asks (`arch_prctl`), once.

use std::sync::OnceLock;

use super::{KC, NR};

/// Rows of A per packed block: two tiles of 16.
pub(super) const ROWS: usize = 32;
/// k-pairs per tile row: 64 bytes.
pub(super) const PAIRS_PER_TILE: usize = 16;
/// Panels of B per column group (256 columns).
const GROUP_PANELS: usize = 8;
/// Row blocks of A per row chunk (128 rows).
const CHUNK_BLOCKS: usize = 4;

/// True when this CPU has AMX-BF16 and Linux lets this process use it
/// (asked once; later calls read the answer).
pub(super) fn usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(request_tile_state)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 7 exists on every x86-64 CPU this runs on
    // (leaf 0's maximum is checked first).
    let has_amx = unsafe {
        use std::arch::x86_64::__cpuid_count;
        __cpuid_count(0, 0).eax >= 7 && {
            let edx = __cpuid_count(7, 0).edx;
            edx & (1 << 22) != 0 && edx & (1 << 24) != 0
        }
    };
    if !has_amx {
        return false;
    }
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these codes reads or writes only the u64
    // it is given; a kernel without them answers an error.
    unsafe {
        if libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) != 0
        {
            return false;
        }
        let mut granted: u64 = 0;
        let asked = libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_XCOMP_PERM,
            &mut granted as *mut u64,
        );
        asked == 0 && granted & (1 << XFEATURE_XTILEDATA) != 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// The tile configuration `ldtilecfg` reads: palette 1, eight tiles of 16
/// rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full_tiles() -> Self {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        for tile in 0..8 {
            bytes[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&64u16.to_le_bytes());
            bytes[48 + tile] = 16;
        }
        Self(bytes)
    }
}

/// A 32×32 block of C for ragged edges, 128 bytes a row.
#[repr(C, align(64))]
struct EdgeBlock([f32; ROWS * NR]);

/// # Safety
/// `c` must be valid for writes (and, where `accumulate`, reads of
/// initialised floats) of m rows of n floats, `c_stride` apart, that no
/// other thread touches meanwhile; `a` holds A (m × k) and `b` holds B
/// (k × n) packed for this kernel with `pairs` k-pairs, a multiple of 16;
/// [`usable`] is true.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    m: usize,
    pairs: usize,
    a: &[u32],
    b: &[u32],
    n: usize,
    c: *mut f32,
    c_stride: usize,
    accumulate: bool,
) {
    use std::arch::asm;
    debug_assert_eq!(pairs % PAIRS_PER_TILE, 0);
    let config = TileConfig::full_tiles();
    // SAFETY: the process holds the tile state (usable()); the
    // configuration is 64 valid bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
    let (blocks_m, panels) = (m.div_ceil(ROWS), n.div_ceil(NR));
    // Rows in chunks of CHUNK_BLOCKS blocks, columns in groups of
    // GROUP_PANELS panels, each chunk × group through all of k before the
    // next: its part of C (128 × 256 floats) and of A (128 rows × KC pairs)
    // stay in L2 across the k blocks, and each B panel (KC × 32) in L1
    // across the chunk's row blocks. Larger chunks measured slower (a
    // 512-row product at 0.6–0.75× the speed of a 128-row one).
    for chunk in (0..blocks_m).step_by(CHUNK_BLOCKS) {
        let chunk_blocks = chunk..(chunk + CHUNK_BLOCKS).min(blocks_m);
        for group in (0..panels).step_by(GROUP_PANELS) {
            let group_panels = group..(group + GROUP_PANELS).min(panels);
            let (mut a_at, mut b_at) = (0, 0);
            for kb in (0..pairs).step_by(KC) {
                let kc = KC.min(pairs - kb);
                let add = accumulate || kb > 0;
                for panel in group_panels.clone() {
                    let b_panel = &b[b_at + panel * kc * NR..][..kc * NR];
                    let width = NR.min(n - panel * NR);
                    for mb in chunk_blocks.clone() {
                        let a_block = &a[a_at + mb * kc * ROWS..][..kc * ROWS];
                        let height = ROWS.min(m - mb * ROWS);
                        // SAFETY: the block lies inside C (height ≤ rows
                        // left, width ≤ columns left); the tiles are
                        // configured.
                        unsafe {
                            let block = c.add(mb * ROWS * c_stride + panel * NR);
                            c_block(kc, a_block, b_panel, block, c_stride, height, width, add);
                        }
                    }
                }
                a_at += kc * ROWS * blocks_m;
                b_at += kc * NR * panels;
            }
        }
    }
    // Back to the initial state: a thread switch then saves no tile data.
    // SAFETY: releasing the tiles is always allowed.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// # Safety
/// Never called: [`usable`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    _: usize,
    _: usize,
    _: &[u32],
    _: &[u32],
    _: usize,
    _: *mut f32,
    _: usize,
    _: bool,
) {
    unreachable!("AMX kernel off x86-64");
}

/// One step of 16 k-pairs into the 32×32 block of C held in tmm0–3: the
/// A tiles' 16 rows start at `a0` and `a1`, `a_bytes` apart; the two B
/// tiles lie side by side at `b0`, rows of NR pairs. Shared by the
/// products and the tap tiles.
///
/// # Safety
/// The tiles are configured as [`TileConfig::full_tiles`]; 16 rows of 64
/// bytes, `a_bytes` apart, are readable from `a0` and from `a1`, and 16
/// rows of NR u32s from `b0`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn step_2x2(a0: *const u32, a1: *const u32, b0: *const u32, a_bytes: usize) {
    // SAFETY: every row read lies in the extents the caller guarantees.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b0} + {sb}*1 + 64]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0,
            sa = in(reg) a_bytes, sb = in(reg) NR * 4,
            options(nostack, readonly),
        );
    }
}

/// One 32×32 block of C over `kc` k-pairs (a multiple of 16).
///
/// # Safety
/// `c` must be valid for writes (reads too, where `add`) of `height` ≤ 32
/// rows of `width` ≤ 32 floats, `c_stride` apart; `a` holds 32·kc pairs
/// and `b` kc·NR; the tiles are configured as [`TileConfig::full_tiles`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn c_block(
    kc: usize,
    a: &[u32],
    b: &[u32],
    c: *mut f32,
    c_stride: usize,
    height: usize,
    width: usize,
    add: bool,
) {
    use std::arch::asm;
    assert!(a.len() >= ROWS * kc && b.len() >= kc * NR && kc.is_multiple_of(PAIRS_PER_TILE));
    let whole = height == ROWS && width == NR;
    let mut edge = std::mem::MaybeUninit::<EdgeBlock>::uninit();
    let (dst, dst_stride) = if whole {
        (c, c_stride)
    } else {
        // Rows and columns past C's edge are computed but never read.
        let edge = edge.write(EdgeBlock([0.0; ROWS * NR]));
        if add {
            for r in 0..height {
                for col in 0..width {
                    // SAFETY: r < height, col < width: inside C.
                    edge.0[r * NR + col] = unsafe { *c.add(r * c_stride + col) };
                }
            }
        }
        (edge.0.as_mut_ptr(), NR)
    };
    let row_bytes = dst_stride * 4;
    // SAFETY (all asm below): every tile row read or written lies inside
    // `dst` (32 rows of 32 floats, `row_bytes` apart), `a` (32 rows of kc
    // pairs) or `b` (kc rows of NR pairs), by the assertion above.
    unsafe {
        let lower = dst.add(16 * dst_stride);
        if add {
            asm!(
                "tileloadd tmm0, [{c0} + {s}*1]",
                "tileloadd tmm1, [{c0} + {s}*1 + 64]",
                "tileloadd tmm2, [{c1} + {s}*1]",
                "tileloadd tmm3, [{c1} + {s}*1 + 64]",
                c0 = in(reg) dst, c1 = in(reg) lower, s = in(reg) row_bytes,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        let a_bytes = kc * 4;
        // A last panel of at most 16 columns (n = 40 heads' values, 80,
        // …): its second B tile is all zeros, so only the first is
        // multiplied, half the products.
        let narrow = width <= NR / 2;
        for step in (0..kc).step_by(PAIRS_PER_TILE) {
            let a0 = a.as_ptr().add(step);
            let a1 = a0.add(16 * kc);
            let b0 = b.as_ptr().add(step * NR);
            if narrow {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0,
                    sa = in(reg) a_bytes, sb = in(reg) NR * 4,
                    options(nostack, readonly),
                );
                continue;
            }
            step_2x2(a0, a1, b0, a_bytes);
        }
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c0} + {s}*1 + 64], tmm1",
            "tilestored [{c1} + {s}*1], tmm2",
            "tilestored [{c1} + {s}*1 + 64], tmm3",
            c0 = in(reg) dst, c1 = in(reg) lower, s = in(reg) row_bytes,
            options(nostack),
        );
    }
    if !whole {
        // SAFETY: written above, on this branch.
        let edge = unsafe { edge.assume_init_ref() };
        for r in 0..height {
            for col in 0..width {
                // SAFETY: r < height, col < width: inside C.
                unsafe { *c.add(r * c_stride + col) = edge.0[r * NR + col] };
            }
        }
    }
}

/// The tile registers configured on this thread as
/// [`TileConfig::full_tiles`] while it lives, released when it drops. Not
/// `Send`: the configuration belongs to the thread that loaded it.
pub(super) struct Tiles {
    _on_this_thread: std::marker::PhantomData<*const ()>,
}

impl Tiles {
    /// `None` where AMX is not usable.
    pub(super) fn configure() -> Option<Self> {
        if !usable() {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let config = TileConfig::full_tiles();
            // SAFETY: the process holds the tile state (usable()); the
            // configuration is 64 valid bytes.
            unsafe {
                std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly))
            };
            Some(Self {
                _on_this_thread: std::marker::PhantomData,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// One 32×32 block of a convolution's output over all its taps (see
    /// `implicit`): `out[r][j]` (row r of 32, 32 floats each) = the sum
    /// over taps t and k-pairs p of A(r, t, p) · B(t, p, j), where A's row
    /// r < 16 starts at `a[starts[0] + taps[t] + r·row_stride]` and row
    /// 16 + r at `a[starts[1] + taps[t] + r·row_stride]` (`pairs` pairs
    /// each), and B is `b` laid `[tap][pair][NR columns]`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn taps_block(
        &self,
        a: &[u32],
        starts: [usize; 2],
        taps: &[usize],
        row_stride: usize,
        pairs: usize,
        b: &[u32],
        out: &mut [f32; ROWS * NR],
    ) {
        assert!(pairs.is_multiple_of(PAIRS_PER_TILE) && pairs > 0);
        assert!(b.len() >= taps.len() * pairs * NR, "tap tiles: B too short");
        let reach = 15 * row_stride + pairs;
        for &tap in taps {
            for start in starts {
                assert!(
                    start + tap + reach <= a.len(),
                    "tap tiles: A rows outside the input"
                );
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the tiles are configured on this thread (self lives, and
        // is not Send); every A tile row read lies inside `a` and every B
        // row inside `b` (asserted above: rows start + tap + r·row_stride,
        // r < 16, pairs wide; B taps·pairs rows of NR); the 32 rows of 32
        // floats stored lie inside `out`.
        unsafe {
            use std::arch::asm;
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let sa = row_stride * 4;
            for (t, &tap) in taps.iter().enumerate() {
                let a0 = a.as_ptr().add(starts[0] + tap);
                let a1 = a.as_ptr().add(starts[1] + tap);
                let bt = b.as_ptr().add(t * pairs * NR);
                for step in (0..pairs).step_by(PAIRS_PER_TILE) {
                    step_2x2(a0.add(step), a1.add(step), bt.add(step * NR), sa);
                }
            }
            let c0 = out.as_mut_ptr();
            let c1 = c0.add(16 * NR);
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c0} + {s}*1 + 64], tmm1",
                "tilestored [{c1} + {s}*1], tmm2",
                "tilestored [{c1} + {s}*1 + 64], tmm3",
                c0 = in(reg) c0, c1 = in(reg) c1, s = in(reg) NR * 4,
                options(nostack),
            );
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: releasing the tiles is always allowed.
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem))
        };
    }
}

/// A bare tile product for the benchmarks: `repeats` passes of
/// `tdpbf16ps` over resident tiles (no memory traffic), the peak the
/// kernel is measured against. Returns the multiply-adds done, or `None`
/// where AMX is not usable.
pub fn peak_multiply_adds(repeats: usize) -> Option<u64> {
    if !usable() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::asm;
        let config = TileConfig::full_tiles();
        // SAFETY: usable() is true; the tiles are configured before use and
        // zeroed, so the products read defined values; no memory is touched
        // but the configuration.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                options(nostack, nomem)
            );
            for _ in 0..repeats {
                asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nostack, nomem)
                );
            }
            asm!("tilerelease", options(nostack, nomem));
        }
        // Each product: 16 rows × 16 columns × 32 bf16 products.
        Some(repeats as u64 * 4 * 16 * 16 * 32)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}
