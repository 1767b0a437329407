//! The Stable Diffusion text-to-image pipeline for SD 1.x/2.x (SD-Turbo
//! included) and SDXL: CLIP conditioning (SDXL: two encoders' penultimate
//! states side by side, the second's pooled output and the size
//! micro-conditioning), classifier-free guidance (skipped at guidance <= 1,
//! as diffusers does), the model's scheduler (DDIM, Euler, Euler-ancestral),
//! VAE decoding.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::EngineLoadError;
use crate::models::clip::ClipTextEncoder;
use crate::models::tokenizer::PromptTokenizer;
use crate::models::unet::{AddedConditioning, UNet};
use crate::models::vae::VaeDecoder;
use crate::pipelines::img2img::{start_step, Keep, LazyEncoder};
use crate::pipelines::preview::{self, PreviewPixels};
use crate::pipelines::text_encoders::TextEncoders;
use crate::pipelines::StepCallback;
use crate::schedulers::{Scheduler, SchedulerConfig};
use crate::weights::lora::Component;
use crate::weights::lora_merge::{self, merge_for_once, LoraUse, MergedLoras, ParameterTable};
use crate::weights::read_config;
use crate::weights::shapes::component_shapes;

pub struct StableDiffusion {
    /// `tokenizer` + `text_encoder`, then SDXL's `tokenizer_2` +
    /// `text_encoder_2`.
    encoders: TextEncoders<Vec<Encoder>>,
    unet: UNet,
    /// The UNet's weights by name (shared with it), and the LoRAs merged in.
    unet_table: ParameterTable,
    unet_loras: MergedLoras,
    vae: VaeDecoder,
    image_encoder: LazyEncoder,
    scheduler_config: SchedulerConfig,
    /// SDXL: no negative prompt means zero negative conditioning rather
    /// than the encoding of "".
    force_zeros_for_empty_prompt: bool,
    device: Device,
}

/// What the denoiser is conditioned on, in CFG order (uncond, cond), or
/// the prompt's row alone when the run is not guided.
pub struct Conditioning {
    /// (2, tokens, dim), or (1, tokens, dim) unguided.
    pub context: Tensor,
    /// SDXL: (rows, projection_dim) pooled text.
    pub pooled: Option<Tensor>,
}

/// Like diffusers: classifier-free guidance only above 1 (at or below,
/// one UNet pass on the prompt alone; SD-Turbo runs at guidance 0).
fn is_guided(guidance: f64) -> bool {
    guidance > 1.0
}

impl Conditioning {
    /// The (first row, rows) a run at `guidance` reads: both when guided,
    /// else only the prompt's, the last.
    fn rows_for(&self, guidance: f64) -> Result<(usize, usize), EngineLoadError> {
        let rows = self.context.dim(0)?;
        if !is_guided(guidance) {
            return Ok((rows - 1, 1));
        }
        if rows != 2 {
            return Err(EngineLoadError::Unsupported(format!(
                "guidance {guidance} needs the negative prompt encoded too; \
                 this conditioning holds only the prompt"
            )));
        }
        Ok((0, 2))
    }
}

/// The fresh noise an ancestral scheduler adds at a step (0-based), shaped
/// like the latents.
pub type StepNoise<'a> = dyn FnMut(usize) -> candle_core::Result<Tensor> + 'a;

/// A tokenizer, its encoder, and the encoder's weights by name.
type Encoder = (PromptTokenizer, ClipTextEncoder, ParameterTable);

/// How a model reads its prompt.
struct TextSettings {
    /// Penultimate states of both encoders and the second's pooled output.
    sdxl: bool,
    force_zeros_for_empty_prompt: bool,
}

/// The prompt and the negative prompt (`None`: "" — or zeros where the
/// model says so, as diffusers does) as (uncond, cond) conditioning; when
/// not `guided`, the prompt alone (an unguided run never reads the
/// negative half, and encoding it costs as much as the prompt).
fn encode_with(
    encoders: &[Encoder],
    text: &TextSettings,
    device: &Device,
    prompt: &str,
    negative: Option<&str>,
    guided: bool,
) -> Result<Conditioning, EngineLoadError> {
    let zero_negative = guided && negative.is_none() && text.force_zeros_for_empty_prompt;
    let negative = negative.unwrap_or("");
    let texts: &[&str] = if guided {
        &[negative, prompt]
    } else {
        &[prompt]
    };
    let mut contexts = Vec::new();
    let mut pooled = None;
    for (tokenizer, encoder, _) in encoders {
        let ids: Vec<u32> = texts
            .iter()
            .map(|p| tokenizer.encode(p))
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        let out = encoder.forward(&Tensor::from_vec(ids, (texts.len(), 77), device)?)?;
        if text.sdxl {
            contexts.push(out.penultimate_hidden_state);
            // Only the last encoder's pooled output is used.
            pooled = Some(out.pooled);
        } else {
            contexts.push(out.last_hidden_state);
        }
    }
    let mut context = Tensor::cat(&contexts, 2)?;
    if zero_negative {
        let zero_first = |t: Tensor| -> candle_core::Result<Tensor> {
            Tensor::cat(&[&t.narrow(0, 0, 1)?.zeros_like()?, &t.narrow(0, 1, 1)?], 0)
        };
        context = zero_first(context)?;
        pooled = pooled.map(zero_first).transpose()?;
    }
    Ok(Conditioning { context, pooled })
}

/// (tokenizer, text encoder) folders, in the order their states are joined.
const ENCODERS: [(&str, &str); 2] = [
    ("tokenizer", "text_encoder"),
    ("tokenizer_2", "text_encoder_2"),
];

fn load_encoders(dir: &Path, device: &Device) -> Result<Vec<Encoder>, EngineLoadError> {
    ENCODERS
        .iter()
        .filter(|(_, encoder)| dir.join(encoder).is_dir())
        .map(|(tokenizer, encoder)| {
            let (model, table) =
                ClipTextEncoder::load_with_table(&dir.join(encoder), DType::F32, device)?;
            Ok((
                PromptTokenizer::load(&dir.join(tokenizer), 77)?,
                model,
                table,
            ))
        })
        .collect()
}

/// The denoiser and the model's text encoders take LoRAs.
fn check_components(text_encoders: usize, set: &[LoraUse]) -> Result<(), EngineLoadError> {
    let reachable: Vec<Component> = std::iter::once(Component::Denoiser)
        .chain((0..text_encoders).map(Component::TextEncoder))
        .collect();
    lora_merge::check_components(&reachable, set)
}

/// The encoders' tables: the first is LoRA's `text_encoder` (kohya's
/// `lora_te`/`lora_te1`), SDXL's second its `text_encoder_2` (`lora_te2`).
#[allow(clippy::ptr_arg)] // it is a `Tables<Vec<Encoder>>`, which takes `&Vec`
fn encoder_tables(encoders: &Vec<Encoder>) -> Vec<(Component, &ParameterTable)> {
    encoders
        .iter()
        .enumerate()
        .map(|(i, (_, _, table))| (Component::TextEncoder(i), table))
        .collect()
}

#[derive(Deserialize)]
struct ModelIndex {
    #[serde(default)]
    force_zeros_for_empty_prompt: bool,
}

/// What inpainting adds to the denoising loop.
enum Inpainting<'a> {
    None,
    /// A 4-channel UNet: the kept part blended back after each step.
    Blend(Keep<'a>),
    /// An inpainting UNet: mask and masked-image latents as extra input.
    Condition(&'a Tensor),
}

impl StableDiffusion {
    /// Loads a diffusers folder (`model_index.json` beside the components).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EngineLoadError> {
        Self::load_with(dir, device, true)
    }

    /// `keep_text_encoders: false` loads the encoders for each encoding
    /// and frees them after.
    pub fn load_with(
        dir: &Path,
        device: &Device,
        keep_text_encoders: bool,
    ) -> Result<Self, EngineLoadError> {
        let index: ModelIndex = read_config(&dir.join("model_index.json"))?;
        let (unet, unet_table) = UNet::load_with_table(&dir.join("unet"), DType::F32, device)?;
        let found = ENCODERS
            .iter()
            .filter(|(_, encoder)| dir.join(encoder).is_dir())
            .count();
        if found == 0 || (unet.needs_added_conditioning() && found < 2) {
            return Err(EngineLoadError::Unsupported(format!(
                "{}: {found} text encoder(s) found, the UNet needs {}",
                dir.display(),
                if unet.needs_added_conditioning() {
                    2
                } else {
                    1
                }
            )));
        }
        Ok(Self {
            encoders: TextEncoders::new(
                dir,
                device,
                keep_text_encoders,
                load_encoders,
                encoder_tables,
            )?,
            unet,
            unet_table,
            unet_loras: MergedLoras::default(),
            vae: VaeDecoder::load(&dir.join("vae"), DType::F32, device)?,
            image_encoder: LazyEncoder::new(dir.join("vae"), device),
            scheduler_config: read_config(&dir.join("scheduler/scheduler_config.json"))?,
            force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt,
            device: device.clone(),
        })
    }

    /// Runs with `config` instead of the folder's scheduler (the same
    /// weights under another sampler).
    pub fn with_scheduler(mut self, config: SchedulerConfig) -> Self {
        self.scheduler_config = config;
        self
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// VAE downsampling factor: 2^(blocks - 1), 8 for every real SD model.
    pub fn latent_factor(&self) -> usize {
        1 << (self.vae.config.block_out_channels.len() - 1)
    }

    pub fn latent_channels(&self) -> usize {
        self.vae.config.latent_channels
    }

    fn is_sdxl(&self) -> bool {
        self.unet.needs_added_conditioning()
    }

    /// Encodes the prompt and the negative prompt (`None`: "" — or, for
    /// SDXL, zeros — as diffusers does).
    pub fn encode_prompts(
        &self,
        prompt: &str,
        negative: Option<&str>,
    ) -> Result<Conditioning, EngineLoadError> {
        self.encode_for_guidance(prompt, negative, f64::INFINITY)
    }

    /// What a run at `guidance` reads: as `encode_prompts` with
    /// classifier-free guidance (> 1), else the prompt alone.
    pub fn encode_for_guidance(
        &self,
        prompt: &str,
        negative: Option<&str>,
        guidance: f64,
    ) -> Result<Conditioning, EngineLoadError> {
        let text = TextSettings {
            sdxl: self.is_sdxl(),
            force_zeros_for_empty_prompt: self.force_zeros_for_empty_prompt,
        };
        self.encoders.with(|encoders| {
            encode_with(
                encoders,
                &text,
                &self.device,
                prompt,
                negative,
                is_guided(guidance),
            )
        })
    }

    /// As `encode_for_guidance`, with the folder's text encoders alone,
    /// loaded for this call and freed after: nothing else of the model
    /// needs to be resident.
    pub fn encode_alone(
        dir: &Path,
        device: &Device,
        prompt: &str,
        negative: Option<&str>,
        guidance: f64,
        loras: &[LoraUse],
    ) -> Result<Conditioning, EngineLoadError> {
        let index: ModelIndex = read_config(&dir.join("model_index.json"))?;
        let unet: crate::models::unet::UNetConfig = read_config(&dir.join("unet/config.json"))?;
        let text = TextSettings {
            sdxl: unet.addition_embed_type.as_deref() == Some("text_time"),
            force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt,
        };
        let encoders = load_encoders(dir, device)?;
        check_components(encoders.len(), loras)?;
        merge_for_once(&encoder_tables(&encoders), loras)?;
        encode_with(
            &encoders,
            &text,
            device,
            prompt,
            negative,
            is_guided(guidance),
        )
    }

    /// Whether `set` fits the model in `dir` (its UNet and text encoders,
    /// by their files' headers) without loading it: what merging it would
    /// refuse, refused before a job is queued.
    pub fn check_loras_in(dir: &Path, set: &[LoraUse]) -> Result<(), EngineLoadError> {
        let mut tables = vec![(Component::Denoiser, component_shapes(&dir.join("unet"))?)];
        for (_, encoder) in ENCODERS.iter().filter(|(_, e)| dir.join(e).is_dir()) {
            let index = tables.len() - 1;
            tables.push((
                Component::TextEncoder(index),
                component_shapes(&dir.join(encoder))?,
            ));
        }
        check_components(tables.len() - 1, set)?;
        lora_merge::check_tables(&tables, set)
    }

    /// A weight as the model runs it now (LoRAs merged), by component and
    /// name: for tests and diagnostics.
    pub fn parameter(&self, component: Component, name: &str) -> Option<Tensor> {
        match component {
            Component::Denoiser => self.unet_table.get(name).cloned(),
            Component::TextEncoder(i) => self
                .encoders
                .with(|encoders| Ok(encoders.get(i).and_then(|(_, _, t)| t.get(name).cloned())))
                .ok()
                .flatten(),
        }
    }

    /// Merges `set` into the UNet and the text encoders (in place of the
    /// LoRAs merged before; none when empty). On an error none is merged.
    pub fn set_loras(&mut self, set: &[LoraUse]) -> Result<(), EngineLoadError> {
        check_components(if self.is_sdxl() { 2 } else { 1 }, set)?;
        let unet = lora_merge::TableTarget::new(&self.unet_table);
        let encoders = &mut self.encoders;
        self.unet_loras.set_then(
            &[(Component::Denoiser, &unet as &dyn lora_merge::LoraTarget)],
            set,
            || encoders.set_loras(set),
        )
    }

    /// The scheduler this model runs `steps` steps with.
    pub fn scheduler(&self, steps: usize) -> Result<Scheduler, EngineLoadError> {
        Scheduler::new(&self.scheduler_config, steps)
    }

    /// SDXL's added conditioning for `rows` of `cond` (a narrow of the CFG
    /// batch): the pooled text, and the image size as both original and
    /// target size with no crop.
    fn added_conditioning(
        &self,
        cond: &Conditioning,
        first_row: usize,
        rows: usize,
        latents: &Tensor,
    ) -> Result<Option<AddedConditioning>, EngineLoadError> {
        let Some(pooled) = &cond.pooled else {
            return Ok(None);
        };
        let factor = self.latent_factor() as f32;
        let (_, _, h, w) = latents.dims4()?;
        let (h, w) = (h as f32 * factor, w as f32 * factor);
        let time_ids = Tensor::new(&[[h, w, 0.0, 0.0, h, w]], &self.device)?.repeat((rows, 1))?;
        Ok(Some(AddedConditioning {
            text_embeds: pooled.narrow(0, first_row, rows)?,
            time_ids,
        }))
    }

    /// Denoises `latents` (1, c, h, w) for `steps` steps of the model's
    /// scheduler with guidance `guidance`. Returns the final latents, or
    /// `None` when `on_step` stopped the run.
    pub fn denoise(
        &self,
        cond: &Conditioning,
        latents: Tensor,
        steps: usize,
        guidance: f64,
        noise: &mut StepNoise,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let scheduler = self.scheduler(steps)?;
        let latents = (latents * scheduler.init_noise_sigma())?;
        self.denoise_from(
            &scheduler,
            cond,
            latents,
            0,
            Inpainting::None,
            guidance,
            noise,
            on_step,
        )
    }

    /// Image-to-image: `clean` latents of the input image, noised with
    /// `start_noise` to the first step `strength` keeps, then denoised
    /// from there (diffusers' img2img pipelines). With `mask`, inpainting:
    /// after each step the unmasked part is put back at the next step's
    /// noise level (diffusers' inpaint pipelines, 4-channel UNets), and
    /// strength 1 starts from pure noise.
    #[allow(clippy::too_many_arguments)]
    pub fn denoise_image(
        &self,
        cond: &Conditioning,
        clean: &Tensor,
        start_noise: &Tensor,
        mask: Option<&Tensor>,
        steps: usize,
        strength: f64,
        guidance: f64,
        noise: &mut StepNoise,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let scheduler = self.scheduler(steps)?;
        let start = start_step(steps, strength)?;
        let latents = if mask.is_some() && strength >= 1.0 {
            (start_noise * scheduler.init_noise_sigma())?
        } else {
            scheduler.add_noise(clean, start_noise, start)?
        };
        let inpainting = match mask {
            Some(mask) => Inpainting::Blend(Keep {
                clean,
                noise: start_noise,
                mask,
            }),
            None => Inpainting::None,
        };
        self.denoise_from(
            &scheduler, cond, latents, start, inpainting, guidance, noise, on_step,
        )
    }

    /// The latent channels the UNet takes beside the latents: 5 for an
    /// inpainting UNet (the mask, then the masked image's latents, as SD
    /// 1.5 / SDXL inpainting checkpoints have them), 0 otherwise.
    pub fn conditioning_channels(&self) -> usize {
        self.unet.config.in_channels - self.latent_channels()
    }

    /// Inpainting with an inpainting UNet (diffusers'
    /// `StableDiffusionInpaintPipeline` when the UNet has 9 input
    /// channels): `conditioning` (1, 5, h, w) — the latent-size mask and
    /// the masked image's latents — goes in beside the latents at every
    /// step, and nothing is blended back. Starts from `clean` noised to
    /// the step `strength` keeps, or from pure noise at strength 1 (or
    /// with no input image: text-to-image on an inpainting model).
    #[allow(clippy::too_many_arguments)]
    pub fn denoise_conditioned(
        &self,
        cond: &Conditioning,
        clean: Option<&Tensor>,
        start_noise: &Tensor,
        conditioning: &Tensor,
        steps: usize,
        strength: f64,
        guidance: f64,
        noise: &mut StepNoise,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let scheduler = self.scheduler(steps)?;
        let (start, latents) = match clean {
            Some(clean) if strength < 1.0 => {
                let start = start_step(steps, strength)?;
                (start, scheduler.add_noise(clean, start_noise, start)?)
            }
            _ => (
                start_step(steps, strength.min(1.0))?,
                (start_noise * scheduler.init_noise_sigma())?,
            ),
        };
        self.denoise_from(
            &scheduler,
            cond,
            latents,
            start,
            Inpainting::Condition(conditioning),
            guidance,
            noise,
            on_step,
        )
    }

    /// The VAE encoder image-to-image encodes its input with (loaded on
    /// first use).
    pub fn image_encoder(&self) -> &LazyEncoder {
        &self.image_encoder
    }

    /// The scheduler's steps from `start` on; `on_step` counts the steps
    /// of this run.
    #[allow(clippy::too_many_arguments)]
    fn denoise_from(
        &self,
        scheduler: &Scheduler,
        cond: &Conditioning,
        latents: Tensor,
        start: usize,
        inpainting: Inpainting,
        guidance: f64,
        noise: &mut StepNoise,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let cfg = is_guided(guidance);
        let (first_row, rows) = cond.rows_for(guidance)?;
        let context = cond.context.narrow(0, first_row, rows)?;
        let added = self.added_conditioning(cond, first_row, rows, &latents)?;
        let mut latents = latents;
        for (i, &t) in scheduler.timesteps().iter().enumerate().skip(start) {
            let scaled = match &inpainting {
                Inpainting::Condition(extra) => {
                    Tensor::cat(&[&scheduler.scale_model_input(&latents, i)?, *extra], 1)?
                }
                _ => scheduler.scale_model_input(&latents, i)?,
            };
            let guided = if cfg {
                let input = Tensor::cat(&[&scaled, &scaled], 0)?;
                let eps = self.unet.forward(&input, t, &context, added.as_ref())?;
                let uncond = eps.narrow(0, 0, 1)?;
                let cond = eps.narrow(0, 1, 1)?;
                (&uncond + ((cond - &uncond)? * guidance)?)?
            } else {
                self.unet.forward(&scaled, t, &context, added.as_ref())?
            };
            let step_noise = if scheduler.needs_noise() {
                Some(noise(i)?)
            } else {
                None
            };
            latents = scheduler.step(&guided, i, &latents, step_noise.as_ref())?;
            if let Inpainting::Blend(keep) = &inpainting {
                latents =
                    keep.after_step(&latents, i + 1, scheduler.timesteps().len(), |x, n, j| {
                        scheduler.add_noise(x, n, j)
                    })?;
            }
            if !on_step(i + 1 - start, &latents) {
                return Ok(None);
            }
        }
        Ok(Some(latents))
    }

    /// A live preview of step latents.
    pub fn preview(
        &self,
        latents: &Tensor,
        decoder: Option<&preview::PreviewDecoder>,
    ) -> Result<PreviewPixels, EngineLoadError> {
        let table = if self.is_sdxl() {
            &preview::SDXL
        } else {
            &preview::SD15
        };
        preview::preview_pixels(latents, table, decoder)
    }

    /// Latents → (h, w, 3) floats in [0, 1], diffusers' `output_type="np"`.
    pub fn decode_unit(&self, latents: &Tensor) -> Result<Tensor, EngineLoadError> {
        Ok(self.vae.decode_unit(latents)?)
    }
}
