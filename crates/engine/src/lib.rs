//! Diffusion pipelines on candle.
//!
//! Models are built from the diffusers folder layout: every size comes from
//! the model's own `config.json`, so the real checkpoints, fine-tunes and the
//! tiny random test models in `fixtures/` load through the same code. The
//! engine knows nothing of HTTP, SQL or job ids.
//!
//! The folders are layers, and a file imports only from its own layer or
//! the ones below it (`scripts/check_layers.py` enforces it):
//!
//! 1. `error`: the load error every layer returns;
//! 2. `weights`: reading safetensors and configs, digests, built-in models,
//!    the memory budget and the engine options;
//! 3. `layers`: building blocks shared by several networks (ResNet block,
//!    attention, the UNet's spatial transformer, DiT modulation);
//! 4. `models`: the networks (CLIP, T5, UNet, VAE, MMDiT, FLUX) and the
//!    tokenizers;
//! 5. `schedulers`: DDIM, Euler, Euler-ancestral, flow matching, noise;
//! 6. `pipelines`: a family's text-to-image (SD 1.x/2.x/XL, SD 3.x, FLUX.1);
//! 7. `generator`: `CandleGenerator`, `cyberimage_core::Generator` over
//!    the pipelines.
//!
//! Below all of them, in its own crate, `cyberimage_kernels`: the CPU
//! kernels and the workspace's only `unsafe` code.

#![forbid(unsafe_code)]

pub mod error;
pub mod generator;
pub mod layers;
pub mod models;
pub mod pipelines;
pub mod schedulers;
pub mod weights;

pub use error::EngineLoadError;
pub use generator::{hf_cache_dir, hf_repo_dir, CandleGenerator};
pub use weights::memory::{Bf16Kernel, EngineOptions, Precision};
