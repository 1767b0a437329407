//! What a user asks for, the limits it must respect, and the fully resolved
//! spec a worker runs. Every adapter (REST, JSON-RPC, MCP, OpenAI) fills a
//! [`SpecRequest`]; [`SpecRequest::resolve`] (in `resolve.rs`) is the
//! single place where defaults are applied and input is judged.

use serde::{Deserialize, Serialize};

use crate::lora::LoraRequest;
use crate::model::Catalogue;

/// Seeds stay below 2^53 so that JavaScript clients, which read JSON numbers
/// as doubles, see the exact seed that made an image.
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// The seed that asks for a random one, as A1111 and stable-diffusion.cpp
/// spell it (omitting the seed does the same).
pub const RANDOM_SEED: i64 = -1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_prompt_chars: usize,
    pub min_dimension: u32,
    pub max_dimension: u32,
    pub max_steps: u32,
    pub max_guidance_scale: f32,
    pub max_num_images: u32,
    /// Width × height × num_images of one job: bounds memory and time.
    pub max_job_pixels: u64,
    /// Pixels of an image-to-image input picture, checked before decoding.
    pub max_input_pixels: u64,
    /// An upscaled picture's longest side and its pixels.
    pub max_upscaled_dimension: u32,
    pub max_upscaled_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_chars: 4000,
            min_dimension: 64,
            max_dimension: 2048,
            max_steps: 150,
            max_guidance_scale: 30.0,
            max_num_images: 8,
            max_job_pixels: 4 * 2048 * 2048,
            max_input_pixels: 4096 * 4096,
            max_upscaled_dimension: 8192,
            max_upscaled_pixels: 8192 * 8192,
        }
    }
}

/// A request as an adapter decoded it. Numbers are wide and signed so that a
/// negative or huge value reaches validation and gets a precise message
/// instead of a generic decoding error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecRequest {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub model: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub steps: Option<i64>,
    pub guidance_scale: Option<f64>,
    pub num_images: Option<i64>,
    pub seed: Option<i64>,
    /// Image-to-image: the input image as the request named it (a gallery
    /// image id, or base64 / a data URL); the jobs service stores it.
    pub init_image: Option<String>,
    /// How much of the schedule an image-to-image run takes (0 < s ≤ 1).
    pub strength: Option<f64>,
    /// Inpainting: a mask picture (white = repaint), named like
    /// `init_image` and of its size.
    pub mask_image: Option<String>,
    /// Outpainting: pixels to add around the `init_image`, which the
    /// model draws (an inpainting job over the extended canvas).
    pub outpaint: Option<Outpaint>,
    /// LoRAs by name in `loras/`; more come from `<lora:…>` prompt tags.
    pub loras: Vec<LoraRequest>,
    /// Inpainting: Gaussian blur of the mask, in pixels (σ), 0 to
    /// [`MAX_MASK_BLUR`]; AUTOMATIC1111's `mask_blur`.
    pub mask_blur: Option<i64>,
    /// Inpainting: put the input's pixels back where the (blurred) mask is
    /// black, blending across its grey edge, so what was not masked comes
    /// out exactly as it went in (AUTOMATIC1111 always does this).
    pub keep_unmasked: Option<bool>,
    /// A second, larger pass over the picture (`crate::hires`).
    pub hires: Option<crate::hires::HiresRequest>,
}

/// The widest mask blur a request may ask for, in pixels.
pub const MAX_MASK_BLUR: i64 = 64;

/// How far an outpainting job extends the picture on each side, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outpaint {
    pub left: i64,
    pub right: i64,
    pub top: i64,
    pub bottom: i64,
}

/// diffusers' img2img default.
pub const DEFAULT_STRENGTH: f64 = 0.8;

/// The input image of an image-to-image job, as stored with the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitImage {
    /// SHA-256 of the normalised input PNG in the store's `inputs/`.
    pub sha256: String,
    /// 0 < strength ≤ 1: the share of the schedule that runs.
    pub strength: f64,
    /// Inpainting: SHA-256 of the stored mask (white = repaint), already
    /// blurred by `mask_blur`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_sha256: Option<String>,
    /// Inpainting: the blur the stored mask got, in pixels.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mask_blur: u32,
    /// Inpainting: the input's pixels are put back outside the mask.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_unmasked: bool,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A LoRA a job runs with: its name in the data dir's `loras/` folder
/// (without `.safetensors`), its weight, and the SHA-256 of its tensor
/// data (the file after its header, as AUTOMATIC1111 and Civitai hash
/// LoRAs) when the job was made, so a worker that finds another file under
/// that name fails the job rather than run something else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraRef {
    pub name: String,
    /// Written as the shortest decimal that reads back as this f32 (0.8,
    /// not 0.800000011920929), in the database and in every answer.
    #[serde(serialize_with = "shortest_f32")]
    pub weight: f32,
    pub sha256: String,
}

fn shortest_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    // f32's Display is the shortest text that parses back to the same f32.
    s.serialize_f64(v.to_string().parse().unwrap_or(f64::from(*v)))
}

/// A fully resolved, validated request: what the worker runs and what the
/// database stores. Per-image seeds are `seed + index`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationSpec {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance_scale: f32,
    pub num_images: u32,
    pub seed: u64,
    /// Set for image-to-image jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<InitImage>,
    /// Merged into the model for this job, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraRef>,
    /// Set for upscaling jobs (`crate::upscale`): `model` is then the
    /// upscaler's name and `steps` its tiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscale: Option<crate::upscale::UpscaleSpec>,
    /// Set for text-to-image jobs with a hires pass: each picture made at
    /// `width × height` is made larger and denoised again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hires: Option<crate::hires::HiresSpec>,
}

/// The steps an image-to-image run takes of `steps` at `strength`:
/// `int(steps · strength)`, as diffusers' `get_timesteps` keeps them.
pub fn img2img_steps(steps: u32, strength: f64) -> u32 {
    ((f64::from(steps) * strength) as u32).min(steps)
}

impl GenerationSpec {
    /// Denoising steps each image runs: all of them, or the share an
    /// image-to-image strength keeps, plus a hires pass's.
    pub fn steps_run(&self) -> u32 {
        let first = match (&self.upscale, &self.init_image) {
            (Some(_), _) | (None, None) => self.steps,
            (None, Some(init)) => img2img_steps(self.steps, init.strength),
        };
        first + self.hires.as_ref().map_or(0, |h| h.steps_run())
    }

    pub fn total_steps(&self) -> u32 {
        self.steps_run() * self.num_images
    }

    pub fn image_seed(&self, index: u32) -> u64 {
        (self.seed + u64::from(index)) & MAX_SEED
    }
}

/// Which field was wrong and why, in words meant for the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
    /// The request named a model the catalogue does not have.
    pub unknown_model: bool,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
            unknown_model: false,
        }
    }

    /// `key` is not in the catalogue; the message lists what is.
    pub fn unknown_model(catalogue: &Catalogue, key: &str) -> Self {
        let known: Vec<_> = catalogue.models().iter().map(|m| m.key.as_str()).collect();
        Self {
            field: "model",
            message: format!("unknown model {key:?}; available: {}", known.join(", ")),
            unknown_model: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_weights_are_written_as_given_and_read_back_exactly() {
        let lora = LoraRef {
            name: "fox".into(),
            weight: 0.8,
            sha256: "ab".into(),
        };
        let value = serde_json::to_value(&lora).unwrap();
        assert_eq!(value["weight"], serde_json::json!(0.8));
        assert_eq!(
            serde_json::to_string(&lora).unwrap(),
            r#"{"name":"fox","weight":0.8,"sha256":"ab"}"#
        );
        let back: LoraRef = serde_json::from_value(value).unwrap();
        assert_eq!(back, lora, "the same f32 comes back");
    }
}
