//! What a checkpoint file holds, told from its tensor names and shapes
//! (never from its file name), as ComfyUI's model detection does: read
//! from the header alone, so scanning a folder of 6 GB files takes
//! milliseconds.

use std::collections::HashMap;
use std::path::Path;

use cyberimage_core::ModelFamily;

use super::Layout;
use crate::weights::safetensors::{read_header, TensorEntry};

/// The LDM prefix of the denoiser in single-file checkpoints.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// Where Stability's SD 3.x file keeps its text encoders.
pub const SD3_CLIP_L: &str = "text_encoders.clip_l.transformer.";
pub const SD3_CLIP_G: &str = "text_encoders.clip_g.transformer.";
pub const SD3_T5: &str = "text_encoders.t5xxl.transformer.";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// An SD 1.x/2.x/XL checkpoint: the UNet, and whether the VAE and the
    /// text encoders are inside.
    StableDiffusion {
        family: ModelFamily,
        has_vae: bool,
        has_text_encoders: bool,
    },
    /// Stability's SD 3.x file: the MMDiT under `prefix`, and whether the
    /// VAE and the three text encoders are inside.
    Sd3 {
        prefix: String,
        has_vae: bool,
        has_text_encoders: bool,
    },
    /// A FLUX.1 transformer (BFL or diffusers names) under `prefix`.
    FluxTransformer { family: ModelFamily, prefix: String },
    /// A FLUX.1 transformer quantized to GGUF.
    FluxGguf { family: ModelFamily },
    /// An autoencoder on its own.
    Vae {
        latent_channels: usize,
        prefix: String,
        layout: Layout,
    },
    /// A CLIP text encoder in transformers' names (`clip_l`, `clip_g`),
    /// with or without `text_model.` (read as it is).
    ClipText { projection: bool },
    /// A T5 encoder (`t5xxl_fp16`, `t5xxl_fp8_e4m3fn`).
    T5,
    /// Recognised, but not something this engine runs; or not recognised.
    Unsupported(String),
}

/// What `path` holds. An unreadable file is an error; a readable one that
/// is nothing we know is `Unsupported` with the reason.
pub fn detect(path: &Path) -> std::io::Result<Contents> {
    if path.extension().is_some_and(|e| e == "gguf") {
        return detect_gguf(path);
    }
    if path
        .extension()
        .is_some_and(|e| e == "ckpt" || e == "pt" || e == "pth" || e == "bin")
    {
        return Ok(Contents::Unsupported(
            "a pickle checkpoint: loading one can run code it carries, so only .safetensors \
             files are read (convert it, for example with diffusers' or A1111's tools)"
                .into(),
        ));
    }
    Ok(detect_tensors(&read_header(path)?))
}

fn detect_tensors(tensors: &HashMap<String, TensorEntry>) -> Contents {
    let has = |name: &str| tensors.contains_key(name);
    let any_prefix = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
    if has(&format!("{UNET_PREFIX}input_blocks.0.0.weight")) {
        let context_dim = tensors
            .iter()
            .find(|(k, _)| k.starts_with(UNET_PREFIX) && k.ends_with("attn2.to_k.weight"))
            .and_then(|(_, e)| e.shape.get(1).copied());
        let family = if has(&format!("{UNET_PREFIX}label_emb.0.0.weight"))
            || any_prefix("conditioner.embedders.1.model.")
        {
            ModelFamily::Sdxl
        } else if any_prefix("cond_stage_model.model.") || context_dim == Some(1024) {
            ModelFamily::Sd21
        } else {
            ModelFamily::Sd15
        };
        return Contents::StableDiffusion {
            family,
            has_vae: has("first_stage_model.decoder.conv_in.weight"),
            has_text_encoders: any_prefix("cond_stage_model.") || any_prefix("conditioner."),
        };
    }
    for prefix in ["", UNET_PREFIX] {
        let has_p = |name: &str| has(&format!("{prefix}{name}"));
        if has_p("double_blocks.0.img_attn.qkv.weight") {
            return Contents::FluxTransformer {
                family: flux_family(has_p("guidance_in.in_layer.weight")),
                prefix: prefix.into(),
            };
        }
        if has_p("transformer_blocks.0.attn.add_q_proj.weight")
            && has_p("single_transformer_blocks.0.proj_mlp.weight")
        {
            return Contents::FluxTransformer {
                family: flux_family(has_p("time_text_embed.guidance_embedder.linear_1.weight")),
                prefix: prefix.into(),
            };
        }
        if has_p("joint_blocks.0.x_block.attn.qkv.weight") {
            return Contents::Sd3 {
                prefix: prefix.into(),
                has_vae: has("first_stage_model.decoder.conv_in.weight"),
                has_text_encoders: any_prefix(SD3_CLIP_L)
                    && any_prefix(SD3_CLIP_G)
                    && any_prefix(SD3_T5),
            };
        }
    }
    for prefix in ["", "first_stage_model.", "vae."] {
        if let Some(conv_in) = tensors.get(&format!("{prefix}decoder.conv_in.weight")) {
            let layout = if any_prefix(&format!("{prefix}decoder.up_blocks.")) {
                Layout::AsIs
            } else {
                Layout::LdmVae
            };
            return Contents::Vae {
                latent_channels: conv_in.shape.get(1).copied().unwrap_or(0),
                prefix: prefix.into(),
                layout,
            };
        }
    }
    for prefix in ["text_model.", ""] {
        if has(&format!("{prefix}encoder.layers.0.self_attn.q_proj.weight"))
            && has(&format!("{prefix}embeddings.token_embedding.weight"))
        {
            return Contents::ClipText {
                projection: has("text_projection.weight"),
            };
        }
    }
    if has("encoder.block.0.layer.0.SelfAttention.q.weight") {
        return Contents::T5;
    }
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    Contents::Unsupported(format!(
        "no known model's tensors ({} tensors, first {:?})",
        names.len(),
        names.iter().take(3).collect::<Vec<_>>()
    ))
}

/// GGUF files are read for FLUX transformers (BFL names) only.
fn detect_gguf(path: &Path) -> std::io::Result<Contents> {
    let mut file = std::fs::File::open(path)?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let has = |name: &str| content.tensor_infos.contains_key(name);
    Ok(if has("double_blocks.0.img_attn.qkv.weight") {
        Contents::FluxGguf {
            family: flux_family(has("guidance_in.in_layer.weight")),
        }
    } else {
        Contents::Unsupported(
            "a GGUF file that is not a FLUX transformer (GGUF is read for FLUX only)".into(),
        )
    })
}

fn flux_family(guidance: bool) -> ModelFamily {
    if guidance {
        ModelFamily::FluxDev
    } else {
        ModelFamily::FluxSchnell
    }
}

/// Whether a file detected as `detected` can run as a model configured as
/// `configured` (SD-Turbo is SD 2.1-shaped).
pub fn compatible(detected: ModelFamily, configured: ModelFamily) -> bool {
    detected == configured || (detected, configured) == (ModelFamily::Sd21, ModelFamily::SdTurbo)
}
