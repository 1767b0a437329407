//! Element-wise steps the super-resolution networks chain between their
//! convolutions, each in one pass across the rayon pool: leaky ReLU,
//! PReLU with a slope per channel, and `base + scale · delta` (ESRGAN's
//! residual scaling). candle builds the first two from four or five
//! whole-tensor passes (zeros, maximum, minimum, multiply, add) and the
//! last from two, on one thread; at the ×4 stages of a 512² RRDBNet output
//! each pass walks 64 MB. Other devices and dtypes take candle's path.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::vector_math::vectorised_fn;

const CHUNK: usize = 16_384;

fn own_kernel(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `x` where positive, `slope · x` elsewhere.
pub fn leaky_relu(x: &Tensor, slope: f32) -> candle_core::Result<Tensor> {
    if own_kernel(x) {
        return x.contiguous()?.apply_op1_no_bwd(&LeakyRelu(slope));
    }
    leaky_relu_by_candle_ops(x, slope)
}

fn leaky_relu_by_candle_ops(x: &Tensor, slope: f32) -> candle_core::Result<Tensor> {
    let zeros = x.zeros_like()?;
    x.maximum(&zeros)? + (x.minimum(&zeros)? * f64::from(slope))?
}

struct LeakyRelu(f32);

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "cyberimage-leaky-relu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((start, end)), CpuStorage::F32(data)) = (layout.contiguous_offsets(), storage)
        else {
            candle_core::bail!("leaky relu kernel: the input must be contiguous f32");
        };
        let mut out = vec![0f32; end - start];
        let slope = self.0;
        out.par_chunks_mut(CHUNK)
            .zip(data[start..end].par_chunks(CHUNK))
            .for_each(|(dst, src)| leaky_slice(src, dst, slope));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

vectorised_fn! {
    fn leaky_slice(src: &[f32], dst: &mut [f32], slope: f32) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = if v > 0.0 { v } else { v * slope };
        }
    }
}

/// PReLU on an NCHW tensor: channel `c` has slope `slopes[c]`.
pub fn prelu_channels(x: &Tensor, slopes: &Tensor) -> candle_core::Result<Tensor> {
    let (_, channels, _, _) = x.dims4()?;
    if own_kernel(x) && slopes.dtype() == DType::F32 && slopes.elem_count() == channels {
        let slopes = slopes.flatten_all()?.to_vec1::<f32>()?;
        return x.contiguous()?.apply_op1_no_bwd(&PreluChannels(slopes));
    }
    let slopes = slopes.reshape((1, channels, 1, 1))?;
    let zeros = x.zeros_like()?;
    x.maximum(&zeros)? + x.minimum(&zeros)?.broadcast_mul(&slopes)?
}

struct PreluChannels(Vec<f32>);

impl CustomOp1 for PreluChannels {
    fn name(&self) -> &'static str {
        "cyberimage-prelu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((start, end)), CpuStorage::F32(data)) = (layout.contiguous_offsets(), storage)
        else {
            candle_core::bail!("prelu kernel: the input must be contiguous f32");
        };
        let dims = layout.shape().dims();
        let plane = dims[2] * dims[3];
        let channels = self.0.len();
        let mut out = vec![0f32; end - start];
        if plane > 0 {
            // One task per (image, channel) plane: one slope each.
            out.par_chunks_mut(plane)
                .zip(data[start..end].par_chunks(plane))
                .enumerate()
                .for_each(|(i, (dst, src))| leaky_slice(src, dst, self.0[i % channels]));
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `base + scale · delta`, both of one shape.
pub fn add_scaled(base: &Tensor, delta: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
    if own_kernel(base) && own_kernel(delta) && base.dims() == delta.dims() {
        return base
            .contiguous()?
            .apply_op2_no_bwd(&delta.contiguous()?, &AddScaled(scale));
    }
    base + (delta * f64::from(scale))?
}

struct AddScaled(f32);

impl CustomOp2 for AddScaled {
    fn name(&self) -> &'static str {
        "cyberimage-add-scaled"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((a0, a1)), Some((b0, b1)), CpuStorage::F32(a), CpuStorage::F32(b)) =
            (l1.contiguous_offsets(), l2.contiguous_offsets(), s1, s2)
        else {
            candle_core::bail!("add-scaled kernel: both inputs must be contiguous f32");
        };
        if a1 - a0 != b1 - b0 {
            candle_core::bail!("add-scaled kernel: {} and {} elements", a1 - a0, b1 - b0);
        }
        let scale = self.0;
        let mut out = vec![0f32; a1 - a0];
        out.par_chunks_mut(CHUNK)
            .zip(a[a0..a1].par_chunks(CHUNK).zip(b[b0..b1].par_chunks(CHUNK)))
            .for_each(|(dst, (x, y))| axpy_slice(x, y, dst, scale));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

vectorised_fn! {
    fn axpy_slice(x: &[f32], y: &[f32], dst: &mut [f32], scale: f32) {
        for ((d, &a), &b) in dst.iter_mut().zip(x).zip(y) {
            *d = scale.mul_add(b, a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn data(shape: (usize, usize, usize, usize)) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n).map(|i| 3.0 * (i as f32 * 0.618_034).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn match_candle_compositions() {
        // Planes below and above one task's chunk, a strided input.
        for shape in [(1, 3, 5, 7), (2, 8, 130, 129)] {
            let x = data(shape);
            let expected = leaky_relu_by_candle_ops(&x, 0.2).unwrap();
            assert_eq!(
                crate::relative_error(&leaky_relu(&x, 0.2).unwrap(), &expected).unwrap(),
                0.0
            );
            let t = x.transpose(2, 3).unwrap();
            let expected = leaky_relu_by_candle_ops(&t, 0.2).unwrap();
            assert_eq!(
                crate::relative_error(&leaky_relu(&t, 0.2).unwrap(), &expected).unwrap(),
                0.0
            );

            let slopes: Vec<f32> = (0..shape.1).map(|c| 0.05 * c as f32 - 0.1).collect();
            let slopes = Tensor::new(slopes.as_slice(), &Device::Cpu).unwrap();
            let zeros = x.zeros_like().unwrap();
            let expected = (x.maximum(&zeros).unwrap()
                + x.minimum(&zeros)
                    .unwrap()
                    .broadcast_mul(&slopes.reshape((1, shape.1, 1, 1)).unwrap())
                    .unwrap())
            .unwrap();
            let ours = prelu_channels(&x, &slopes).unwrap();
            assert!(crate::relative_error(&ours, &expected).unwrap() < 1e-7);

            let y = (data(shape) * 0.5).unwrap().cos().unwrap();
            let expected = (&x + (&y * 0.2).unwrap()).unwrap();
            let ours = add_scaled(&x, &y, 0.2).unwrap();
            assert!(crate::relative_error(&ours, &expected).unwrap() < 1e-7);
        }
    }
}
