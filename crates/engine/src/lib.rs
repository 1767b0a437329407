//! Diffusion pipelines on candle.
//!
//! Models are built from the diffusers folder layout: every size comes from
//! the model's own `config.json`, so the real checkpoints, fine-tunes and the
//! tiny random test models in `fixtures/` load through the same code. The
//! engine knows nothing of HTTP, SQL or job ids.
//!
//! Status: the CLIP tokenizer, CLIP text encoder, SD 1.x/2.x UNet and VAE
//! decoder are implemented and checked for parity with transformers and
//! diffusers; the schedulers and the pipelines that implement
//! `cyberimage_core::Generator` are still to come.

pub mod blocks;
pub mod builtin;
pub mod clip;
pub mod ddim;
pub mod error;
pub mod generator;
pub mod noise;
pub mod sd;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use error::EngineLoadError;
pub use generator::CandleGenerator;
