//! Packing f32 operands into the kernels' bf16 layouts (see the parent
//! module): B's panels for both kernels, A's consecutive rows for AMX, with
//! the CPU's own rounding instruction where it has it.

use super::{available, pair, Kernel, KC, NR};
use crate::buffers::LineBuffer;

/// Packs row-major `b` (k rows of n, `row_stride` apart) into `out`.
pub(super) fn pack_b(
    kernel: Kernel,
    b: &[f32],
    k: usize,
    n: usize,
    row_stride: usize,
    out: &mut LineBuffer,
) {
    let (pairs, panels) = (kernel.stored_pairs(k), n.div_ceil(NR));
    // Zeros: the padding pairs of an AMX operand stay so.
    out.reset_zeroed(pairs * panels * NR);
    let out = out.as_mut_slice();
    for p in 0..k.div_ceil(2) {
        let lo = &b[2 * p * row_stride..][..n];
        let hi = (2 * p + 1 < k).then(|| &b[(2 * p + 1) * row_stride..][..n]);
        pack_pair_into_panels(out, pairs, p, lo, hi);
    }
}

/// Writes k-pair `p` of B (rows `lo` and `hi` of n values; no `hi` for the
/// last pair of an odd k) into its NR-wide slot in each panel of its k
/// block, in `out` sized for `pairs` stored pairs. Full slots are converted 16
/// columns at a time by the CPU's own rounding instruction
/// (`vcvtneps2bf16`, nearest-even like [`bf16_bits`]; it flushes
/// subnormal inputs to zero, which at bf16's 8 bits is noise): per call,
/// for a convolution's input, this costs about as much as the product once
/// the layer has few output channels.
pub(super) fn pack_pair_into_panels(
    out: &mut [u32],
    pairs: usize,
    p: usize,
    lo: &[f32],
    hi: Option<&[f32]>,
) {
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
pub(super) fn pack_pair_rows(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
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

/// Writes `values` as consecutive bf16 pairs into `dst` (the first
/// `values.len().div_ceil(2)` of its u32s), 32 values at a time by the
/// CPU's rounding instruction where it has it (see
/// `pack_pair_into_panels`).
pub(super) fn pack_consecutive(values: &[f32], dst: &mut [u32]) {
    let whole = values.len() / 32 * 32;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has the features (checked above); both slices
        // hold `whole` values (values) and pairs (dst, asserted inside).
        unsafe { pack_consecutive_avx512(&values[..whole], &mut dst[..whole / 2]) };
    } else {
        pack_consecutive_scalar(&values[..whole], &mut dst[..whole / 2]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    pack_consecutive_scalar(&values[..whole], &mut dst[..whole / 2]);
    pack_consecutive_scalar(&values[whole..], &mut dst[whole / 2..]);
}

pub(super) fn pack_consecutive_scalar(values: &[f32], dst: &mut [u32]) {
    let twos = values.chunks_exact(2);
    if let [last] = twos.remainder() {
        dst[values.len() / 2] = pair(*last, 0.0);
    }
    for (d, two) in dst.iter_mut().zip(twos) {
        *d = pair(two[0], two[1]);
    }
}

/// # Safety
/// `values` holds a multiple of 32 floats and `dst` at least half as many
/// u32s; the CPU has AVX-512F and AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_consecutive_avx512(values: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(values.len().is_multiple_of(32) && dst.len() >= values.len() / 2);
    for (i, chunk) in values.chunks_exact(32).enumerate() {
        // SAFETY: 32 floats in `chunk`; 16 u32s at dst[16·i..] (asserted).
        unsafe {
            let lo = _mm512_cvtneps_pbh(_mm512_loadu_ps(chunk.as_ptr()));
            let hi = _mm512_cvtneps_pbh(_mm512_loadu_ps(chunk.as_ptr().add(16)));
            let out = dst.as_mut_ptr().add(16 * i) as *mut __m256i;
            _mm256_storeu_si256(out, std::mem::transmute::<__m256bh, __m256i>(lo));
            _mm256_storeu_si256(out.add(1), std::mem::transmute::<__m256bh, __m256i>(hi));
        }
    }
}

/// Packs B (k × n) given row by row: `row(r, out)` writes row r into
/// `out` (n values). Rows are asked for in order, two at a time, and go
/// from a two-row buffer straight into the packed layout.
pub(super) fn pack_b_by_rows(
    kernel: Kernel,
    k: usize,
    n: usize,
    row: &mut impl FnMut(usize, &mut [f32]),
    buffer: &mut Vec<f32>,
    out: &mut LineBuffer,
) {
    let (pairs, panels) = (kernel.stored_pairs(k), n.div_ceil(NR));
    out.reset_zeroed(pairs * panels * NR);
    let out = out.as_mut_slice();
    buffer.resize(2 * n, 0.0);
    let (lo, hi) = buffer.split_at_mut(n);
    for p in 0..k.div_ceil(2) {
        row(2 * p, lo);
        let has_hi = 2 * p + 1 < k;
        if has_hi {
            row(2 * p + 1, hi);
        }
        pack_pair_into_panels(out, pairs, p, lo, has_hi.then_some(&*hi));
    }
}

/// 32-bit values a block can be transposed as.
pub(crate) trait Bits32: Copy + Default {}
impl Bits32 for f32 {}
impl Bits32 for u32 {}

/// `out[j][i] = src[i·stride + j]` for i, j < 16: a 16×16 block of 32-bit
/// values transposed, in registers where the CPU has AVX-512 (16 loads,
/// 64 shuffles, 16 stores instead of 256 scattered moves).
pub(crate) fn transpose_16x16<T: Bits32>(src: &[T], stride: usize, out: &mut [[T; 16]; 16]) {
    assert!(src.len() >= 15 * stride + 16, "transpose: source too short");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked); 16 rows of 16 values lie
        // in `src` (asserted) and `out` is 256 values; T is 32 bits wide.
        unsafe { transpose_16x16_avx512(src.as_ptr().cast(), stride, out.as_mut_ptr().cast()) };
        return;
    }
    for (j, row) in out.iter_mut().enumerate() {
        for (i, value) in row.iter_mut().enumerate() {
            *value = src[i * stride + j];
        }
    }
}

/// # Safety
/// `src` is valid for reads of 16 rows of 16 u32s `stride` apart, `out`
/// for writes of 256 u32s; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_16x16_avx512(src: *const u32, stride: usize, out: *mut u32) {
    use std::arch::x86_64::*;
    // SAFETY: reads and writes inside the extents the caller guarantees.
    unsafe {
        let r: [__m512i; 16] =
            std::array::from_fn(|i| _mm512_loadu_si512(src.add(i * stride).cast()));
        // Pairs of rows interleaved by 32 bits, then by 64: t[4g + c] holds,
        // in 128-bit lane k, column 4k + c of rows 4g..4g + 4.
        let mut s = [_mm512_setzero_si512(); 16];
        for p in 0..8 {
            s[2 * p] = _mm512_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
            s[2 * p + 1] = _mm512_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
        }
        let mut t = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (lo, hi) = (s[4 * g], s[4 * g + 1]);
            let (lo2, hi2) = (s[4 * g + 2], s[4 * g + 3]);
            t[4 * g] = _mm512_unpacklo_epi64(lo, lo2);
            t[4 * g + 1] = _mm512_unpackhi_epi64(lo, lo2);
            t[4 * g + 2] = _mm512_unpacklo_epi64(hi, hi2);
            t[4 * g + 3] = _mm512_unpackhi_epi64(hi, hi2);
        }
        // Lane k of the four row groups side by side: column 4k + c.
        for c in 0..4 {
            let (a, b, cc, d) = (t[c], t[4 + c], t[8 + c], t[12 + c]);
            let ab_lo = _mm512_shuffle_i32x4::<0x44>(a, b);
            let ab_hi = _mm512_shuffle_i32x4::<0xEE>(a, b);
            let cd_lo = _mm512_shuffle_i32x4::<0x44>(cc, d);
            let cd_hi = _mm512_shuffle_i32x4::<0xEE>(cc, d);
            let columns = [
                _mm512_shuffle_i32x4::<0x88>(ab_lo, cd_lo),
                _mm512_shuffle_i32x4::<0xDD>(ab_lo, cd_lo),
                _mm512_shuffle_i32x4::<0x88>(ab_hi, cd_hi),
                _mm512_shuffle_i32x4::<0xDD>(ab_hi, cd_hi),
            ];
            for (k, column) in columns.into_iter().enumerate() {
                _mm512_storeu_si512(out.add((4 * k + c) * 16).cast(), column);
            }
        }
    }
}
