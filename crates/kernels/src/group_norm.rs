//! Group normalisation, optionally followed by SiLU, in one CPU kernel.
//!
//! candle-nn composes group norm from about eight tensor operations, each a
//! full pass over the activations with a fresh allocation (at 512² the
//! VAE's activations are 128 MiB each, and every fresh allocation is
//! zeroed page by page by the kernel); the UNet and VAE then apply SiLU as
//! one more pass. Here one pass gathers each group's moments (accumulated
//! in f64) and a second writes the normalised, scaled, shifted and
//! optionally SiLU-activated output. Devices other than the CPU, and dtypes
//! other than f32, use candle-nn's.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use crate::vector_math::{sigmoid, vectorised_fn};

#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

/// Loads `weight` and `bias` (ones and zeros when absent, as candle-nn's
/// `group_norm` does) for `channels` channels in `groups` groups.
pub fn group_norm(
    groups: usize,
    channels: usize,
    eps: f64,
    vb: VarBuilder,
) -> candle_core::Result<GroupNorm> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        candle_core::bail!("group norm: {channels} channels do not split into {groups} groups");
    }
    Ok(GroupNorm {
        weight: vb.get_with_hints(channels, "weight", Init::Const(1.))?,
        bias: vb.get_with_hints(channels, "bias", Init::Const(0.))?,
        groups,
        eps,
    })
}

impl GroupNorm {
    /// SiLU(group_norm(x)): the pre-activation of every ResNet block.
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        if !(x.device().is_cpu() && x.dtype() == DType::F32 && self.weight.dtype() == DType::F32) {
            let channels = self.weight.dim(0)?;
            let layer = candle_nn::GroupNorm::new(
                self.weight.clone(),
                self.bias.clone(),
                channels,
                self.groups,
                self.eps,
            )?;
            let y = layer.forward(x)?;
            return if silu { y.silu() } else { Ok(y) };
        }
        let op = GroupNormOp {
            weight: self.weight.flatten_all()?.to_vec1::<f32>()?,
            bias: self.bias.flatten_all()?.to_vec1::<f32>()?,
            groups: self.groups,
            eps: self.eps,
            silu,
        };
        x.contiguous()?.apply_op1_no_bwd(&op)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, false)
    }
}

struct GroupNormOp {
    weight: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
    eps: f64,
    silu: bool,
}

vectorised_fn! {
    /// Mean and variance (population, as torch's group norm uses) of
    /// `values`, summed in f64 across eight lanes: compiled for AVX-512
    /// the lanes are one register (the plain x86-64 copy converted and
    /// added one value at a time, 14 % of a VAE decode).
    fn moments(values: &[f32]) -> (f64, f64) {
        let (mut sum, mut squares) = ([0f64; 8], [0f64; 8]);
        let chunks = values.chunks_exact(8);
        let rest = chunks.remainder();
        for chunk in chunks {
            for lane in 0..8 {
                let v = chunk[lane] as f64;
                sum[lane] += v;
                squares[lane] += v * v;
            }
        }
        let mut total: f64 = sum.iter().sum();
        let mut total_sq: f64 = squares.iter().sum();
        for &v in rest {
            total += v as f64;
            total_sq += v as f64 * v as f64;
        }
        let n = values.len().max(1) as f64;
        let mean = total / n;
        (mean, (total_sq / n - mean * mean).max(0.0))
    }
}

impl CustomOp1 for GroupNormOp {
    fn name(&self) -> &'static str {
        "cyberimage-group-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let channels = self.weight.len();
        if dims.len() < 2 || dims[1] != channels {
            candle_core::bail!("group norm over {channels} channels got shape {dims:?}");
        }
        let input = crate::buffers::contiguous_f32(storage, layout, "group norm")?;
        let per_channel: usize = dims[2..].iter().product();
        let per_group = per_channel * channels / self.groups;
        // Not zeroed: every element is written once below.
        let mut out = Vec::with_capacity(input.len());
        out.spare_capacity_mut()[..input.len()]
            .par_chunks_mut(per_group)
            .zip(input.par_chunks(per_group))
            .enumerate()
            .for_each(|(index, (dst, src))| {
                let (mean, var) = moments(src);
                let rstd = 1.0 / (var + self.eps).sqrt();
                let first_channel = (index % self.groups) * (channels / self.groups);
                let rows = dst
                    .chunks_mut(per_channel)
                    .zip(src.chunks(per_channel))
                    .enumerate();
                for (c, (dst, src)) in rows {
                    let gamma = self.weight[first_channel + c] as f64;
                    let scale = (gamma * rstd) as f32;
                    let shift = (self.bias[first_channel + c] as f64 - mean * gamma * rstd) as f32;
                    scale_shift(src, dst, scale, shift, self.silu);
                }
            });
        // SAFETY: the groups together cover the output, and scale_shift
        // wrote each of their elements.
        unsafe { out.set_len(input.len()) };
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

vectorised_fn! {
    /// `src·scale + shift` into `dst`, through SiLU when `silu`; every
    /// element of `dst` (as long as `src`) is written.
    fn scale_shift(
        src: &[f32],
        dst: &mut [std::mem::MaybeUninit<f32>],
        scale: f32,
        shift: f32,
        silu: bool,
    ) {
        assert_eq!(src.len(), dst.len(), "scale_shift: lengths differ");
        if silu {
            for (d, &s) in dst.iter_mut().zip(src) {
                let y = s * scale + shift;
                d.write(y * sigmoid(y));
            }
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                d.write(s * scale + shift);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_group_norm_with_and_without_silu() {
        let dev = Device::Cpu;
        for (shape, groups) in [
            (vec![2, 8, 5, 7], 4),
            (vec![1, 6, 33], 3),
            (vec![3, 4, 2, 2], 1),
        ] {
            let channels = shape[1];
            // An offset mean tests the variance's cancellation.
            let x = (Tensor::randn(0f32, 2., shape.as_slice(), &dev).unwrap() + 30.0).unwrap();
            let weight = Tensor::randn(0f32, 1., channels, &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., channels, &dev).unwrap();
            let ours = GroupNorm {
                weight: weight.clone(),
                bias: bias.clone(),
                groups,
                eps: 1e-6,
            };
            let theirs = candle_nn::GroupNorm::new(weight, bias, channels, groups, 1e-6).unwrap();
            let expected = theirs.forward(&x).unwrap();
            let err = crate::relative_error(&ours.forward(&x).unwrap(), &expected).unwrap();
            assert!(err < 1e-5, "{shape:?}: {err}");
            let err =
                crate::relative_error(&ours.forward_silu(&x).unwrap(), &expected.silu().unwrap())
                    .unwrap();
            assert!(err < 1e-5, "{shape:?} with SiLU: {err}");
        }
    }
}
