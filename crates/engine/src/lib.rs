//! Diffusion pipelines on candle.
//!
//! Models are built from the diffusers folder layout: every size comes from
//! the model's own `config.json`, so the real checkpoints, fine-tunes and the
//! tiny random test models in `fixtures/` load through the same code. The
//! engine knows nothing of HTTP, SQL or job ids.
//!
//! Pipelines: SD 1.x/2.x/Turbo and SDXL (`sd`), SD 3/3.5 (`sd3`), FLUX.1
//! dev/schnell with GGUF-quantized transformers (`flux`), each checked
//! stage by stage for parity with diffusers on tiny random models.
//! `CandleGenerator` implements `cyberimage_core::Generator` over them.

pub mod activations;
pub mod attention_cpu;
pub mod bf16_gemm;
pub mod block_cache_alloc;
pub mod blocks;
pub mod builtin;
pub mod clip;
pub mod conv;
mod cpu_buffers;
pub mod ddim;
mod digest;
mod dit;
pub mod error;
pub mod euler;
pub mod flow;
pub mod flux;
pub mod flux_model;
pub mod flux_weights;
pub mod generator;
pub mod group_norm;
pub mod linear;
pub mod memory;
pub mod mmdit;
pub mod noise;
pub mod priority;
pub mod schedule;
pub mod sd;
pub mod sd3;
pub mod softmax;
pub mod t5;
mod text_encoders;
pub mod tokenizer;
mod transformer2d;
pub mod unet;
pub mod vae;
mod vector_math;
pub mod weights;

pub use error::EngineLoadError;
pub use generator::{hf_cache_dir, hf_repo_dir, CandleGenerator};
pub use memory::{EngineOptions, Precision};

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
