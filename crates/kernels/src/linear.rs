//! Linear layers that run in bf16 when the engine thread asks for it.
//!
//! In f32 (the default) this is candle-nn's `Linear`. Under
//! `bf16_gemm::scoped(true, ..)`, inputs on the CPU multiply the weights
//! (packed on first use, and again after they are edited in place) with the bf16 kernel, the rows of the input
//! shared across the rayon pool, the bias pre-filled into the output.

use std::sync::Arc;

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::bf16_gemm::{self, Kernel, PackedB};
use crate::buffers::{with_f32, write_all, SharedOut};
use crate::f32_gemm::{self, Matrix};
use crate::in_place::DerivedCache;

/// Input rows per task for the AVX-512 kernel: a multiple of its 12-row
/// tile.
const ROWS_PER_TASK: usize = 96;
/// The most input rows per task for the AMX kernel, a multiple of its
/// 32-row block: it reads all the weights once per task, so its tasks are
/// as large as sharing the rows between the threads allows, up to 128
/// rows (the kernel's own row chunk: larger ones gain nothing).
const AMX_MAX_ROWS_PER_TASK: usize = 128;

fn rows_per_task(kernel: Kernel, m: usize) -> usize {
    match kernel {
        Kernel::Avx512 => ROWS_PER_TASK,
        Kernel::Amx => m
            .div_ceil(rayon::current_num_threads().max(1))
            .next_multiple_of(32)
            .min(AMX_MAX_ROWS_PER_TASK),
    }
}

#[derive(Clone, Debug)]
pub struct Linear {
    inner: candle_nn::Linear,
    packed_bf16: Arc<DerivedCache<PackedB>>,
}

pub fn linear(input: usize, output: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear::from(candle_nn::linear(input, output, vb)?))
}

pub fn linear_no_bias(input: usize, output: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear::from(candle_nn::linear_no_bias(input, output, vb)?))
}

impl From<candle_nn::Linear> for Linear {
    fn from(inner: candle_nn::Linear) -> Self {
        let layer = Self {
            inner,
            packed_bf16: Arc::default(),
        };
        let weight = layer.inner.weight();
        if bf16_gemm::packs_at_load() && weight.device().is_cpu() && weight.dtype() == DType::F32 {
            // A failure here is met again, and reported, by the first
            // bf16 forward, which packs when the cache is empty.
            let _ = layer.packed();
        }
        layer
    }
}

impl Linear {
    fn packed(&self) -> candle_core::Result<Arc<PackedB>> {
        self.packed_bf16.get_or_make(|| {
            let weight = self.inner.weight();
            let (out, input) = weight.dims2()?;
            // Read in place, not copied out first.
            crate::buffers::with_f32(weight, "linear weights", |flat| {
                PackedB::from_transposed(flat, out, input)
            })
        })
    }

    fn forward_bf16(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let packed = self.packed()?;
        let (n, k) = (packed.columns(), packed.depth());
        let dims = x.dims().to_vec();
        let m = x.elem_count() / k;
        let bias = match self.inner.bias() {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        // Not zeroed: each task fills its rows with the bias (or has the
        // product overwrite them) just before its product, so they are
        // written once and still in cache when the product adds to them.
        let mut out = Vec::new();
        let out_buf = SharedOut::spare(&mut out, m * n);
        let rows_per_task = rows_per_task(packed.kernel(), m);
        with_f32(x, "linear input", |input| {
            (0..m.div_ceil(rows_per_task))
                .into_par_iter()
                .for_each(|task| {
                    let start = task * rows_per_task;
                    let rows = rows_per_task.min(m - start);
                    if let Some(bias) = &bias {
                        // SAFETY: rows start..start + rows are this task's
                        // alone.
                        let part = unsafe { out_buf.part(start * n, rows * n) };
                        for row in part.chunks_exact_mut(n) {
                            write_all(row, bias);
                        }
                    }
                    // SAFETY: as above; with a bias the rows were just
                    // initialised, without one the product overwrites them.
                    let block = unsafe { out_buf.block(start * n, rows, n, n) };
                    bf16_gemm::gemm_packed_b(
                        &input[start * k..(start + rows) * k],
                        rows,
                        k,
                        &packed,
                        block,
                        bias.is_some(),
                    );
                });
        })?;
        // SAFETY: the tasks together wrote every row.
        unsafe { out.set_len(m * n) };
        let mut shape = dims;
        *shape.last_mut().expect("a linear input has dimensions") = n;
        Tensor::from_vec(out, shape, x.device())
    }
}

impl Linear {
    /// The f32 product as one matrix product over every row of the input
    /// (candle's runs one per batch entry, then adds the bias in another
    /// pass over the output): the bias pre-filled, the weights read in
    /// place as the transposed operand.
    fn forward_f32(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let weight = self.inner.weight();
        let (n, k) = weight.dims2()?;
        let dims = x.dims().to_vec();
        if dims.last() != Some(&k) {
            candle_core::bail!("linear: input {dims:?} for weights [{n}, {k}]");
        }
        let m = x.elem_count() / k.max(1);
        let bias = match self.inner.bias() {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        // Not zeroed: the bias fills the rows (in parallel), or the product
        // overwrites them.
        let mut out = Vec::new();
        let out_buf = SharedOut::spare(&mut out, m * n);
        if let Some(bias) = &bias {
            (0..m).into_par_iter().with_min_len(64).for_each(|row| {
                // SAFETY: row `row` is this task's alone.
                write_all(unsafe { out_buf.part(row * n, n) }, bias);
            });
        }
        with_f32(weight, "linear weights", |w| {
            with_f32(x, "linear input", |input| {
                // SAFETY: only this product reaches the buffer; with a
                // bias every element was initialised just above.
                let block = unsafe { out_buf.block(0, m, n, n) };
                f32_gemm::gemm(
                    block,
                    Matrix::new(input, m, k, k),
                    Matrix::transposed(w, k, n, k),
                    bias.is_some(),
                    gemm::Parallelism::Rayon(rayon::current_num_threads().max(1)),
                )
            })
        })??;
        // SAFETY: the product wrote every element.
        unsafe { out.set_len(m * n) };
        let mut shape = dims;
        *shape.last_mut().expect("a linear input has dimensions") = n;
        Tensor::from_vec(out, shape, x.device())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let own = x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.inner.weight().dtype() == DType::F32;
        match (own, bf16_gemm::in_use()) {
            (true, true) => self.forward_bf16(x),
            (true, false) => self.forward_f32(x),
            (false, _) => self.inner.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn weights_are_packed_at_load_for_amx_only() {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.1, (40, 64), &dev).unwrap();
        let make = || Linear::from(candle_nn::Linear::new(weight.clone(), None));
        let _no_edits = crate::in_place::tests::EDITS.lock();
        assert!(!make().packed_bf16.is_current(), "not asked to");
        let at_load = bf16_gemm::packing_at_load(true, make);
        if bf16_gemm::Kernel::chosen() == Kernel::Amx && bf16_gemm::available() {
            assert!(at_load.packed_bf16.is_current());
        } else {
            assert!(!at_load.packed_bf16.is_current());
            cyberimage_testkit::skipped("packing at load: this CPU's bf16 kernel is not AMX");
        }
    }

    #[test]
    fn f32_matches_candle_with_and_without_bias() {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.1, (40, 64), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., 40, &dev).unwrap();
        for shape in [vec![150, 64], vec![2, 77, 64], vec![2, 3, 5, 64]] {
            let x = Tensor::randn(0f32, 1., shape.as_slice(), &dev).unwrap();
            for bias in [None, Some(bias.clone())] {
                let theirs = candle_nn::Linear::new(weight.clone(), bias);
                let ours = Linear::from(theirs.clone());
                let (a, e) = (ours.forward(&x).unwrap(), theirs.forward(&x).unwrap());
                assert_eq!(a.dims(), e.dims());
                let err = crate::relative_error(&a, &e).unwrap();
                assert!(err < 1e-6, "{shape:?}: {err}");
            }
        }
    }

    #[test]
    fn bf16_stays_close_to_f32_with_and_without_bias() {
        if !bf16_gemm::available() {
            return cyberimage_testkit::skipped("this CPU has no AVX-512 BF16");
        }
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 150, 64), &dev).unwrap();
        let weight = Tensor::randn(0f32, 0.1, (40, 64), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., 40, &dev).unwrap();
        for bias in [None, Some(bias)] {
            let layer = Linear::from(candle_nn::Linear::new(weight.clone(), bias));
            let exact = layer.forward(&x).unwrap();
            let rounded = bf16_gemm::scoped(true, || layer.forward(&x)).unwrap();
            assert_eq!(rounded.dims(), &[2, 150, 40]);
            let err = crate::relative_error(&rounded, &exact).unwrap();
            assert!(err < 2e-2 && err > 1e-6, "{err}");
        }
    }
}
