//! The AVX-512 BF16 loop nest and microkernel (`vdpbf16ps`): an MR×NR tile
//! of C in 24 zmm registers, one broadcast A pair against two B vectors
//! per k-pair. The operands are laid out by the parent module for
//! [`Kernel::Avx512`](super::Kernel::Avx512).

use super::{KC, MR, NR};

/// # Safety
/// `c` must be valid for writes (and, where `accumulate`, reads of
/// initialised floats) of m rows of n floats, `c_stride` apart, that no
/// other thread touches meanwhile; `a` holds A (m × k) and `b` holds B
/// (k × n) packed for this kernel with `pairs` k-pairs; the CPU has
/// AVX-512F and AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
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
    let (blocks_m, panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let (mut a_at, mut b_at) = (0, 0);
    for kb in (0..pairs).step_by(KC) {
        let kc = KC.min(pairs - kb);
        // Later k blocks add to what the first wrote.
        let add = accumulate || kb > 0;
        for panel in 0..panels {
            let b_panel = &b[b_at + panel * kc * NR..][..kc * NR];
            let width = NR.min(n - panel * NR);
            for mb in 0..blocks_m {
                let a_block = &a[a_at + mb * kc * MR..][..kc * MR];
                let height = MR.min(m - mb * MR);
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
/// Never called: AVX-512 BF16 is never available off x86-64.
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
