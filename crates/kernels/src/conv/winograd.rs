//! 3×3 convolutions by Winograd's minimal filtering, F(4×4, 3×3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).
//!
//! The direct kernel in `conv` runs its GEMM at the CPU's peak, so the only
//! way under that floor is fewer multiplications. Winograd's form computes a
//! 4×4 block of outputs per input/output channel pair with 36 products
//! instead of 144: the overlapping 6×6 input tiles and the 3×3 kernels are
//! carried into a transform domain, where the convolution becomes 36
//! independent matrix products `U_ξ [c_out × c_in] · V_ξ [c_in × tiles]`,
//! and the products are carried back. The transforms are additions and
//! small constant multiples, linear in the channel count, while the products
//! grow with its square.
//!
//! The weights are transformed on every call rather than kept: a kept copy
//! would hold 4× the layer's weights (36 points against 9 taps), and the
//! transform is cheap next to the products (see `transform_weights`).
//! The products stay f32 under `precision = "bf16"` too: bf16 operands were
//! not tried here, and the transforms widen the values' range, which an
//! 8-bit mantissa would feel first.

use std::array;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::geometry::Geometry;
use crate::bf16_gemm::Kernel;
use crate::buffers::{write_all, zeroed, OutBlock, SharedOut};
use crate::f32_gemm::{self, Matrix};
use crate::vector_math::vectorised_fn;

/// Output tile side.
const M: usize = 4;
/// Input tile side: the output tile and the kernel's overhang.
const T: usize = M + 2;
/// Points of the transform domain per tile.
const POINTS: usize = T * T;

/// Fewer channels than this leave the matrix products too thin to gain.
const MIN_CHANNELS: usize = 16;

/// Transformed-domain floats (input or products) one task aims to hold at
/// once (4 MiB): a strip's operands stay in L2 and L3 between the
/// transforms and the products. Measured from 128 Ki to 4 Mi floats: the
/// 512²/128-channel layer is best at 1 Mi or less, the thin-tiled ones at
/// 1 Mi or more.
pub(super) const STRIP_FLOATS: usize = 1 << 20;

/// Fewest tiles a strip's matrix products take, whatever the channel
/// count: thinner products run well under the GEMM's peak.
const MIN_STRIP_TILES: usize = 128;

/// Fewest tiles in a call: below this the per-call weight transform (4×
/// the weights, written and read back) costs more than the products save
/// (measured: 1280 channels at 16², batch 2 — 32 tiles — ran 1.2–1.7× the
/// direct kernel's time; 640 at 32², 128 tiles, 0.5–0.7×).
const MIN_TILES: usize = 64;

/// The same when the alternative is the bf16 kernel, itself ~0.6× of
/// direct f32 (measured: 640 channels at 32², batch 1 — 64 tiles — took
/// 1.4× the bf16 kernel's time; from 128 tiles up 0.6–0.93×).
const MIN_TILES_OVER_BF16: usize = 128;

/// Whether Winograd's form applies and pays: a 3×3 kernel, stride 1,
/// padding 1 (the shape of every convolution in the SD UNets' and VAEs'
/// resnets), enough channels on both sides, and enough tiles against the
/// kernel it would replace (`over_bf16`: the bf16 one, on AVX-512 or AMX).
/// Never against AMX: its direct products run about 5× our f32 rate,
/// more than Winograd's 4× fewer multiplications make up (SD 1.5 UNet step
/// in bf16 on a 2-core AMX Xeon: 3.8 s with Winograd's f32 products, see
/// BENCHMARKS.md for the direct ones).
pub(super) fn suits(g: &Geometry, batch: usize, over_bf16: Option<Kernel>) -> bool {
    let min_tiles = match over_bf16 {
        None => MIN_TILES,
        Some(Kernel::Avx512) => MIN_TILES_OVER_BF16,
        Some(Kernel::Amx) => return false,
    };
    batch * g.out_h.div_ceil(M) * g.out_w.div_ceil(M) >= min_tiles
        && g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.padding == 1
        && g.c_in >= MIN_CHANNELS
        && g.c_out >= MIN_CHANNELS
}

const SIXTH: f32 = 1.0 / 6.0;
const TWELFTH: f32 = 1.0 / 12.0;

/// `G·g` for one kernel row or column: 3 taps to 6 points.
#[inline(always)]
fn weight_1d(g: [f32; 3]) -> [f32; T] {
    let even = g[0] + g[2];
    [
        g[0] * 0.25,
        -(even + g[1]) * SIXTH,
        -(even - g[1]) * SIXTH,
        (g[0] * 0.25 + g[2]) * SIXTH + g[1] * TWELFTH,
        (g[0] * 0.25 + g[2]) * SIXTH - g[1] * TWELFTH,
        g[2],
    ]
}

/// `Bᵀ·d` for one row or column of an input tile: 6 values to 6 points.
#[inline(always)]
fn input_1d(d: [f32; T]) -> [f32; T] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * (d[1] + d[2]) + d[3] + d[4],
        4.0 * (d[1] - d[2]) - d[3] + d[4],
        2.0 * (d[3] - d[1]) - d[2] + d[4],
        2.0 * (d[1] - d[3]) - d[2] + d[4],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// `Aᵀ·m` for one row or column of a tile's products: 6 points to 4 outputs.
#[inline(always)]
fn output_1d(m: [f32; T]) -> [f32; M] {
    let (sum12, diff12) = (m[1] + m[2], m[1] - m[2]);
    let (sum34, diff34) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + sum12 + sum34,
        diff12 + 2.0 * diff34,
        sum12 + 4.0 * sum34,
        diff12 + 8.0 * diff34 + m[5],
    ]
}

/// Runs `f` on element `t` of every input stream, for `t` in `0..n`, and
/// writes its outputs to element `t` of the output streams. Every stream is
/// cut to `n` first, so the loop carries no bounds checks and vectorises.
#[inline(always)]
fn map_streams<const I: usize, const O: usize>(
    n: usize,
    inputs: [&[f32]; I],
    outputs: [&mut [f32]; O],
    f: impl Fn([f32; I]) -> [f32; O],
) {
    let inputs = inputs.map(|s| &s[..n]);
    let mut outputs = outputs.map(|s| &mut s[..n]);
    for t in 0..n {
        let values = f(array::from_fn(|k| inputs[k][t]));
        for (out, value) in outputs.iter_mut().zip(values) {
            out[t] = value;
        }
    }
}

/// Splits `buffer` into `N` consecutive streams of `n` floats.
#[inline(always)]
fn streams_mut<const N: usize>(buffer: &mut [f32], n: usize) -> [&mut [f32]; N] {
    strided_streams_mut(buffer, 0, n, n)
}

/// `N` disjoint streams of `n` floats of `buffer`, the first at `start`, each
/// `stride` (≥ n) after the one before.
#[inline(always)]
fn strided_streams_mut<const N: usize>(
    buffer: &mut [f32],
    start: usize,
    stride: usize,
    n: usize,
) -> [&mut [f32]; N] {
    let mut rest = &mut buffer[start..];
    array::from_fn(|i| {
        let skip = if i == 0 { 0 } else { stride - n };
        let (head, tail) = std::mem::take(&mut rest)[skip..].split_at_mut(n);
        rest = tail;
        head
    })
}

/// `c_out·c_in` kernels as 36 matrices `U_ξ [c_out × c_in]`, one after the
/// other (point ξ = 6·i + j for row point i, column point j).
fn transform_weights(weights: &[f32], pairs: usize) -> Vec<f32> {
    // Not zeroed as a whole: a fresh zeroed block of this size would be
    // page-faulted in on every call. Each task zeroes its own small parts
    // (in cache) just before its transform overwrites them.
    let mut out = Vec::new();
    let out_buf = SharedOut::spare(&mut out, POINTS * pairs);
    (0..pairs.div_ceil(WEIGHT_CHUNK))
        .into_par_iter()
        .for_each_init(
            || vec![0.0f32; (9 + 3 * T) * WEIGHT_CHUNK],
            |scratch, chunk| {
                let range = chunk * WEIGHT_CHUNK..((chunk + 1) * WEIGHT_CHUNK).min(pairs);
                let points: [&mut [f32]; POINTS] = array::from_fn(|point| {
                    // SAFETY: point ξ's range of this chunk is this task's
                    // alone.
                    let part = unsafe { out_buf.part(point * pairs + range.start, range.len()) };
                    zeroed(part)
                });
                let kernels = &weights[range.start * 9..range.end * 9];
                transform_weight_chunk(kernels, points, scratch);
            },
        );
    // SAFETY: the chunks together wrote all POINTS·pairs elements.
    unsafe { out.set_len(POINTS * pairs) };
    out
}

/// Kernels per weight-transform task: its streams stay in L1.
const WEIGHT_CHUNK: usize = 256;

vectorised_fn! {
    /// `G·g·Gᵀ` for each 3×3 kernel of `kernels`, point ξ into `points[ξ]`.
    /// `scratch`: `(9 + 18)·kernels` floats.
    fn transform_weight_chunk(kernels: &[f32], points: [&mut [f32]; POINTS], scratch: &mut [f32]) {
        let n = kernels.len() / 9;
        // Tap-major first, so each step below reads whole streams.
        let (taps, rows) = scratch.split_at_mut(9 * n);
        for (pair, kernel) in kernels.chunks_exact(9).enumerate() {
            for (tap, &value) in kernel.iter().enumerate() {
                taps[tap * n + pair] = value;
            }
        }
        // Along each kernel row (3 taps to 6 points), then along the columns.
        for a in 0..3 {
            let inputs: [&[f32]; 3] = array::from_fn(|b| &taps[(3 * a + b) * n..][..n]);
            let outputs = streams_mut::<T>(&mut rows[a * T * n..], n);
            map_streams(n, inputs, outputs, weight_1d);
        }
        let mut points = points.map(Some);
        for j in 0..T {
            let inputs: [&[f32]; 3] = array::from_fn(|a| &rows[(a * T + j) * n..][..n]);
            let outputs: [&mut [f32]; T] = array::from_fn(|i| points[i * T + j].take().unwrap());
            map_streams(n, inputs, outputs, weight_1d);
        }
    }
}

/// Where one task's transformed tiles go: point ξ's row for channel c starts
/// at `ξ·point_stride + c·tiles`, and holds the task's tiles row by row.
#[derive(Clone, Copy)]
struct StripLayout {
    tiles_x: usize,
    point_stride: usize,
}

vectorised_fn! {
    /// Carries the tiles of `tile_rows` of one input channel (`plane`, `w`
    /// wide) into the transform domain, into `v` at the channel's offset
    /// (see `StripLayout`). `scratch`: `(6·4 + 4 + 36)·(tiles_x + 1)` floats.
    fn transform_input(
        plane: &[f32],
        w: usize,
        tile_rows: Range<usize>,
        layout: StripLayout,
        scratch: &mut [f32],
        v: &mut [f32],
    ) {
        let h = plane.len() / w;
        let tx = layout.tiles_x;
        // A padded row split into its 4 phases: phase p, element t holds
        // padded column 4t + p (input column 4t + p − 1), for t ≤ tiles_x.
        let span = tx + 1;
        let (phases, rest) = scratch.split_at_mut(T * M * span);
        let (padded, along_x) = rest.split_at_mut(M * span);
        for (local, tile_row) in tile_rows.enumerate() {
            for r in 0..T {
                let split = &mut phases[r * M * span..(r + 1) * M * span];
                let y = (tile_row * M + r) as isize - 1;
                if y < 0 || y >= h as isize {
                    split.fill(0.0);
                } else {
                    // The padded row first, so the split below is
                    // branch-free (the compiler makes it shuffles, where
                    // a bounds test per element made it gathers).
                    let row = &plane[y as usize * w..(y as usize + 1) * w];
                    padded[0] = 0.0;
                    padded[1..=w].copy_from_slice(row);
                    padded[w + 1..].fill(0.0);
                    let [p0, p1, p2, p3] = streams_mut::<M>(split, span);
                    for (t, quad) in padded.chunks_exact(M).enumerate() {
                        p0[t] = quad[0];
                        p1[t] = quad[1];
                        p2[t] = quad[2];
                        p3[t] = quad[3];
                    }
                }
                // Along x: element t's six values are phases 0..4 at t and
                // phases 0, 1 at t + 1.
                let inputs: [&[f32]; T] = array::from_fn(|k| {
                    let start = (k % M) * span + k / M;
                    &split[start..start + tx]
                });
                let outputs = streams_mut::<T>(&mut along_x[r * T * tx..], tx);
                map_streams(tx, inputs, outputs, input_1d);
            }
            // Along y, point column j at a time, into the strip's points.
            let base = local * tx;
            for j in 0..T {
                let inputs: [&[f32]; T] = array::from_fn(|r| &along_x[(r * T + j) * tx..][..tx]);
                // Point (i, j) for i in 0..6: T point rows apart.
                let start = j * layout.point_stride + base;
                let outputs = strided_streams_mut::<T>(v, start, T * layout.point_stride, tx);
                map_streams(tx, inputs, outputs, input_1d);
            }
        }
    }
}

vectorised_fn! {
    /// Carries the products of `tile_rows` for one output channel back:
    /// `m` at the channel's offset (see `StripLayout`), plus `bias`, into
    /// `out`, the channel's output rows from the strip's first (`out_w`
    /// wide; rows past its end are left out). `scratch`:
    /// `(4·6 + 4)·tiles_x` floats.
    fn transform_output(
        m: &[f32],
        tile_rows: Range<usize>,
        layout: StripLayout,
        bias: f32,
        scratch: &mut [f32],
        out: &mut [MaybeUninit<f32>],
        out_w: usize,
    ) {
        let tx = layout.tiles_x;
        let (along_y, row) = scratch.split_at_mut(M * T * tx);
        let out_rows = out.len() / out_w;
        for local in 0..tile_rows.len() {
            let base = local * tx;
            // Along y: point column j's 6 points to the tile's 4 rows.
            for j in 0..T {
                let inputs: [&[f32]; T] = array::from_fn(|i| &m[(i * T + j) * layout.point_stride + base..][..tx]);
                // Output row a's column j, for a in 0..4: T·tx apart.
                let outputs = strided_streams_mut::<M>(along_y, j * tx, T * tx, tx);
                map_streams(tx, inputs, outputs, output_1d);
            }
            // Along x: each output row's tiles, 4 columns each, interleaved.
            for a in 0..M {
                let y = local * M + a;
                if y >= out_rows {
                    break;
                }
                let inputs: [&[f32]; T] = array::from_fn(|j| &along_y[(a * T + j) * tx..][..tx]);
                let row = &mut row[..M * tx];
                for (t, dst) in row.chunks_exact_mut(M).enumerate() {
                    let values = output_1d(array::from_fn(|j| inputs[j][t]));
                    for (d, value) in dst.iter_mut().zip(values) {
                        *d = value + bias;
                    }
                }
                write_all(&mut out[y * out_w..(y + 1) * out_w], &row[..out_w]);
            }
        }
    }
}

thread_local! {
    /// Each pool thread's transformed tiles, products and transform
    /// scratch, kept between calls like the direct kernel's unfolding.
    static BUFFERS: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

fn grown(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// The convolution of `batch` images (`input`, NCHW) with 3×3 `weights`
/// (`[c_out, c_in, 3, 3]`), stride 1, padding 1; `strip_floats` bounds a
/// task's transformed operands.
pub(super) fn convolve(
    input: &[f32],
    batch: usize,
    weights: &[f32],
    bias: Option<&[f32]>,
    g: &Geometry,
    strip_floats: usize,
) -> Vec<f32> {
    let (c_in, c_out) = (g.c_in, g.c_out);
    let (out_h, out_w) = (g.out_h, g.out_w);
    let out_px = out_h * out_w;
    let (tiles_y, tiles_x) = (out_h.div_ceil(M), out_w.div_ceil(M));
    let u = transform_weights(weights, c_out * c_in);

    // Whole tile rows per strip, as many as fit, but enough strips for
    // every thread.
    let threads = rayon::current_num_threads().max(1);
    let strip_tiles = (strip_floats / (POINTS * c_in.max(c_out))).max(MIN_STRIP_TILES);
    let mut strip_rows = (strip_tiles / tiles_x).clamp(1, tiles_y);
    if batch * tiles_y.div_ceil(strip_rows) < threads {
        strip_rows = tiles_y.div_ceil(threads.div_ceil(batch)).max(1);
    }
    let strips = tiles_y.div_ceil(strip_rows);
    let tasks = batch * strips;
    let parallelism = if tasks >= threads {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };

    let total = batch * c_out * out_px;
    // Not zeroed: every element is written once below.
    let mut out = Vec::new();
    let out_buf = SharedOut::spare(&mut out, total);
    let run_task = |task: usize| {
        let (image, strip) = (task / strips, task % strips);
        let tile_rows = strip * strip_rows..((strip + 1) * strip_rows).min(tiles_y);
        let tiles = tile_rows.len() * tiles_x;
        let layout_in = StripLayout {
            tiles_x,
            point_stride: c_in * tiles,
        };
        let layout_out = StripLayout {
            point_stride: c_out * tiles,
            ..layout_in
        };
        let plane_len = g.h * g.w;
        let src = &input[image * c_in * plane_len..(image + 1) * c_in * plane_len];
        BUFFERS.with(|buffers| {
            let [v, products, scratch] = &mut *buffers.borrow_mut();
            let v = grown(v, POINTS * c_in * tiles);
            let products = grown(products, POINTS * c_out * tiles);
            let scratch = grown(scratch, (M * T + M + POINTS) * (tiles_x + 1));
            for c in 0..c_in {
                transform_input(
                    &src[c * plane_len..(c + 1) * plane_len],
                    g.w,
                    tile_rows.clone(),
                    layout_in,
                    scratch,
                    &mut v[c * tiles..],
                );
            }
            for point in 0..POINTS {
                // Products of point ξ: c_out rows of `tiles` floats, from
                // U_ξ (c_out × c_in) and V_ξ (c_in rows of `tiles` floats).
                f32_gemm::gemm(
                    OutBlock::of_slice(&mut products[point * c_out * tiles..], c_out, tiles, tiles),
                    Matrix::new(&u[point * c_out * c_in..], c_out, c_in, c_in),
                    Matrix::new(&v[point * c_in * tiles..], c_in, tiles, tiles),
                    false,
                    parallelism,
                );
            }
            let first_row = tile_rows.start * M;
            let rows = (tile_rows.end * M).min(out_h) - first_row;
            for k in 0..c_out {
                // SAFETY: this task alone writes rows first_row..+rows of
                // every output channel of its image.
                let dst = unsafe {
                    out_buf.part(
                        (image * c_out + k) * out_px + first_row * out_w,
                        rows * out_w,
                    )
                };
                transform_output(
                    &products[k * tiles..],
                    tile_rows.clone(),
                    layout_out,
                    bias.map_or(0.0, |b| b[k]),
                    scratch,
                    dst,
                    out_w,
                );
            }
        });
    };
    if tasks >= threads {
        (0..tasks).into_par_iter().for_each(run_task);
    } else {
        (0..tasks).for_each(run_task);
    }
    // SAFETY: the tasks together wrote every output element.
    unsafe { out.set_len(total) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Tensor};
    use candle_nn::Conv2dConfig;

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Against candle's direct convolution: sizes that are and are not
    /// multiples of the tile, one and several strips, with and without bias.
    #[test]
    fn matches_direct_convolution() {
        let dev = Device::Cpu;
        // (batch, c_in, h, w, c_out, strip_floats)
        let cases = [
            (2, 16, 16, 16, 16, STRIP_FLOATS),
            (1, 17, 13, 11, 19, STRIP_FLOATS),
            (2, 16, 41, 30, 24, POINTS * 24 * 8 * 2),
            (1, 32, 5, 3, 16, STRIP_FLOATS),
            (3, 20, 9, 22, 18, 1),
        ];
        for (b, c_in, h, w, c_out, strip_floats) in cases {
            let x = Tensor::randn(0f32, 1., (b, c_in, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1., (c_out, c_in, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let g = Geometry::new((c_in, h, w), (3, 3), 1, 1, c_out).unwrap();
            assert!(suits(&g, 64, None));
            for bias in [None, Some(bias)] {
                let config = Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                };
                let expected = candle_nn::Conv2d::new(weight.clone(), bias.clone(), config)
                    .forward(&x)
                    .unwrap();
                let out = convolve(
                    &flat(&x),
                    b,
                    &flat(&weight),
                    bias.as_ref().map(flat).as_deref(),
                    &g,
                    strip_floats,
                );
                let actual = Tensor::from_vec(out, expected.dims(), &dev).unwrap();
                let err = crate::relative_error(&actual, &expected).unwrap();
                assert!(err < 1e-5, "case {:?}: {err}", (b, c_in, h, w, c_out));
            }
        }
    }

    #[test]
    fn declines_what_it_cannot_do() {
        let shapes = [
            ((16, 8, 8), (3, 3), 2, 1, 16), // stride 2
            ((16, 8, 8), (3, 3), 1, 0, 16), // no padding
            ((16, 8, 8), (1, 1), 1, 0, 16), // 1×1
            ((4, 8, 8), (3, 3), 1, 1, 16),  // too few input channels
            ((16, 8, 8), (3, 3), 1, 1, 3),  // too few output channels
        ];
        for (input, kernel, stride, padding, c_out) in shapes {
            let g = Geometry::new(input, kernel, stride, padding, c_out).unwrap();
            assert!(
                !suits(&g, 64, None),
                "{:?}",
                (input, kernel, stride, padding)
            );
        }
        // 16×16 outputs are 4×4 tiles: 4 images make 64 of them.
        let g = Geometry::new((16, 16, 16), (3, 3), 1, 1, 16).unwrap();
        assert!(suits(&g, 4, None));
        assert!(!suits(&g, 3, None), "48 tiles");
        let avx512 = Some(Kernel::Avx512);
        assert!(!suits(&g, 4, avx512), "64 tiles, against the bf16 kernel");
        assert!(suits(&g, 8, avx512));
        assert!(!suits(&g, 64, Some(Kernel::Amx)), "never against AMX");
    }
}
