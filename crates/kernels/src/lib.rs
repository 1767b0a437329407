//! CPU compute that knows no model, and the only `unsafe` code in the
//! workspace.
//!
//! Kernels of our own where candle's were the bottleneck (convolution and
//! Winograd's form, bf16 products and AMX tap-tile convolutions,
//! attention, softmax, group norm, GEGLU and the tanh GELU, the upscalers'
//! element-wise steps, strided copies), each a candle
//! custom op with candle's implementation
//! as the fallback for other devices and dtypes, and each tested against
//! it. Beside them: the primitive layers that dispatch to them (`Conv2d`,
//! `GroupNorm`, `Linear`, loaded as candle-nn loads its own), the
//! process's global allocator (`alloc`, mimalloc tuned for tensors), and the engine
//! threads' scheduling priority (`priority`), which are system calls.
//!
//! Every other crate is `#![forbid(unsafe_code)]`: what they need from raw
//! memory they get through the safe functions here, whose bounds are
//! checked. This crate rebuilds only when a kernel changes.

pub mod activations;
pub mod alloc;
pub mod attention;
pub mod bf16_gemm;
pub mod buffers;
pub mod conv;
mod f32_gemm;
pub mod group_norm;
pub mod in_place;
pub mod layout;
pub mod linear;
pub mod pointwise;
pub mod priority;
pub mod softmax;
mod vector_math;

/// Largest relative error, `max|a-b| / max|b|`: the measure the parity tests
/// hold to 1e-4 in f32.
pub fn relative_error(
    actual: &candle_core::Tensor,
    expected: &candle_core::Tensor,
) -> candle_core::Result<f32> {
    let diff = (actual - expected)?
        .abs()?
        .flatten_all()?
        .max(candle_core::D::Minus1)?;
    let scale = expected.abs()?.flatten_all()?.max(candle_core::D::Minus1)?;
    Ok(diff.to_scalar::<f32>()? / scale.to_scalar::<f32>()?.max(f32::MIN_POSITIVE))
}
