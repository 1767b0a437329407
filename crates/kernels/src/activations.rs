//! Feed-forward activations: GEGLU (the UNet transformers' gate) in one
//! pass, the tanh-form GELU and CLIP's quick GELU, all across the rayon
//! pool.
//!
//! candle computes `value * gelu_erf(gate)` as two single-threaded maps, the
//! first over a strided half of the projection, with a scalar `erf` per
//! element: at 512² an SD 1.5 UNet step gates ~90 M elements this way.
//! Here each row of the projection becomes one output row in a single
//! read, across the rayon pool, with a Φ (normal CDF) the compiler
//! vectorises. Devices other than the CPU, dtypes other than f32 and
//! non-contiguous projections take candle's path.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::vector_math::{normal_cdf, sigmoid, vectorised_fn};

/// `value * gelu(gate)` (exact GELU, erf form) where the projection's last
/// dimension holds the value half, then the gate half.
pub fn geglu(projection: &Tensor) -> candle_core::Result<Tensor> {
    if projection.device().is_cpu()
        && projection.dtype() == candle_core::DType::F32
        && projection.is_contiguous()
    {
        return projection.apply_op1_no_bwd(&Geglu);
    }
    let half = projection.dim(D::Minus1)? / 2;
    let value = projection.narrow(D::Minus1, 0, half)?;
    let gate = projection.narrow(D::Minus1, half, half)?.gelu_erf()?;
    value * gate
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "cyberimage-geglu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((start, end)), CpuStorage::F32(data)) = (layout.contiguous_offsets(), storage)
        else {
            candle_core::bail!("geglu kernel: the projection must be contiguous f32");
        };
        let mut dims = layout.shape().dims().to_vec();
        let Some(last) = dims.last_mut() else {
            candle_core::bail!("geglu kernel: a scalar has no halves");
        };
        if *last % 2 != 0 {
            candle_core::bail!("geglu kernel: odd last dimension {last}");
        }
        let half = *last / 2;
        *last = half;
        let rows = (end - start) / (2 * half).max(1);
        let mut out = vec![0f32; rows * half];
        if let Some(rows_per_task) = 8192usize.checked_div(half) {
            let rows_per_task = rows_per_task.max(1);
            out.par_chunks_mut(half * rows_per_task)
                .zip(data[start..end].par_chunks(2 * half * rows_per_task))
                .for_each(|(dst, src)| geglu_rows(src, dst, half));
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

vectorised_fn! {
    fn geglu_rows(src: &[f32], dst: &mut [f32], half: usize) {
        for (row, out) in src.chunks_exact(2 * half).zip(dst.chunks_exact_mut(half)) {
            let (value, gate) = row.split_at(half);
            for ((o, &v), &g) in out.iter_mut().zip(value).zip(gate) {
                *o = v * g * normal_cdf(g);
            }
        }
    }
}

/// GELU in its tanh form (what candle's `gelu` and PyTorch's
/// `gelu(approximate="tanh")` compute: FLUX's and SD3's feed-forwards),
/// across the rayon pool. ½x(1 + tanh u) is written x·σ(2u), exact in both
/// tails.
pub fn gelu_tanh(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        // A strided input (FLUX's single blocks gate a slice of a wider
        // projection) is copied first: one memory pass, cheaper than
        // candle's scalar tanh per element.
        return x.contiguous()?.apply_op1_no_bwd(&Pointwise::GeluTanh);
    }
    x.gelu()
}

/// `x·σ(1.702·x)`, CLIP's `quick_gelu` (SD 1.x's text encoder), in one
/// pass across the rayon pool (candle: three passes, one thread each).
pub fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op1_no_bwd(&Pointwise::QuickGelu);
    }
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

/// The element-wise activations computed here.
#[derive(Clone, Copy)]
enum Pointwise {
    GeluTanh,
    QuickGelu,
}

impl CustomOp1 for Pointwise {
    fn name(&self) -> &'static str {
        match self {
            Pointwise::GeluTanh => "cyberimage-gelu-tanh",
            Pointwise::QuickGelu => "cyberimage-quick-gelu",
        }
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((start, end)), CpuStorage::F32(data)) = (layout.contiguous_offsets(), storage)
        else {
            candle_core::bail!("{}: the input must be contiguous f32", self.name());
        };
        let mut out = vec![0f32; end - start];
        let kind = *self;
        out.par_chunks_mut(16_384)
            .zip(data[start..end].par_chunks(16_384))
            .for_each(|(dst, src)| match kind {
                Pointwise::GeluTanh => gelu_tanh_slice(src, dst),
                Pointwise::QuickGelu => quick_gelu_slice(src, dst),
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

vectorised_fn! {
    fn gelu_tanh_slice(src: &[f32], dst: &mut [f32]) {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        for (d, &v) in dst.iter_mut().zip(src) {
            let u = SQRT_2_OVER_PI * v * (0.044_715 * v).mul_add(v, 1.0);
            *d = v * sigmoid(2.0 * u);
        }
    }
}

vectorised_fn! {
    fn quick_gelu_slice(src: &[f32], dst: &mut [f32]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v * sigmoid(1.702 * v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_geglu() {
        let dev = Device::Cpu;
        // Rows shorter and longer than the task size, large gates.
        for shape in [(1, 3, 10), (2, 5, 2 * 1280), (2, 7, 2 * 40_000)] {
            // Deterministic, spread over ±4 (candle's erf form cancels for
            // negative gates, so an unlucky random draw of only small
            // values could make its own rounding the larger error).
            let n = shape.0 * shape.1 * shape.2;
            let values: Vec<f32> = (0..n).map(|i| 4.0 * (i as f32 * 0.618_034).sin()).collect();
            let proj = Tensor::from_vec(values, shape, &dev).unwrap();
            let half = shape.2 / 2;
            let expected = (proj.narrow(D::Minus1, 0, half).unwrap()
                * proj
                    .narrow(D::Minus1, half, half)
                    .unwrap()
                    .gelu_erf()
                    .unwrap())
            .unwrap();
            let ours = geglu(&proj).unwrap();
            assert_eq!(ours.dims(), expected.dims());
            let err = crate::relative_error(&ours, &expected).unwrap();
            assert!(err < 1e-6, "{shape:?}: {err}");
        }
    }

    #[test]
    fn gelu_matches_its_formula_in_f64() {
        // Against the formula in f64, not candle's f32 gelu: that one
        // computes 1 + tanh(u), which cancels for negative inputs (relative
        // error ~1e-5 around x = −3), where x·σ(2u) does not.
        let dev = Device::Cpu;
        for (lo, hi) in [(-12.0f64, 12.0), (-4.0, -1.0)] {
            let n = 16_384 * 3 + 5;
            let xs: Vec<f32> = (0..n)
                .map(|i| (lo + (hi - lo) * i as f64 / n as f64) as f32)
                .collect();
            let x = Tensor::new(xs.as_slice(), &dev).unwrap();
            let ours = gelu_tanh(&x).unwrap().to_vec1::<f32>().unwrap();
            for (&v, &o) in xs.iter().zip(&ours) {
                let v = v as f64;
                let u = (2.0 / std::f64::consts::PI).sqrt() * v * (1.0 + 0.044715 * v * v);
                // ½v(1 + tanh u) = v / (1 + e^(−2u)), the form that does
                // not cancel even in f64.
                let exact = v / (1.0 + (-2.0 * u).exp());
                // Relative, except where the value underflows f32's range;
                // in the negative tail σ(2u) ≈ e^(2u), so f32's rounding of
                // u alone costs a relative |u|·1e-7: the bound grows with u.
                let err = (o as f64 - exact).abs() / exact.abs().max(1e-30) / (1.0 + u.abs());
                assert!(
                    err < 1e-6 || exact.abs() < 1e-35,
                    "gelu({v}) = {o}, exact {exact}"
                );
            }
        }
    }

    #[test]
    fn quick_gelu_matches_candle() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1., (2, 77, 3072), &dev).unwrap() * 4.0).unwrap();
        let ours = quick_gelu(&x).unwrap();
        let theirs = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        let err = crate::relative_error(&ours, &theirs).unwrap();
        assert!(err < 1e-6, "{err}");
    }
}
