//! The FLUX.1 text-to-image pipeline (dev and schnell): the prompt read by
//! CLIP (pooled) and T5 (every token), latents packed into 2×2 patches,
//! flow-matching Euler steps of the transformer with the distilled
//! guidance (dev; there is no unconditional pass and so no negative
//! prompt), then the 16-channel VAE.
//!
//! The transformer is read from `transformer/` as a diffusers folder, a BFL
//! single file, or a GGUF file (quantized: the memory-efficient way to run
//! FLUX on a CPU).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::EngineLoadError;
use crate::models::clip::ClipTextEncoder;
use crate::models::flux::lora::FluxLoraTarget;
use crate::models::flux::weights::FluxWeights;
use crate::models::flux::{lora_target_of_shapes, FluxConfig, FluxTransformer};
use crate::models::t5::T5Encoder;
use crate::models::tokenizer::PromptTokenizer;
use crate::models::vae::VaeDecoder;
use crate::pipelines::img2img::{start_step, Keep, LazyEncoder};
use crate::pipelines::preview::{self, PreviewPixels};
use crate::pipelines::text_encoders::TextEncoders;
use crate::pipelines::StepCallback;
use crate::schedulers::flow::{FlowMatchConfig, FlowSchedule};
use crate::weights::lora::Component;
use crate::weights::lora_merge::{
    check_components, check_fit, merge_for_once, LoraPlaces, LoraTarget, LoraUse, MergedLoras,
    ParameterTable, TableTarget,
};
use crate::weights::shapes::{component_shapes, stand_ins};
use crate::weights::single_file::pointer;
use crate::weights::{component_tensors, read_config};

/// What FLUX LoRAs may adapt: the transformer and CLIP.
const REACHABLE: [Component; 2] = [Component::Denoiser, Component::TextEncoder(0)];

/// The longest T5 prompt FLUX takes (diffusers' default and maximum).
const T5_MAX_TOKENS: usize = 512;

pub struct Flux {
    encoders: TextEncoders<FluxEncoders>,
    transformer: FluxTransformer,
    transformer_loras: MergedLoras,
    vae: VaeDecoder,
    image_encoder: LazyEncoder,
    scheduler: FlowMatchConfig,
    /// How the transformer's weights were stored (safetensors layout, GGUF).
    pub transformer_format: &'static str,
    device: Device,
}

/// The prompt as FLUX sees it.
pub struct FluxConditioning {
    /// (1, tokens, joint_attention_dim)
    pub t5: Tensor,
    /// (1, pooled_projection_dim)
    pub pooled: Tensor,
}

/// CLIP for the pooled prompt, T5 for its tokens.
struct FluxEncoders {
    clip_tokenizer: PromptTokenizer,
    clip: ClipTextEncoder,
    /// CLIP's weights, which LoRAs' `lora_te1_` / `text_encoder.` layers
    /// adapt (T5's are not reached yet).
    clip_table: ParameterTable,
    t5_tokenizer: PromptTokenizer,
    t5: T5Encoder,
}

impl FluxEncoders {
    fn load(dir: &Path, device: &Device) -> Result<Self, EngineLoadError> {
        let t5_folder = dir.join("tokenizer_2");
        let t5_len = PromptTokenizer::configured_max_length(&t5_folder)
            .unwrap_or(T5_MAX_TOKENS)
            .min(T5_MAX_TOKENS);
        let (clip, clip_table) =
            ClipTextEncoder::load_with_table(&dir.join("text_encoder"), DType::F32, device)?;
        Ok(Self {
            clip_tokenizer: PromptTokenizer::load(&dir.join("tokenizer"), 77)?,
            clip,
            clip_table,
            t5_tokenizer: PromptTokenizer::load_t5(&t5_folder, t5_len)?,
            t5: T5Encoder::load(&dir.join("text_encoder_2"), DType::F32, device)?,
        })
    }

    fn tables(&self) -> Vec<(Component, &ParameterTable)> {
        vec![(Component::TextEncoder(0), &self.clip_table)]
    }

    fn encode(&self, prompt: &str, device: &Device) -> Result<FluxConditioning, EngineLoadError> {
        let clip_ids = self.clip_tokenizer.encode(prompt)?;
        let clip_ids = Tensor::from_vec(clip_ids, (1, 77), device)?;
        let t5_ids = self.t5_tokenizer.encode(prompt)?;
        let t5_len = t5_ids.len();
        let t5_ids = Tensor::from_vec(t5_ids, (1, t5_len), device)?;
        Ok(FluxConditioning {
            t5: self.t5.forward(&t5_ids)?,
            pooled: self.clip.forward(&clip_ids)?.pooled,
        })
    }
}

impl Flux {
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EngineLoadError> {
        Self::load_with(dir, device, true)
    }

    /// `keep_text_encoders: false` loads CLIP and T5 for each encoding and
    /// frees them after.
    pub fn load_with(
        dir: &Path,
        device: &Device,
        keep_text_encoders: bool,
    ) -> Result<Self, EngineLoadError> {
        let (weights, config) = load_transformer(&dir.join("transformer"), device)?;
        Ok(Self {
            encoders: TextEncoders::new(
                dir,
                device,
                keep_text_encoders,
                FluxEncoders::load,
                FluxEncoders::tables,
            )?,
            transformer: FluxTransformer::new(&weights, config)?,
            transformer_loras: MergedLoras::default(),
            vae: VaeDecoder::load(&dir.join("vae"), DType::F32, device)?,
            image_encoder: LazyEncoder::new(dir.join("vae"), device),
            scheduler: read_config(&dir.join("scheduler/scheduler_config.json"))?,
            transformer_format: weights.format,
            device: device.clone(),
        })
    }

    pub fn latent_channels(&self) -> usize {
        self.vae.config.latent_channels
    }

    pub fn latent_factor(&self) -> usize {
        1 << (self.vae.config.block_out_channels.len() - 1)
    }

    pub fn uses_guidance(&self) -> bool {
        self.transformer.config.guidance_embeds
    }

    pub fn encode_prompt(&self, prompt: &str) -> Result<FluxConditioning, EngineLoadError> {
        self.encoders.with(|e| e.encode(prompt, &self.device))
    }

    /// Encodes with the folder's CLIP and T5 alone, loaded for this call
    /// (with `loras` merged) and freed after: the transformer need not be
    /// resident.
    pub fn encode_alone(
        dir: &Path,
        device: &Device,
        prompt: &str,
        loras: &[LoraUse],
    ) -> Result<FluxConditioning, EngineLoadError> {
        check_components(&REACHABLE, loras)?;
        let encoders = FluxEncoders::load(dir, device)?;
        merge_for_once(&encoders.tables(), loras)?;
        encoders.encode(prompt, device)
    }

    /// Whether `set` fits the model in `dir` (the transformer and CLIP, by
    /// their files' headers) without loading it.
    pub fn check_loras_in(dir: &Path, set: &[LoraUse]) -> Result<(), EngineLoadError> {
        check_components(&REACHABLE, set)?;
        let transformer = transformer_lora_shapes(&dir.join("transformer"))?;
        let clip = TableTarget::new(component_shapes(&dir.join("text_encoder"))?);
        check_fit(
            &[
                (Component::Denoiser, &transformer as &dyn LoraPlaces),
                (Component::TextEncoder(0), &clip),
            ],
            set,
        )
    }

    /// Merges `set` into the transformer (a branch beside each quantized
    /// weight) and CLIP, in place of the LoRAs before; on an error none
    /// stays merged.
    pub fn set_loras(&mut self, set: &[LoraUse]) -> Result<(), EngineLoadError> {
        check_components(&REACHABLE, set)?;
        let target = [(
            Component::Denoiser,
            self.transformer.lora_target() as &dyn LoraTarget,
        )];
        let encoders = &mut self.encoders;
        self.transformer_loras
            .set_then(&target, set, || encoders.set_loras(set))
    }

    /// A weight as the model runs it now (LoRAs merged): the transformer's
    /// by its diffusers or BFL name (`….weight`), CLIP's by its own. For
    /// tests and diagnostics.
    pub fn parameter(&self, component: Component, name: &str) -> Option<Tensor> {
        match component {
            Component::Denoiser => self
                .transformer
                .lora_target()
                .weight_as(name.strip_suffix(".weight")?),
            Component::TextEncoder(0) => self
                .encoders
                .with(|e| Ok(e.clip_table.get(name).cloned()))
                .ok()
                .flatten(),
            Component::TextEncoder(_) => None,
        }
    }

    /// The transformer's linears as LoRAs reach them (for tests and
    /// diagnostics).
    pub fn lora_target(&self) -> &crate::models::flux::lora::FluxLoraTarget {
        self.transformer.lora_target()
    }

    /// The schedule for `steps` steps on latents of (rows, cols) patches.
    pub fn schedule(&self, steps: usize, patches: usize) -> Result<FlowSchedule, EngineLoadError> {
        FlowSchedule::flux(&self.scheduler, steps, patches)
    }

    /// Denoises `noise` (1, c, h, w) and returns the final unpacked
    /// latents, or `None` when `on_step` stopped the run.
    pub fn denoise(
        &self,
        cond: &FluxConditioning,
        noise: &Tensor,
        steps: usize,
        guidance: f64,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let (_, _, h, w) = noise.dims4()?;
        let schedule = self.schedule(steps, (h / 2) * (w / 2))?;
        self.denoise_from(&schedule, cond, noise, 0, None, guidance, on_step)
    }

    /// Image-to-image: `clean` latents (unpacked) noised with
    /// `start_noise` to the first step `strength` keeps, then denoised
    /// from there (diffusers' `FluxImg2ImgPipeline`).
    /// With `mask`, inpainting (diffusers' `FluxInpaintPipeline`).
    #[allow(clippy::too_many_arguments)]
    pub fn denoise_image(
        &self,
        cond: &FluxConditioning,
        clean: &Tensor,
        start_noise: &Tensor,
        mask: Option<&Tensor>,
        steps: usize,
        strength: f64,
        guidance: f64,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let (_, _, h, w) = clean.dims4()?;
        let schedule = self.schedule(steps, (h / 2) * (w / 2))?;
        let start = start_step(steps, strength)?;
        let latents = schedule.noised(clean, start_noise, start)?;
        let keep = mask.map(|mask| Keep {
            clean,
            noise: start_noise,
            mask,
        });
        self.denoise_from(
            &schedule,
            cond,
            &latents,
            start,
            keep.as_ref(),
            guidance,
            on_step,
        )
    }

    /// The VAE encoder image-to-image encodes its input with (loaded on
    /// first use).
    pub fn image_encoder(&self) -> &LazyEncoder {
        &self.image_encoder
    }

    #[allow(clippy::too_many_arguments)]
    fn denoise_from(
        &self,
        schedule: &FlowSchedule,
        cond: &FluxConditioning,
        latents: &Tensor,
        start: usize,
        keep: Option<&Keep>,
        guidance: f64,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let (_, _, h, w) = latents.dims4()?;
        let (rows, cols) = (h / 2, w / 2);
        let rope = self
            .transformer
            .rope(cond.t5.dim(1)?, rows, cols, &self.device)?;
        let mut latents = pack(latents)?;
        for i in start..schedule.steps() {
            let velocity = self.transformer.forward(
                &latents,
                &cond.t5,
                &cond.pooled,
                schedule.sigma(i),
                guidance,
                &rope,
            )?;
            latents = schedule.step(&velocity, i, &latents)?;
            if let Some(keep) = keep {
                // Unpacked, blended, packed again: the same numbers as
                // blending packed tensors, which is what diffusers does.
                let unpacked = unpack(&latents, h, w)?;
                latents = pack(&keep.after_step(
                    &unpacked,
                    i + 1,
                    schedule.steps(),
                    |x, n, j| schedule.noised(x, n, j),
                )?)?;
            }
            if !on_step(i + 1 - start, &latents) {
                return Ok(None);
            }
        }
        Ok(Some(unpack(&latents, h, w)?))
    }

    /// A live preview of step latents, packed as the transformer steps
    /// them, for latents of height `h` and width `w`.
    pub fn preview(
        &self,
        packed: &Tensor,
        h: usize,
        w: usize,
        decoder: Option<&preview::PreviewDecoder>,
    ) -> Result<PreviewPixels, EngineLoadError> {
        preview::preview_pixels(&unpack(packed, h, w)?, &preview::FLUX, decoder)
    }

    /// Unpacked latents → (h, w, 3) floats in [0, 1].
    pub fn decode_unit(&self, latents: &Tensor) -> Result<Tensor, EngineLoadError> {
        Ok(self.vae.decode_unit(latents)?)
    }
}

/// (1, c, h, w) → (1, h/2 · w/2, 4c): each 2×2 patch becomes one token.
pub fn pack(latents: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    latents
        .reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, (h / 2) * (w / 2), c * 4))
}

/// The inverse of `pack` for latents of height `h` and width `w`.
pub fn unpack(tokens: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
    let (b, _, c4) = tokens.dims3()?;
    let c = c4 / 4;
    tokens
        .reshape((b, h / 2, w / 2, c, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((b, c, h, w))
}

/// The transformer's weights from `folder`: a `*.gguf` file if there is
/// one (or its single-file pointer names one), else its safetensors or the
/// file its pointer names (diffusers or BFL layout, told apart by their
/// names). `config.json` gives the sizes when present.
pub fn load_transformer(
    folder: &Path,
    device: &Device,
) -> Result<(FluxWeights, FluxConfig), EngineLoadError> {
    transformer_from(
        folder,
        |gguf| FluxWeights::from_gguf(gguf, device),
        |folder| component_tensors(folder, device, DType::F32),
        device,
    )
}

/// The transformer's linears as LoRAs reach them, from its files' headers
/// alone (the same layouts `load_transformer` reads, over data-less
/// stand-ins): what a LoRA is checked against before its job is queued.
pub fn transformer_lora_shapes(folder: &Path) -> Result<FluxLoraTarget, EngineLoadError> {
    let (weights, config) = transformer_from(
        folder,
        FluxWeights::gguf_shapes,
        |folder| stand_ins(&component_shapes(folder)?),
        &Device::Cpu,
    )?;
    Ok(lora_target_of_shapes(&weights, &config))
}

fn transformer_from(
    folder: &Path,
    read_gguf: impl FnOnce(&Path) -> Result<FluxWeights, EngineLoadError>,
    read_safetensors: impl FnOnce(&Path) -> Result<HashMap<String, Tensor>, EngineLoadError>,
    device: &Device,
) -> Result<(FluxWeights, FluxConfig), EngineLoadError> {
    let is_gguf = |p: &Path| p.extension().is_some_and(|e| e == "gguf");
    let gguf: Option<PathBuf> = match pointer(folder)? {
        Some(part) => is_gguf(&part.file).then_some(part.file),
        None => std::fs::read_dir(folder)
            .map_err(|source| EngineLoadError::Io {
                path: folder.to_path_buf(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| is_gguf(p)),
    };
    let weights = match gguf {
        Some(file) => read_gguf(&file)?,
        None => {
            let tensors = read_safetensors(folder)?;
            if tensors.contains_key("x_embedder.weight") {
                FluxWeights::from_diffusers(tensors, device)?
            } else {
                FluxWeights::from_bfl(tensors, device)
            }
        }
    };
    let config_file = folder.join("config.json");
    let config = if config_file.exists() {
        read_config(&config_file)?
    } else {
        FluxConfig::infer(&weights)?
    };
    Ok((weights, config))
}
