//! Matrix products in bfloat16 with f32 accumulation, on CPUs with
//! AVX-512 BF16 (`vdpbf16ps`: 32 bf16 products summed into 16 f32 lanes per
//! instruction, twice the multiply-adds of an f32 FMA of the same width).
//!
//! Used by `[engine] precision = "bf16"`: operands are rounded to bf16 (8
//! significant bits) as they are packed, sums stay f32. The left operand
//! (a layer's weights) is packed once; the right one per call.
//!
//! Layout, as the instruction wants it: every u32 holds two bf16 values
//! consecutive along k. Packed A: per block of `KC` pairs, per block of
//! `MR` rows, `[pair][row]`. Packed B: per block of `KC` pairs, per panel of
//! `NR` columns, `[pair][column]`. The microkernel keeps an `MR`×`NR` tile of
//! C in 24 registers, broadcasting one A pair against two B vectors.
//!
//! The products write into bounds-checked [`OutBlock`]s; the raw-pointer
//! microkernel is private to this file.

use crate::buffers::OutBlock;

/// Rows of C per microkernel tile.
const MR: usize = 12;
/// Columns of C per microkernel tile (two 16-lane vectors).
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

/// A left operand (m × k), packed once.
#[derive(Debug)]
pub struct PackedA {
    m: usize,
    k: usize,
    data: Vec<u32>,
}

impl PackedA {
    /// Packs row-major `a` (m rows of k, `row_stride` apart).
    pub fn new(a: &[f32], m: usize, k: usize, row_stride: usize) -> Self {
        Self::from_rows_with(m, k, |row, columns, out| {
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
        mut fill: impl FnMut(usize, std::ops::Range<usize>, &mut [f32]),
    ) -> Self {
        let (pairs, blocks_m) = (k.div_ceil(2), m.div_ceil(MR));
        let mut data = vec![0u32; pairs * blocks_m * MR];
        let mut values = [0f32; 2 * KC];
        let mut block_at = 0;
        for kb in (0..pairs).step_by(KC) {
            let kc = KC.min(pairs - kb);
            let columns = 2 * kb..(2 * (kb + kc)).min(k);
            let width = columns.len();
            for mb in 0..blocks_m {
                let block = &mut data[block_at..block_at + kc * MR];
                // Row by row: writes MR apart; rows past m stay zero.
                for r in 0..MR.min(m - mb * MR) {
                    fill(mb * MR + r, columns.clone(), &mut values[..width]);
                    let twos = values[..width].chunks_exact(2);
                    if let [last] = twos.remainder() {
                        // k odd: the last pair has no second value.
                        block[width / 2 * MR + r] = pair(*last, 0.0);
                    }
                    for (p, two) in twos.enumerate() {
                        block[p * MR + r] = pair(two[0], two[1]);
                    }
                }
                block_at += kc * MR;
            }
        }
        Self { m, k, data }
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn depth(&self) -> usize {
        self.k
    }
}

/// A right operand given as its transpose (n rows of k: a linear layer's
/// weights, `[out, in]`), packed once.
#[derive(Debug)]
pub struct PackedB {
    n: usize,
    k: usize,
    data: Vec<u32>,
}

impl PackedB {
    /// Packs the transpose of row-major `bt` (n rows of k).
    pub fn from_transposed(bt: &[f32], n: usize, k: usize) -> Self {
        let (pairs, panels) = (k.div_ceil(2), n.div_ceil(NR));
        let mut data = vec![0u32; pairs * panels * NR];
        let mut at = 0;
        for kb in (0..pairs).step_by(KC) {
            let kc = KC.min(pairs - kb);
            for panel in 0..panels {
                for p in kb..kb + kc {
                    for j in 0..NR.min(n - panel * NR) {
                        let row = &bt[(panel * NR + j) * k..][..k];
                        let hi = if 2 * p + 1 < k { row[2 * p + 1] } else { 0.0 };
                        data[at + j] = pair(row[2 * p], hi);
                    }
                    at += NR;
                }
            }
        }
        Self { n, k, data }
    }

    /// Packs row-major `b` (k rows of n, `row_stride` apart).
    pub fn from_rows(b: &[f32], k: usize, n: usize, row_stride: usize) -> Self {
        let mut data = Vec::new();
        pack_b(b, k, n, row_stride, &mut data);
        Self { n, k, data }
    }

    pub fn columns(&self) -> usize {
        self.n
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
    gemm_prepacked(&PackedA::new(a, m, b.k, a_stride), b, c, accumulate)
}

/// C (a.rows() × b.columns()) = C·`accumulate` + A·B, both operands
/// packed.
pub(crate) fn gemm_prepacked(a: &PackedA, b: &PackedB, c: OutBlock<'_>, accumulate: bool) {
    assert_eq!(a.k, b.k, "bf16 gemm: inner dimensions differ");
    gemm_packed(a, &b.data, b.n, c, accumulate)
}

/// Packs row-major `b` (k rows of n, `row_stride` apart) into `out`.
fn pack_b(b: &[f32], k: usize, n: usize, row_stride: usize, out: &mut Vec<u32>) {
    let (pairs, panels) = (k.div_ceil(2), n.div_ceil(NR));
    out.clear();
    out.resize(pairs * panels * NR, 0);
    for p in 0..pairs {
        let lo = &b[2 * p * row_stride..][..n];
        let hi = (2 * p + 1 < k).then(|| &b[(2 * p + 1) * row_stride..][..n]);
        pack_pair_into_panels(out, pairs, p, lo, hi);
    }
}

/// Writes k-pair `p` of B (rows `lo` and `hi` of n values; no `hi` for the
/// last pair of an odd k) into its NR-wide slot in each panel of its k
/// block, in `out` sized for `pairs` pairs. Full slots are converted 16
/// columns at a time by the CPU's own rounding instruction
/// (`vcvtneps2bf16`, nearest-even like [`bf16_bits`]; it flushes
/// subnormal inputs to zero, which at bf16's 8 bits is noise): per call,
/// for a convolution's input, this costs about as much as the product once
/// the layer has few output channels.
fn pack_pair_into_panels(out: &mut [u32], pairs: usize, p: usize, lo: &[f32], hi: Option<&[f32]>) {
    let n = lo.len();
    let panels = n.div_ceil(NR);
    let kb = p / KC * KC;
    let kc = KC.min(pairs - kb);
    let block = kb * panels * NR + (p - kb) * NR;
    for panel in 0..panels {
        let columns = panel * NR..(panel * NR + NR).min(n);
        let at = block + panel * kc * NR;
        let dst = &mut out[at..at + NR];
        match hi {
            Some(hi) => pack_pair_rows(&lo[columns.clone()], &hi[columns], dst),
            None => {
                for (d, &l) in dst.iter_mut().zip(&lo[columns]) {
                    *d = pair(l, 0.0);
                }
            }
        }
    }
}

/// `dst[j] = pair(lo[j], hi[j])` for the columns given.
#[inline]
fn pack_pair_rows(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if lo.len() == NR && available() {
        // SAFETY: the CPU has the features (checked above); lo, hi and dst
        // hold NR values each (lo by the check, hi and dst by the callers'
        // slicing, same width).
        unsafe { pack_pair_rows_avx512(lo, hi, dst) };
        return;
    }
    for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
        *d = pair(l, h);
    }
}

/// # Safety
/// `lo`, `hi` and `dst` hold the same number of values, a multiple of 16, and the CPU has
/// AVX-512F and AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_pair_rows_avx512(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(lo.len() >= NR && hi.len() >= NR && dst.len() >= NR);
    for j in (0..NR).step_by(16) {
        // SAFETY: j + 16 <= NR, within every slice (asserted above).
        unsafe {
            let l = _mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr().add(j)));
            let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(hi.as_ptr().add(j)));
            let l = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(l));
            let h = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h));
            let packed = _mm512_or_si512(l, _mm512_slli_epi32::<16>(h));
            _mm512_storeu_si512(dst.as_mut_ptr().add(j) as *mut __m512i, packed);
        }
    }
}

/// Packs B (k × n) given row by row: `row(r, out)` writes row r into
/// `out` (n values). Rows are asked for in order, two at a time, and go
/// from a two-row buffer straight into the packed layout.
fn pack_b_by_rows(
    k: usize,
    n: usize,
    row: &mut impl FnMut(usize, &mut [f32]),
    buffer: &mut Vec<f32>,
    out: &mut Vec<u32>,
) {
    let (pairs, panels) = (k.div_ceil(2), n.div_ceil(NR));
    out.clear();
    out.resize(pairs * panels * NR, 0);
    buffer.resize(2 * n, 0.0);
    let (lo, hi) = buffer.split_at_mut(n);
    for p in 0..pairs {
        row(2 * p, lo);
        let has_hi = 2 * p + 1 < k;
        if has_hi {
            row(2 * p + 1, hi);
        }
        pack_pair_into_panels(out, pairs, p, lo, has_hi.then_some(&*hi));
    }
}

thread_local! {
    static PACKED_B: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
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
            pack_b_by_rows(a.k, n, &mut row, &mut buffer.borrow_mut(), &mut packed);
            gemm_packed(a, &packed, n, c, accumulate)
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
        pack_b(b, a.k, n, b_stride, &mut packed);
        gemm_packed(a, &packed, n, c, accumulate)
    })
}

/// The product into a checked block, on a CPU checked to have the kernel.
fn gemm_packed(a: &PackedA, b: &[u32], n: usize, c: OutBlock<'_>, accumulate: bool) {
    assert!(available(), "the bf16 kernel needs AVX-512 BF16");
    assert!(
        b.len() >= a.k.div_ceil(2) * n.div_ceil(NR) * NR,
        "bf16 gemm: B is too short"
    );
    let out = c.ptr_for(a.m, n);
    // SAFETY: C holds m rows of n floats, `c.stride()` apart (checked by
    // ptr_for), reached by nothing else and initialised where accumulated
    // into (OutBlock's contract); the CPU has the features (checked above).
    unsafe { gemm_packed_raw(a, b, n, out, c.stride(), accumulate) }
}

/// # Safety
/// `c` must be valid for writes (and, where `accumulate`, reads of
/// initialised floats) of a.m rows of n floats, `c_stride` apart, that no
/// other thread touches meanwhile; `b` holds B packed for (a.k, n); the CPU
/// has AVX-512F and AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn gemm_packed_raw(
    a: &PackedA,
    b: &[u32],
    n: usize,
    c: *mut f32,
    c_stride: usize,
    accumulate: bool,
) {
    let (pairs, blocks_m, panels) = (a.k.div_ceil(2), a.m.div_ceil(MR), n.div_ceil(NR));
    let (mut a_at, mut b_at) = (0, 0);
    for kb in (0..pairs).step_by(KC) {
        let kc = KC.min(pairs - kb);
        // Later k blocks add to what the first wrote.
        let add = accumulate || kb > 0;
        for panel in 0..panels {
            let b_panel = &b[b_at + panel * kc * NR..][..kc * NR];
            let width = NR.min(n - panel * NR);
            for mb in 0..blocks_m {
                let a_block = &a.data[a_at + mb * kc * MR..][..kc * MR];
                let height = MR.min(a.m - mb * MR);
                // SAFETY: the tile lies inside C (height ≤ rows left,
                // width ≤ columns left).
                unsafe {
                    let tile = c.add(mb * MR * c_stride + panel * NR);
                    microkernel(kc, a_block, b_panel, tile, c_stride, height, width, add);
                }
            }
        }
        a_at += kc * MR * blocks_m;
        b_at += kc * NR * panels;
    }
}

/// # Safety
/// Never called: [`available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn gemm_packed_raw(_: &PackedA, _: &[u32], _: usize, _: *mut f32, _: usize, _: bool) {
    unreachable!("bf16 kernel without AVX-512 BF16");
}

/// # Safety
/// `c` must be valid for writes (reads too, where `add`) of `height` ≤ MR
/// rows of `width` ≤ NR floats, `c_stride` apart; `a` holds kc·MR pairs and
/// `b` kc·NR; the CPU has AVX-512F and AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn microkernel(
    kc: usize,
    a: &[u32],
    b: &[u32],
    c: *mut f32,
    c_stride: usize,
    height: usize,
    width: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kc {
        // SAFETY: b holds kc·NR pairs and a kc·MR pairs (checked by the
        // slicing in the caller); unaligned loads.
        let (b0, b1): (__m512bh, __m512bh) = unsafe {
            let base = b.as_ptr().add(p * NR) as *const __m512i;
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(base)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(base.add(1))),
            )
        };
        let a_pairs = &a[p * MR..p * MR + MR];
        for (row, &ap) in acc.iter_mut().zip(a_pairs) {
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(ap as i32));
            row[0] = _mm512_dpbf16_ps(row[0], av, b0);
            row[1] = _mm512_dpbf16_ps(row[1], av, b1);
        }
    }
    if height == MR && width == NR {
        for (r, row) in acc.iter().enumerate() {
            // SAFETY: a full tile: MR rows of NR floats inside C.
            unsafe {
                let dst = c.add(r * c_stride);
                let (mut v0, mut v1) = (row[0], row[1]);
                if add {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(dst));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(dst.add(16)));
                }
                _mm512_storeu_ps(dst, v0);
                _mm512_storeu_ps(dst.add(16), v1);
            }
        }
        return;
    }
    let mut tile = [[0f32; NR]; MR];
    for (r, row) in acc.iter().enumerate() {
        _mm512_storeu_ps(tile[r].as_mut_ptr(), row[0]);
        _mm512_storeu_ps(tile[r].as_mut_ptr().add(16), row[1]);
    }
    for (r, values) in tile.iter().enumerate().take(height) {
        for (col, &v) in values.iter().enumerate().take(width) {
            // SAFETY: r < height and col < width: inside C.
            unsafe {
                let dst = c.add(r * c_stride + col);
                *dst = if add { *dst + v } else { v };
            }
        }
    }
}

#[cfg(test)]
mod tests;
