//! Matrix products in bfloat16 with f32 accumulation, on CPUs with
//! AVX-512 BF16, by one of two kernels ([`Kernel`]):
//! - Intel AMX (`tdpbf16ps`, Sapphire Rapids and later Xeons): tile
//!   products, chosen when the CPU has them and Linux grants the tile state;
//! - AVX-512 BF16 (`vdpbf16ps`: 32 bf16 products summed into 16 f32 lanes
//!   per instruction) everywhere else.
//!
//! Used by `[engine] precision = "bf16"`: operands are rounded to bf16 (8
//! significant bits) as they are packed, sums stay f32. The left operand
//! (a layer's weights) is packed once; the right one per call.
//!
//! Layout: every u32 holds two bf16 values consecutive along k. Packed B,
//! for both kernels: per block of `KC` pairs, per panel of `NR` columns,
//! `[pair][column]`. Packed A: per block of `KC` pairs, per block of rows,
//! `[pair][row]` in blocks of `MR` rows for AVX-512 (one broadcast A pair
//! against two B vectors), `[row][pair]` in blocks of 32 rows for AMX (a
//! tile row is 16 consecutive pairs). For AMX both are padded with zero
//! pairs to a multiple of 16, so every tile is whole. An operand packed for
//! one kernel is only multiplied by the same kernel; the per-call operand
//! follows the packed-once one.
//!
//! The products write into bounds-checked [`OutBlock`]s; the raw-pointer
//! loops are private to `avx512` and `amx`.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::buffers::{LineBuffer, OutBlock};

mod amx;
mod avx512;
pub(crate) mod implicit;
mod pack;

#[cfg(test)]
use pack::pack_pair_rows;
pub(crate) use pack::transpose_16x16;
use pack::{pack_b, pack_b_by_rows, pack_consecutive};

pub use amx::peak_multiply_adds as amx_peak_multiply_adds;
pub use implicit::ConvTaps;

/// Rows of C per AVX-512 microkernel tile.
const MR: usize = 12;
/// Columns of C per microkernel tile (two 16-lane vectors; two AMX tiles).
const NR: usize = 32;
/// k-pairs per cache block: a B panel (KC·NR pairs, 16 KiB) stays in L1.
const KC: usize = 128;

thread_local! {
    static IN_USE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the layers that support it computing in bf16 on this
/// thread (the engine thread: layers read the setting when called, and hand
/// the work to pool threads themselves). Scoped to the thread so that
/// generators with different settings never see each other's.
/// The previous setting comes back when `f` returns or panics (a guard),
/// so a panicking job cannot leave the thread computing in bf16.
pub fn scoped<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_USE.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(IN_USE.with(|cell| cell.replace(on && available())));
    f()
}

/// Whether layers called on this thread now should compute in bf16.
pub fn in_use() -> bool {
    IN_USE.with(|cell| cell.get())
}

thread_local! {
    static PACK_AT_LOAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a model's load) with the linear and convolution layers it
/// makes on this thread packing their weights for the bf16 kernel at once,
/// where that kernel is AMX: there every such layer computes from its
/// packed weights (Winograd never replaces AMX products), so the packing
/// belongs to the load rather than to the first job (about 6 s of a first
/// SD 1.5 UNet step, BENCHMARKS.md). On AVX-512 they are still packed on
/// first use: which convolutions Winograd takes there depends on the input
/// size, and those keep no packed copy. Restored like [`scoped`].
pub fn packing_at_load<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PACK_AT_LOAD.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(PACK_AT_LOAD.with(|cell| cell.replace(on)));
    f()
}

/// Whether a layer made now should pack its weights at once (see
/// [`packing_at_load`]).
pub(crate) fn packs_at_load() -> bool {
    PACK_AT_LOAD.with(|cell| cell.get()) && Kernel::chosen() == Kernel::Amx
}

/// True when this CPU can run the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN).
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return (bits >> 16) | 0x40;
    }
    (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// The matrix kernel an operand is packed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 BF16 dot products.
    Avx512,
    /// Intel AMX tiles.
    Amx,
}

/// Which kernel new operands are packed for: `Auto` takes AMX where
/// usable. `[engine] bf16_kernel` sets it at startup; a benchmark sets it
/// to compare the two on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preference {
    Auto,
    Avx512,
    Amx,
}

static PREFERENCE: AtomicU8 = AtomicU8::new(0);

/// Sets the kernel operands packed from now on are laid out for. Fails
/// when the CPU (or the OS) cannot run the one asked for.
pub fn prefer(preference: Preference) -> Result<(), String> {
    if preference == Preference::Amx && !Kernel::Amx.usable() {
        return Err("bf16_kernel = \"amx\": this CPU has no AMX-BF16, or Linux did not grant its tile state".into());
    }
    if preference != Preference::Auto && !available() {
        return Err("the bf16 kernels need AVX-512 BF16, which this CPU lacks".into());
    }
    let code = match preference {
        Preference::Auto => 0,
        Preference::Avx512 => 1,
        Preference::Amx => 2,
    };
    PREFERENCE.store(code, Ordering::Relaxed);
    Ok(())
}

impl Kernel {
    /// The kernel new operands are packed for (see [`prefer`]).
    pub fn chosen() -> Self {
        match PREFERENCE.load(Ordering::Relaxed) {
            1 => Self::Avx512,
            2 => Self::Amx,
            _ if Self::Amx.usable() => Self::Amx,
            _ => Self::Avx512,
        }
    }

    /// Whether this CPU (and OS) can run it.
    pub fn usable(self) -> bool {
        match self {
            Self::Avx512 => available(),
            Self::Amx => available() && amx::usable(),
        }
    }

    /// The kernels this CPU can run.
    pub fn all_usable() -> Vec<Self> {
        [Self::Avx512, Self::Amx]
            .into_iter()
            .filter(|kernel| kernel.usable())
            .collect()
    }

    /// k-pairs stored per row of A and column of B: AMX reads whole tile
    /// rows of 16 pairs, so its operands end in zero pairs.
    fn stored_pairs(self, k: usize) -> usize {
        match self {
            Self::Avx512 => k.div_ceil(2),
            Self::Amx => k.div_ceil(2).next_multiple_of(amx::PAIRS_PER_TILE),
        }
    }

    /// Rows of A per packed block.
    fn a_rows(self) -> usize {
        match self {
            Self::Avx512 => MR,
            Self::Amx => amx::ROWS,
        }
    }

    /// Where pair `p` of row `r` goes in a block of `rows`×`kc` pairs.
    #[inline(always)]
    fn a_index(self, p: usize, r: usize, kc: usize) -> usize {
        match self {
            Self::Avx512 => p * MR + r,
            Self::Amx => r * kc + p,
        }
    }
}

/// A left operand (m × k), packed once.
#[derive(Debug)]
pub struct PackedA {
    m: usize,
    k: usize,
    kernel: Kernel,
    data: LineBuffer,
}

impl PackedA {
    /// Packs row-major `a` (m rows of k, `row_stride` apart) for the
    /// chosen kernel.
    pub fn new(a: &[f32], m: usize, k: usize, row_stride: usize) -> Self {
        Self::new_for(Kernel::chosen(), a, m, k, row_stride)
    }

    /// As [`PackedA::new`], for the kernel given.
    pub fn new_for(kernel: Kernel, a: &[f32], m: usize, k: usize, row_stride: usize) -> Self {
        Self::from_rows_for(kernel, m, k, |row, columns, out| {
            out.copy_from_slice(&a[row * row_stride..][columns]);
        })
    }

    /// Packs an m × k operand whose values `fill(row, columns, out)` writes
    /// into `out`, a block of at most 2·KC columns of one row at a time:
    /// computed values (attention's exponentials) go straight from L1 into
    /// the packed layout instead of through a full f32 matrix.
    pub fn from_rows_with(
        m: usize,
        k: usize,
        fill: impl FnMut(usize, std::ops::Range<usize>, &mut [f32]),
    ) -> Self {
        Self::from_rows_for(Kernel::chosen(), m, k, fill)
    }

    fn from_rows_for(
        kernel: Kernel,
        m: usize,
        k: usize,
        mut fill: impl FnMut(usize, std::ops::Range<usize>, &mut [f32]),
    ) -> Self {
        let rows = kernel.a_rows();
        let (pairs, blocks_m) = (kernel.stored_pairs(k), m.div_ceil(rows));
        let mut buffer = LineBuffer::zeroed(pairs * blocks_m * rows);
        let data = buffer.as_mut_slice();
        let mut values = [0f32; 2 * KC];
        let mut block_at = 0;
        for kb in (0..pairs).step_by(KC) {
            let kc = KC.min(pairs - kb);
            // Padding pairs past k stay zero.
            let columns = (2 * kb).min(k)..(2 * (kb + kc)).min(k);
            let width = columns.len();
            for mb in 0..blocks_m {
                let block = &mut data[block_at..block_at + kc * rows];
                // Row by row; rows past m stay zero.
                for r in 0..rows.min(m - mb * rows) {
                    fill(mb * rows + r, columns.clone(), &mut values[..width]);
                    if kernel == Kernel::Amx {
                        // A row's pairs are consecutive: one conversion.
                        let start = kernel.a_index(0, r, kc);
                        pack_consecutive(&values[..width], &mut block[start..start + kc]);
                        continue;
                    }
                    let twos = values[..width].chunks_exact(2);
                    if let [last] = twos.remainder() {
                        // k odd: the last pair has no second value.
                        block[kernel.a_index(width / 2, r, kc)] = pair(*last, 0.0);
                    }
                    for (p, two) in twos.enumerate() {
                        block[kernel.a_index(p, r, kc)] = pair(two[0], two[1]);
                    }
                }
                block_at += kc * rows;
            }
        }
        Self {
            m,
            k,
            kernel,
            data: buffer,
        }
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn depth(&self) -> usize {
        self.k
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }
}

/// A right operand given as its transpose (n rows of k: a linear layer's
/// weights, `[out, in]`), packed once.
#[derive(Debug)]
pub struct PackedB {
    n: usize,
    k: usize,
    kernel: Kernel,
    data: LineBuffer,
}

impl PackedB {
    /// Packs the transpose of row-major `bt` (n rows of k) for the chosen
    /// kernel.
    pub fn from_transposed(bt: &[f32], n: usize, k: usize) -> Self {
        Self::from_transposed_for(Kernel::chosen(), bt, n, k)
    }

    /// As [`PackedB::from_transposed`], for the kernel given.
    pub fn from_transposed_for(kernel: Kernel, bt: &[f32], n: usize, k: usize) -> Self {
        let (real_pairs, pairs) = (k.div_ceil(2), kernel.stored_pairs(k));
        let panels = n.div_ceil(NR);
        let mut buffer = LineBuffer::zeroed(pairs * panels * NR);
        let data = buffer.as_mut_slice();
        let mut at = 0;
        for kb in (0..pairs).step_by(KC) {
            let kc = KC.min(pairs - kb);
            for panel in 0..panels {
                for p in kb..kb + kc {
                    if p < real_pairs {
                        for j in 0..NR.min(n - panel * NR) {
                            let row = &bt[(panel * NR + j) * k..][..k];
                            let hi = if 2 * p + 1 < k { row[2 * p + 1] } else { 0.0 };
                            data[at + j] = pair(row[2 * p], hi);
                        }
                    }
                    at += NR;
                }
            }
        }
        Self {
            n,
            k,
            kernel,
            data: buffer,
        }
    }

    /// Packs row-major `b` (k rows of n, `row_stride` apart) for the chosen
    /// kernel.
    pub fn from_rows(b: &[f32], k: usize, n: usize, row_stride: usize) -> Self {
        let kernel = Kernel::chosen();
        let mut data = LineBuffer::default();
        pack_b(kernel, b, k, n, row_stride, &mut data);
        Self { n, k, kernel, data }
    }

    pub fn columns(&self) -> usize {
        self.n
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn depth(&self) -> usize {
        self.k
    }
}

/// C (m × n) = C·`accumulate` + A·B, with A row-major (m × k, rows
/// `a_stride` apart) packed here and B packed once.
pub(crate) fn gemm_packed_b(
    a: &[f32],
    m: usize,
    a_stride: usize,
    b: &PackedB,
    c: OutBlock<'_>,
    accumulate: bool,
) {
    gemm_prepacked(
        &PackedA::new_for(b.kernel, a, m, b.k, a_stride),
        b,
        c,
        accumulate,
    )
}

/// C (a.rows() × b.columns()) = C·`accumulate` + A·B, both operands
/// packed.
pub(crate) fn gemm_prepacked(a: &PackedA, b: &PackedB, c: OutBlock<'_>, accumulate: bool) {
    assert_eq!(a.k, b.k, "bf16 gemm: inner dimensions differ");
    assert_eq!(
        a.kernel, b.kernel,
        "bf16 gemm: operands packed for different kernels"
    );
    gemm_packed(a, b.data.as_slice(), b.n, c, accumulate)
}

thread_local! {
    static PACKED_B: std::cell::RefCell<LineBuffer> = std::cell::RefCell::new(LineBuffer::default());
    static B_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// As [`gemm`], with B (a.depth() × n) given row by row through `row`
/// (see `pack_b_by_rows`): a caller that computes B's rows (a
/// convolution's unfolding) never writes B out whole.
pub(crate) fn gemm_rows(
    a: &PackedA,
    n: usize,
    mut row: impl FnMut(usize, &mut [f32]),
    c: OutBlock<'_>,
    accumulate: bool,
) {
    PACKED_B.with(|packed| {
        B_ROWS.with(|buffer| {
            let mut packed = packed.borrow_mut();
            pack_b_by_rows(
                a.kernel,
                a.k,
                n,
                &mut row,
                &mut buffer.borrow_mut(),
                &mut packed,
            );
            gemm_packed(a, packed.as_slice(), n, c, accumulate)
        })
    })
}

/// C (m × n) = C·`accumulate` + A·B, with B row-major (k × n, rows
/// `b_stride` apart). Runs on the calling thread.
pub(crate) fn gemm(
    a: &PackedA,
    b: &[f32],
    b_stride: usize,
    n: usize,
    c: OutBlock<'_>,
    accumulate: bool,
) {
    PACKED_B.with(|packed| {
        let mut packed = packed.borrow_mut();
        pack_b(a.kernel, b, a.k, n, b_stride, &mut packed);
        gemm_packed(a, packed.as_slice(), n, c, accumulate)
    })
}

/// The product into a checked block, on a CPU checked to have the kernel.
fn gemm_packed(a: &PackedA, b: &[u32], n: usize, c: OutBlock<'_>, accumulate: bool) {
    assert!(
        a.kernel.usable(),
        "bf16 gemm: this CPU cannot run the {:?} kernel",
        a.kernel
    );
    let pairs = a.kernel.stored_pairs(a.k);
    assert!(
        b.len() >= pairs * n.div_ceil(NR) * NR,
        "bf16 gemm: B is too short"
    );
    let out = c.ptr_for(a.m, n);
    // SAFETY: C holds m rows of n floats, `c.stride()` apart (checked by
    // ptr_for), reached by nothing else and initialised where accumulated
    // into (OutBlock's contract); both operands are packed for the kernel
    // with `pairs` pairs (B's length checked above, A's by construction);
    // the CPU runs the kernel (checked above).
    unsafe {
        match a.kernel {
            Kernel::Avx512 => avx512::gemm(
                a.m,
                pairs,
                a.data.as_slice(),
                b,
                n,
                out,
                c.stride(),
                accumulate,
            ),
            Kernel::Amx => amx::gemm(
                a.m,
                pairs,
                a.data.as_slice(),
                b,
                n,
                out,
                c.stride(),
                accumulate,
            ),
        }
    }
}

#[cfg(test)]
mod tests;
