//! 2-D convolution with a CPU kernel of our own.
//!
//! candle 0.11's CPU convolution transposes the input to NHWC on one
//! thread, re-flattens the weights on every call, fills its im2col tiles
//! element by element with a branch per element and scatters the result
//! back: a 3×3 128→128 convolution at 512² ran at 59 GFLOP/s here, against
//! 190 GFLOP/s for a plain matrix product. This kernel keeps NCHW
//! throughout: a tile of whole output rows is unfolded with row copies
//! (the weights' own `[c_out, c_in·kh·kw]` layout is the left operand, as
//! stored), one GEMM per tile writes straight into the output rows, the bias
//! pre-filled. Tiles are spread over the rayon pool, each GEMM on one thread.
//! 3×3 stride-1 convolutions with enough channels and pixels go through
//! Winograd's form instead (`winograd`), which needs 4× fewer
//! multiplications.
//! Devices other than the CPU, and dtypes other than f32, use candle's.

mod geometry;
mod tap_tiles;
mod winograd;

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::in_place::DerivedCache;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::bf16_gemm::{self, ConvTaps, Kernel, PackedA};
use crate::buffers::{contiguous_f32, with_f32, SharedOut};
use crate::f32_gemm::{self, Matrix};
use geometry::Geometry;
use rayon::prelude::*;

/// Largest unfolded tile one thread keeps (floats): 1 Mi floats (4 MiB),
/// so a tile stays in cache between its unfolding and the GEMM reading it.
const TILE_FLOATS: usize = 1 << 20;

static WINOGRAD: AtomicBool = AtomicBool::new(true);

/// Turns Winograd's form off (or back on) for every f32 convolution in the
/// process, so benchmarks can time the direct kernel on the same layers.
pub fn set_winograd(enabled: bool) {
    WINOGRAD.store(enabled, Ordering::Relaxed);
}

static TAP_TILES: AtomicBool = AtomicBool::new(true);

/// Turns the AMX tap tiles off (or back on) for every bf16 convolution in
/// the process, so benchmarks can time the im2col kernel on the same
/// layers.
pub fn set_tap_tiles(enabled: bool) {
    TAP_TILES.store(enabled, Ordering::Relaxed);
}

/// A convolution layer: weights `[c_out, c_in, kh, kw]`, optional bias.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
    /// The weights packed for the bf16 im2col kernel, made on first use.
    packed_bf16: Arc<DerivedCache<PackedA>>,
    /// The weights packed for AMX tap tiles (`tap_tiles`), made at load
    /// where AMX is the bf16 kernel.
    taps_bf16: Arc<DerivedCache<ConvTaps>>,
}

/// Loads a square convolution as candle-nn's `conv2d` would (same names,
/// same shape checks) and runs it with the kernel here.
pub fn conv2d(
    cin: usize,
    cout: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> candle_core::Result<Conv2d> {
    let layer = candle_nn::conv2d(cin, cout, kernel, config, vb)?;
    Ok(Conv2d::new(
        layer.weight().clone(),
        layer.bias().cloned(),
        config,
    ))
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Self {
        let layer = Self {
            weight,
            bias,
            config,
            packed_bf16: Arc::default(),
            taps_bf16: Arc::default(),
        };
        if bf16_gemm::packs_at_load() && layer.uses_own_kernel(&layer.weight) {
            // A failure here is met again, and reported, by the first
            // bf16 forward, which packs when the cache is empty. Strided
            // layers run on rows under 16 pixels wide (a downsampler to
            // SD's 8×8 level at 512²) pack for im2col on first use instead.
            let _ = layer.taps_bf16.get_or_make(|| {
                let (c_out, c_in, kh, kw) = layer.weight.dims4()?;
                with_f32(&layer.weight, "conv2d weights", |flat| {
                    ConvTaps::new(flat, c_out, c_in, kh, kw)
                })
            });
        }
        layer
    }

    fn uses_own_kernel(&self, x: &Tensor) -> bool {
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && self.config.groups == 1
            && self.config.dilation == 1
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !self.uses_own_kernel(x) {
            let layer = candle_nn::Conv2d::new(self.weight.clone(), self.bias.clone(), self.config);
            return layer.forward(x);
        }
        let x = x.contiguous()?;
        let weight = self.weight.contiguous()?;
        let op = ConvOp {
            padding: self.config.padding,
            stride: self.config.stride,
            // Packed only if the direct kernel takes the layer (see `run`).
            packed_bf16: bf16_gemm::in_use().then_some(&*self.packed_bf16),
            taps_bf16: (bf16_gemm::in_use() && Kernel::chosen() == Kernel::Amx)
                .then_some(&*self.taps_bf16),
        };
        match &self.bias {
            Some(bias) => x.apply_op3_no_bwd(&weight, &bias.contiguous()?, &op),
            None => x.apply_op2_no_bwd(&weight, &op),
        }
    }
}

struct ConvOp<'a> {
    padding: usize,
    stride: usize,
    /// Set when computing in bf16: the layer's bf16-packed weights, made
    /// on the first call the bf16 kernel runs.
    packed_bf16: Option<&'a DerivedCache<PackedA>>,
    /// Set when computing in bf16 on AMX: the weights packed as taps.
    taps_bf16: Option<&'a DerivedCache<ConvTaps>>,
}

impl ConvOp<'_> {
    fn run(
        &self,
        input: (&CpuStorage, &Layout),
        weight: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c_in, h, w) = input.1.shape().dims4()?;
        let (c_out, w_cin, kh, kw) = weight.1.shape().dims4()?;
        if w_cin != c_in {
            candle_core::bail!("conv2d: input has {c_in} channels, weights expect {w_cin}");
        }
        let geometry = Geometry::new((c_in, h, w), (kh, kw), self.stride, self.padding, c_out)?;
        let bias = bias
            .map(|(s, l)| contiguous_f32(s, l, "conv2d bias"))
            .transpose()?;
        let input = contiguous_f32(input.0, input.1, "conv2d input")?;
        let weights = contiguous_f32(weight.0, weight.1, "conv2d weights")?;
        // Also when computing in bf16, on large enough layers: Winograd's
        // f32 products take fewer multiplications than the bf16 kernel's
        // direct ones (measured 0.6–0.93× of its time from 128 tiles up),
        // lose no precision, and need no bf16 copy of the weights.
        let winograd = WINOGRAD.load(Ordering::Relaxed)
            && winograd::suits(&geometry, b, self.packed_bf16.map(|_| Kernel::chosen()));
        let taps = self
            .taps_bf16
            .filter(|_| TAP_TILES.load(Ordering::Relaxed) && tap_tiles::suits(&geometry));
        let out = if let Some(cache) = taps {
            let packed = cache.get_or_make(|| Ok(ConvTaps::new(weights, c_out, c_in, kh, kw)))?;
            tap_tiles::convolve(input, b, &packed, bias, &geometry)
        } else if winograd {
            winograd::convolve(input, b, weights, bias, &geometry, winograd::STRIP_FLOATS)
        } else {
            let depth = geometry.depth();
            let bf16 = match self.packed_bf16 {
                Some(cache) => {
                    Some(cache.get_or_make(|| Ok(PackedA::new(weights, c_out, depth, depth)))?)
                }
                None => None,
            };
            let weights = Weights {
                f32: weights,
                bf16: bf16.as_deref(),
            };
            convolve(input, b, weights, bias, &geometry, TILE_FLOATS)
        };
        let shape = Shape::from((b, c_out, geometry.out_h, geometry.out_w));
        Ok((CpuStorage::F32(out), shape))
    }
}

impl CustomOp2 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "cyberimage-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "cyberimage-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

thread_local! {
    /// Each pool thread's unfolding buffer, kept between calls: fresh
    /// multi-megabyte allocations would be zeroed by the kernel every time.
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A convolution's weights: as stored, and packed for bf16 when in use.
struct Weights<'a> {
    f32: &'a [f32],
    bf16: Option<&'a PackedA>,
}

/// The direct kernel: output rows unfolded tile by tile, one GEMM each.
fn convolve(
    input: &[f32],
    batch: usize,
    weights: Weights,
    bias: Option<&[f32]>,
    g: &Geometry,
    tile_floats: usize,
) -> Vec<f32> {
    let (depth, out_px) = (g.depth(), g.out_h * g.out_w);
    let image_len = g.c_in * g.h * g.w;
    let total = batch * g.c_out * out_px;
    // Not zeroed: every element is written once below.
    let mut out = Vec::new();
    // Whole output rows per tile: as many as fit `tile_floats`, but enough
    // tiles for every thread.
    let threads = rayon::current_num_threads().max(1);
    let fit_rows = (tile_floats / (depth * g.out_w).max(1)).clamp(1, g.out_h);
    let mut tiles_per_image = g.out_h.div_ceil(fit_rows);
    if batch * tiles_per_image < threads {
        tiles_per_image = threads.div_ceil(batch).min(g.out_h);
    }
    let rows_per_tile = g.out_h.div_ceil(tiles_per_image);
    let tiles_per_image = g.out_h.div_ceil(rows_per_tile);
    let tasks = batch * tiles_per_image;
    // Too few tiles to share out: one tile at a time, the GEMM threaded.
    // The bf16 kernel runs on one thread per tile.
    let share_tiles = tasks >= threads || weights.bf16.is_some();
    let inner = if !share_tiles {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let out_buf = SharedOut::spare(&mut out, total);
    let run_tile = |task: usize| {
        let (image, tile) = (task / tiles_per_image, task % tiles_per_image);
        let rows = tile * rows_per_tile..((tile + 1) * rows_per_tile).min(g.out_h);
        let n = rows.len() * g.out_w;
        let src = &input[image * image_len..(image + 1) * image_len];
        // Each task writes rows `rows` of every output channel of its own
        // image, which no other task touches.
        let first = image * g.c_out * out_px + rows.start * g.out_w;
        if let Some(bias) = bias {
            for (c, &value) in bias.iter().enumerate() {
                // SAFETY: row c of this tile: this task's alone.
                unsafe { out_buf.part(first + c * out_px, n) }.fill(MaybeUninit::new(value));
            }
        }
        // SAFETY: this tile's rows of every channel are this task's alone,
        // and were filled with the bias just above where it is added to.
        let dst = unsafe { out_buf.block(first, g.c_out, n, out_px) };
        let gemm_into = |rhs: &[f32], rhs_rs: usize| {
            if let Some(packed) = weights.bf16 {
                bf16_gemm::gemm(packed, rhs, rhs_rs, n, dst, bias.is_some());
                return;
            }
            f32_gemm::gemm(
                dst,
                Matrix::new(weights.f32, g.c_out, depth, depth),
                Matrix::new(rhs, depth, n, rhs_rs),
                bias.is_some(),
                inner,
            );
        };
        if g.is_pointwise() {
            gemm_into(&src[rows.start * g.out_w..], out_px);
            return;
        }
        if let Some(packed) = weights.bf16 {
            // Unfolded rows go through an L1-sized buffer straight into the
            // packed operand: the f32 tile is never written out whole.
            let unfold =
                |index: usize, out: &mut [f32]| g.unfold_one(src, rows.clone(), index, out);
            bf16_gemm::gemm_rows(packed, n, unfold, dst, bias.is_some());
            return;
        }
        COL.with(|col| {
            let mut col = col.borrow_mut();
            if col.len() < depth * n {
                col.resize(depth * n, 0.0);
            }
            g.unfold(src, rows.clone(), &mut col[..depth * n]);
            gemm_into(&col[..depth * n], n);
        });
    };
    if share_tiles {
        (0..tasks).into_par_iter().for_each(run_tile);
    } else {
        (0..tasks).for_each(run_tile);
    }
    // SAFETY: the tiles together wrote every output element.
    unsafe { out.set_len(total) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Our kernel against candle's on the shapes the models use, and on odd
    /// ones: strides, paddings, rectangular kernels, ragged tiles.
    #[test]
    fn matches_candle_convolution() {
        let dev = Device::Cpu;
        let cases = [
            // (batch, c_in, h, w, c_out, k, stride, padding)
            (2, 8, 16, 16, 12, 3, 1, 1),
            (1, 4, 9, 7, 5, 3, 2, 1),
            (2, 6, 10, 10, 6, 1, 1, 0),
            (1, 3, 8, 8, 7, 2, 2, 0),
            (3, 5, 11, 13, 4, 3, 1, 0),
            (1, 4, 6, 6, 3, 5, 1, 2),
            (1, 2, 5, 5, 2, 3, 3, 2),
        ];
        for (b, c_in, h, w, c_out, k, stride, padding) in cases {
            let x = Tensor::randn(0f32, 1., (b, c_in, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1., (c_out, c_in, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let config = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            for bias in [None, Some(bias)] {
                let ours = Conv2d::new(weight.clone(), bias.clone(), config);
                let theirs = candle_nn::Conv2d::new(weight.clone(), bias, config);
                let (a, e) = (ours.forward(&x).unwrap(), theirs.forward(&x).unwrap());
                assert_eq!(a.dims(), e.dims(), "case {:?}", (b, c_in, h, w, k, stride));
                let err = crate::relative_error(&a, &e).unwrap();
                assert!(err < 1e-5, "case {:?}: {err}", (b, c_in, h, w, k, stride));
                if bf16_gemm::available() {
                    // 8 significant bits per operand, f32 sums.
                    let a = bf16_gemm::scoped(true, || ours.forward(&x)).unwrap();
                    let err = crate::relative_error(&a, &e).unwrap();
                    assert!(
                        err < 2e-2,
                        "bf16 case {:?}: {err}",
                        (b, c_in, h, w, k, stride)
                    );
                    assert!(err > 1e-6, "bf16 case {:?} ran in f32", (b, c_in, h, w, k));
                } else {
                    cyberimage_testkit::skipped("bf16 half: this CPU has no AVX-512 BF16");
                }
            }
        }
    }

    /// A layer Winograd suits goes through it (its exact output), and still
    /// matches candle's convolution.
    #[test]
    fn suited_layers_take_winograd() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (4, 16, 16, 16), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1., (16, 16, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., 16, &dev).unwrap();
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let ours = Conv2d::new(weight.clone(), Some(bias.clone()), config)
            .forward(&x)
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let g = Geometry::new((16, 16, 16), (3, 3), 1, 1, 16).unwrap();
        assert!(winograd::suits(&g, 4, None));
        let winograd_out = winograd::convolve(
            &flat(&x),
            4,
            &flat(&weight),
            Some(&flat(&bias)),
            &g,
            winograd::STRIP_FLOATS,
        );
        assert_eq!(flat(&ours), winograd_out);
        if bf16_gemm::available() && Kernel::chosen() == Kernel::Amx {
            // Against AMX tiles, never Winograd: 8 images go to the tap
            // tiles, which pack the weights.
            let _no_edits = crate::in_place::tests::EDITS.lock();
            let layer = Conv2d::new(weight.clone(), Some(bias.clone()), config);
            let x8 = Tensor::randn(0f32, 1., (8, 16, 16, 16), &dev).unwrap();
            let under_bf16 = bf16_gemm::scoped(true, || layer.forward(&x8)).unwrap();
            assert!(layer.taps_bf16.is_current());
            assert_ne!(flat(&under_bf16), flat(&layer.forward(&x8).unwrap()));
            // Made at load, a layer packs at once.
            let at_load = bf16_gemm::packing_at_load(true, || {
                Conv2d::new(weight.clone(), Some(bias.clone()), config)
            });
            assert!(at_load.taps_bf16.is_current());
            let from_load = bf16_gemm::scoped(true, || at_load.forward(&x8)).unwrap();
            assert_eq!(flat(&from_load), flat(&under_bf16));
            cyberimage_testkit::skipped("Winograd under AVX-512 bf16: this CPU takes AMX");
        } else if bf16_gemm::available() {
            // Under bf16 on AVX-512, 8 images (128 tiles) still go to
            // Winograd in f32, and no bf16 copy of the weights is made; 4
            // (64 tiles) go to the bf16 kernel, which packs them.
            let _no_edits = crate::in_place::tests::EDITS.lock();
            let layer = Conv2d::new(weight.clone(), Some(bias.clone()), config);
            let x8 = Tensor::randn(0f32, 1., (8, 16, 16, 16), &dev).unwrap();
            let under_bf16 = bf16_gemm::scoped(true, || layer.forward(&x8)).unwrap();
            assert_eq!(flat(&under_bf16), flat(&layer.forward(&x8).unwrap()));
            assert!(!layer.packed_bf16.is_current());
            let packed = bf16_gemm::scoped(true, || layer.forward(&x)).unwrap();
            assert!(layer.packed_bf16.is_current());
            assert_ne!(flat(&packed), flat(&ours), "ran in bf16");
        } else {
            cyberimage_testkit::skipped("bf16 half: this CPU has no AVX-512 BF16");
        }
        let theirs = candle_nn::Conv2d::new(weight, Some(bias), config)
            .forward(&x)
            .unwrap();
        let err = crate::relative_error(&ours, &theirs).unwrap();
        assert!(err < 1e-5, "{err}");
    }

    /// AMX tap tiles against candle's f32 convolution (bf16 operands) and
    /// against the im2col AMX kernel, which rounds the same operands and
    /// only sums in another order: widths that are and are not multiples
    /// of 16, strides, 1×1 and 3×3, channels off the tile sizes.
    #[test]
    fn tap_tiles_match_im2col_and_candle() {
        if !(bf16_gemm::available() && Kernel::Amx.usable()) {
            return cyberimage_testkit::skipped("AMX tap tiles: this CPU has no AMX-BF16");
        }
        let dev = Device::Cpu;
        let cases = [
            // (batch, c_in, h, w, c_out, k, stride, padding)
            (2, 64, 16, 32, 64, 3, 1, 1),
            (1, 40, 9, 20, 40, 3, 1, 1),
            (2, 32, 34, 34, 48, 3, 2, 1),
            (1, 96, 16, 16, 32, 1, 1, 0),
            (1, 3, 18, 18, 16, 3, 1, 0),
            (3, 33, 5, 17, 70, 3, 1, 1),
            (1, 35, 6, 50, 20, 3, 1, 1),
            // Rows under 16 pixels: flat groups over the padded grid.
            (2, 64, 8, 8, 64, 3, 1, 1),
            (1, 40, 6, 5, 20, 3, 1, 1),
            (2, 96, 8, 8, 32, 1, 1, 0),
            (1, 32, 3, 3, 32, 3, 1, 0),
        ];
        for (b, c_in, h, w, c_out, k, stride, padding) in cases {
            let case = (b, c_in, h, w, c_out, k, stride);
            let x = Tensor::randn(0f32, 1., (b, c_in, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1., (c_out, c_in, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let config = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g = Geometry::new((c_in, h, w), (k, k), stride, padding, c_out).unwrap();
            assert!(tap_tiles::suits(&g), "case {case:?}");
            let (xs, ws, bs) = (flat(&x), flat(&weight), flat(&bias));
            let taps = ConvTaps::new(&ws, c_out, c_in, k, k);
            let ours = tap_tiles::convolve(&xs, b, &taps, Some(&bs), &g);
            let depth = g.depth();
            let packed = PackedA::new_for(Kernel::Amx, &ws, c_out, depth, depth);
            let weights = Weights {
                f32: &ws,
                bf16: Some(&packed),
            };
            let im2col = convolve(&xs, b, weights, Some(&bs), &g, TILE_FLOATS);
            let shape = (b, c_out, g.out_h, g.out_w);
            let ours = Tensor::from_vec(ours, shape, &dev).unwrap();
            let im2col = Tensor::from_vec(im2col, shape, &dev).unwrap();
            let err = crate::relative_error(&ours, &im2col).unwrap();
            assert!(err < 1e-5, "case {case:?} vs im2col: {err}");
            let theirs = candle_nn::Conv2d::new(weight.clone(), Some(bias.clone()), config)
                .forward(&x)
                .unwrap();
            let err = crate::relative_error(&ours, &theirs).unwrap();
            assert!(err < 2e-2 && err > 1e-6, "case {case:?} vs f32: {err}");
            // A narrow strided layer stays with im2col.
            let narrow = Geometry::new((c_in, 16, 16), (3, 3), 2, 1, c_out).unwrap();
            assert!(!tap_tiles::suits(&narrow));
            // The layer takes the tiles under bf16, and packs them at load.
            let _no_edits = crate::in_place::tests::EDITS.lock();
            let layer = bf16_gemm::packing_at_load(true, || {
                Conv2d::new(weight.clone(), Some(bias.clone()), config)
            });
            assert!(
                layer.taps_bf16.is_current(),
                "case {case:?}: packed at load"
            );
            let _ = bf16_gemm::scoped(true, || layer.forward(&x)).unwrap();
            assert!(
                !layer.packed_bf16.is_current(),
                "case {case:?} went to im2col"
            );
        }
    }

    #[test]
    fn many_tiles_per_image_match_candle() {
        // 41 output rows of 30 columns, depth 8·9, tiles of 2 rows: 21
        // tiles per image, the last one ragged.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 8, 41, 30), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1., (16, 8, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., 16, &dev).unwrap();
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let g = Geometry::new((8, 41, 30), (3, 3), 1, 1, 16).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let weights = Weights {
            f32: &flat(&weight),
            bf16: None,
        };
        let out = convolve(&flat(&x), 2, weights, Some(&flat(&bias)), &g, 2 * 72 * 30);
        let ours = Tensor::from_vec(out, (2, 16, 41, 30), &dev).unwrap();
        let theirs = candle_nn::Conv2d::new(weight, Some(bias), config)
            .forward(&x)
            .unwrap();
        let err = crate::relative_error(&ours, &theirs).unwrap();
        assert!(err < 1e-5, "{err}");
    }
}
