//! The Stable Diffusion 3 / 3.5 text-to-image pipeline: the prompt read by
//! CLIP-L and CLIP-G (penultimate states side by side, zero-padded to the
//! T5 width, and their pooled outputs joined) and by T5 (its states
//! appended after CLIP's), classifier-free guidance with the negative
//! prompt ("" when none is given), flow-matching Euler with the
//! scheduler's fixed shift, the MMDiT, and the 16-channel VAE.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::EngineLoadError;
use crate::models::clip::ClipTextEncoder;
use crate::models::mmdit::Mmdit;
use crate::models::mmdit_lora::MmditLoraTarget;
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
use crate::weights::read_config;
use crate::weights::shapes::component_shapes;

/// What SD 3 LoRAs may adapt: the MMDiT and both CLIP encoders.
const REACHABLE: [Component; 3] = [
    Component::Denoiser,
    Component::TextEncoder(0),
    Component::TextEncoder(1),
];

/// SD3's default (and usual) T5 prompt length.
const T5_TOKENS: usize = 256;

pub struct Sd3 {
    encoders: TextEncoders<Sd3Encoders>,
    transformer: Mmdit,
    transformer_lora: MmditLoraTarget,
    transformer_loras: MergedLoras,
    vae: VaeDecoder,
    image_encoder: LazyEncoder,
    scheduler: FlowMatchConfig,
    device: Device,
}

/// (uncond, cond) conditioning.
pub struct Sd3Conditioning {
    /// (2, 77 + T5 tokens, joint_attention_dim)
    pub context: Tensor,
    /// (2, pooled_projection_dim)
    pub pooled: Tensor,
}

struct Sd3Encoders {
    clip_l: (PromptTokenizer, ClipTextEncoder),
    clip_g: (PromptTokenizer, ClipTextEncoder),
    /// CLIP-L's and CLIP-G's weights, which LoRAs' `text_encoder` /
    /// `text_encoder_2` (`lora_te1_` / `lora_te2_`) layers adapt (T5's are
    /// not reached yet).
    clip_tables: [ParameterTable; 2],
    /// Absent when a checkpoint ships without T5: zeros stand in, as in
    /// diffusers.
    t5: Option<(PromptTokenizer, T5Encoder)>,
    t5_tokens: usize,
}

impl Sd3Encoders {
    fn load(dir: &Path, device: &Device) -> Result<Self, EngineLoadError> {
        let clip = |tokenizer: &str, encoder: &str| -> Result<_, EngineLoadError> {
            let (model, table) =
                ClipTextEncoder::load_with_table(&dir.join(encoder), DType::F32, device)?;
            Ok((
                (PromptTokenizer::load(&dir.join(tokenizer), 77)?, model),
                table,
            ))
        };
        let t5_folder = dir.join("tokenizer_3");
        let t5_tokens = PromptTokenizer::configured_max_length(&t5_folder)
            .unwrap_or(T5_TOKENS)
            .min(T5_TOKENS);
        let t5 = if dir.join("text_encoder_3").is_dir() {
            Some((
                PromptTokenizer::load_t5(&t5_folder, t5_tokens)?,
                T5Encoder::load(&dir.join("text_encoder_3"), DType::F32, device)?,
            ))
        } else {
            None
        };
        let (clip_l, l_table) = clip("tokenizer", "text_encoder")?;
        let (clip_g, g_table) = clip("tokenizer_2", "text_encoder_2")?;
        Ok(Self {
            clip_l,
            clip_g,
            clip_tables: [l_table, g_table],
            t5,
            t5_tokens,
        })
    }

    fn tables(&self) -> Vec<(Component, &ParameterTable)> {
        vec![
            (Component::TextEncoder(0), &self.clip_tables[0]),
            (Component::TextEncoder(1), &self.clip_tables[1]),
        ]
    }
    fn encode(
        &self,
        joint: usize,
        device: &Device,
        prompt: &str,
        negative: Option<&str>,
    ) -> Result<Sd3Conditioning, EngineLoadError> {
        let texts = [negative.unwrap_or(""), prompt];
        let ids = |tokenizer: &PromptTokenizer| -> Result<Tensor, EngineLoadError> {
            let rows = texts
                .iter()
                .map(|t| tokenizer.encode(t))
                .collect::<Result<Vec<_>, _>>()?;
            let len = rows[0].len();
            Ok(Tensor::from_vec(rows.concat(), (2, len), device)?)
        };
        let l = self.clip_l.1.forward(&ids(&self.clip_l.0)?)?;
        let g = self.clip_g.1.forward(&ids(&self.clip_g.0)?)?;
        let t5 = match &self.t5 {
            Some((tokenizer, encoder)) => encoder.forward(&ids(tokenizer)?)?,
            None => Tensor::zeros((2, self.t5_tokens, joint), DType::F32, device)?,
        };
        let clip = Tensor::cat(
            &[&l.penultimate_hidden_state, &g.penultimate_hidden_state],
            2,
        )?;
        let width = clip.dim(2)?;
        if width > joint {
            return Err(EngineLoadError::Unsupported(format!(
                "CLIP states of width {width} do not fit the transformer's {joint}"
            )));
        }
        let clip = clip.pad_with_zeros(2, 0, joint - width)?;
        Ok(Sd3Conditioning {
            context: Tensor::cat(&[&clip, &t5], 1)?,
            pooled: Tensor::cat(&[&l.pooled, &g.pooled], 1)?,
        })
    }
}

impl Sd3 {
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EngineLoadError> {
        Self::load_with(dir, device, true)
    }

    /// `keep_text_encoders: false` loads the three encoders for each
    /// encoding and frees them after.
    pub fn load_with(
        dir: &Path,
        device: &Device,
        keep_text_encoders: bool,
    ) -> Result<Self, EngineLoadError> {
        let (transformer, table) =
            Mmdit::load_with_table(&dir.join("transformer"), DType::F32, device)?;
        Ok(Self {
            encoders: TextEncoders::new(
                dir,
                device,
                keep_text_encoders,
                Sd3Encoders::load,
                Sd3Encoders::tables,
            )?,
            transformer,
            transformer_lora: MmditLoraTarget::new(table),
            transformer_loras: MergedLoras::default(),
            vae: VaeDecoder::load(&dir.join("vae"), DType::F32, device)?,
            image_encoder: LazyEncoder::new(dir.join("vae"), device),
            scheduler: read_config(&dir.join("scheduler/scheduler_config.json"))?,
            device: device.clone(),
        })
    }

    pub fn latent_channels(&self) -> usize {
        self.vae.config.latent_channels
    }

    pub fn latent_factor(&self) -> usize {
        1 << (self.vae.config.block_out_channels.len() - 1)
    }

    pub fn encode_prompts(
        &self,
        prompt: &str,
        negative: Option<&str>,
    ) -> Result<Sd3Conditioning, EngineLoadError> {
        let joint = self.transformer.config.joint_attention_dim;
        self.encoders
            .with(|e| e.encode(joint, &self.device, prompt, negative))
    }

    /// Encodes with the folder's three text encoders alone, loaded for
    /// this call and freed after: the MMDiT need not be resident.
    pub fn encode_alone(
        dir: &Path,
        device: &Device,
        prompt: &str,
        negative: Option<&str>,
        loras: &[LoraUse],
    ) -> Result<Sd3Conditioning, EngineLoadError> {
        check_components(&REACHABLE, loras)?;
        let config: crate::models::mmdit::MmditConfig =
            read_config(&dir.join("transformer/config.json"))?;
        let encoders = Sd3Encoders::load(dir, device)?;
        merge_for_once(&encoders.tables(), loras)?;
        encoders.encode(config.joint_attention_dim, device, prompt, negative)
    }

    /// Whether `set` fits the model in `dir` (the MMDiT and both CLIP
    /// encoders, by their files' headers) without loading it.
    pub fn check_loras_in(dir: &Path, set: &[LoraUse]) -> Result<(), EngineLoadError> {
        check_components(&REACHABLE, set)?;
        let mmdit = MmditLoraTarget::new(component_shapes(&dir.join("transformer"))?);
        let clip_l = TableTarget::new(component_shapes(&dir.join("text_encoder"))?);
        let clip_g = TableTarget::new(component_shapes(&dir.join("text_encoder_2"))?);
        check_fit(
            &[
                (Component::Denoiser, &mmdit as &dyn LoraPlaces),
                (Component::TextEncoder(0), &clip_l),
                (Component::TextEncoder(1), &clip_g),
            ],
            set,
        )
    }

    /// Merges `set` into the MMDiT and both CLIP encoders, in place of the
    /// LoRAs before; on an error none stays merged.
    pub fn set_loras(&mut self, set: &[LoraUse]) -> Result<(), EngineLoadError> {
        check_components(&REACHABLE, set)?;
        let target = [(
            Component::Denoiser,
            &self.transformer_lora as &dyn LoraTarget,
        )];
        let encoders = &mut self.encoders;
        self.transformer_loras
            .set_then(&target, set, || encoders.set_loras(set))
    }

    /// A weight as the model runs it now (LoRAs merged), by component and
    /// diffusers name: for tests and diagnostics.
    pub fn parameter(&self, component: Component, name: &str) -> Option<Tensor> {
        match component {
            Component::Denoiser => self.transformer_lora.table().get(name).cloned(),
            Component::TextEncoder(i) if i < 2 => self
                .encoders
                .with(|e| Ok(e.clip_tables[i].get(name).cloned()))
                .ok()
                .flatten(),
            Component::TextEncoder(_) => None,
        }
    }

    pub fn schedule(&self, steps: usize) -> Result<FlowSchedule, EngineLoadError> {
        FlowSchedule::sd3(&self.scheduler, steps)
    }

    /// Denoises `latents` (1, c, h, w); `None` when `on_step` stopped it.
    pub fn denoise(
        &self,
        cond: &Sd3Conditioning,
        latents: Tensor,
        steps: usize,
        guidance: f64,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let schedule = self.schedule(steps)?;
        self.denoise_from(&schedule, cond, latents, 0, None, guidance, on_step)
    }

    /// Image-to-image: `clean` latents noised with `start_noise` to the
    /// first step `strength` keeps, then denoised from there; with `mask`,
    /// inpainting (the unmasked part put back after each step).
    #[allow(clippy::too_many_arguments)]
    pub fn denoise_image(
        &self,
        cond: &Sd3Conditioning,
        clean: &Tensor,
        start_noise: &Tensor,
        mask: Option<&Tensor>,
        steps: usize,
        strength: f64,
        guidance: f64,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let schedule = self.schedule(steps)?;
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
            latents,
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
        cond: &Sd3Conditioning,
        latents: Tensor,
        start: usize,
        keep: Option<&Keep>,
        guidance: f64,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let cfg = guidance > 1.0;
        let (first, rows) = if cfg { (0, 2) } else { (1, 1) };
        let context = cond.context.narrow(0, first, rows)?;
        let pooled = cond.pooled.narrow(0, first, rows)?;
        let mut latents = latents;
        for i in start..schedule.steps() {
            // diffusers keeps timesteps as f32 σ·1000.
            let timestep = f64::from(schedule.sigmas()[i] * 1000.0);
            let velocity = if cfg {
                let input = Tensor::cat(&[&latents, &latents], 0)?;
                let v = self
                    .transformer
                    .forward(&input, timestep, &context, &pooled)?;
                let uncond = v.narrow(0, 0, 1)?;
                let cond = v.narrow(0, 1, 1)?;
                (&uncond + ((cond - &uncond)? * guidance)?)?
            } else {
                self.transformer
                    .forward(&latents, timestep, &context, &pooled)?
            };
            latents = schedule.step(&velocity, i, &latents)?;
            if let Some(keep) = keep {
                latents = keep.after_step(&latents, i + 1, schedule.steps(), |x, n, j| {
                    schedule.noised(x, n, j)
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
        preview::preview_pixels(latents, &preview::SD3, decoder)
    }

    pub fn decode_unit(&self, latents: &Tensor) -> Result<Tensor, EngineLoadError> {
        Ok(self.vae.decode_unit(latents)?)
    }
}
