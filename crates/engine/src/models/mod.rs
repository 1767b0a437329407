//! The networks, each built from its diffusers or transformers
//! `config.json`: text encoders (`clip`, `t5`, and `qwen3`, also a small
//! language model) with their `tokenizer`, the
//! denoisers (`unet`, `mmdit`, `flux`), the VAE decoder (`vae`) and the
//! super-resolution networks (`upscalers`, built from their weights' shapes)
//! and the tiny preview decoder (`taesd`).

pub mod clip;
pub mod flux;
pub mod mmdit;
pub mod mmdit_lora;
pub mod qwen3;
pub mod t5;
pub mod taesd;
pub mod tokenizer;
pub mod unet;
pub mod upscalers;
pub mod vae;
pub mod vae_encoder;
