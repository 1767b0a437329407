//! The Stable Diffusion 1.x/2.x text-to-image pipeline (SD-Turbo included):
//! CLIP conditioning with classifier-free guidance (skipped at guidance
//! <= 1, as diffusers does), the model's scheduler (DDIM or Euler), VAE
//! decoding.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::clip::ClipTextEncoder;
use crate::schedule::{Scheduler, SchedulerConfig};
use crate::tokenizer::ClipTokenizer;
use crate::unet::UNet;
use crate::vae::VaeDecoder;
use crate::weights::read_config;
use crate::EngineLoadError;

pub struct StableDiffusion {
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextEncoder,
    unet: UNet,
    vae: VaeDecoder,
    scheduler_config: SchedulerConfig,
    device: Device,
}

/// Called after each denoising step with (steps done, latents); returning
/// `false` stops the run.
pub type StepCallback<'a> = dyn FnMut(usize, &Tensor) -> bool + 'a;

/// The fresh noise an ancestral scheduler adds at a step (0-based), shaped
/// like the latents.
pub type StepNoise<'a> = dyn FnMut(usize) -> candle_core::Result<Tensor> + 'a;

impl StableDiffusion {
    /// Loads a diffusers folder (`model_index.json` beside the components).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EngineLoadError> {
        Ok(Self {
            tokenizer: ClipTokenizer::load(&dir.join("tokenizer"), 77)?,
            text_encoder: ClipTextEncoder::load(&dir.join("text_encoder"), DType::F32, device)?,
            unet: UNet::load(&dir.join("unet"), DType::F32, device)?,
            vae: VaeDecoder::load(&dir.join("vae"), DType::F32, device)?,
            scheduler_config: read_config(&dir.join("scheduler/scheduler_config.json"))?,
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
        self.unet.config.in_channels
    }

    /// (uncond, cond) text embeddings, stacked in that order.
    pub fn encode_prompts(&self, prompt: &str, negative: &str) -> Result<Tensor, EngineLoadError> {
        let ids: Vec<u32> = [negative, prompt]
            .iter()
            .map(|p| self.tokenizer.encode(p))
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        let ids = Tensor::from_vec(ids, (2, 77), &self.device)?;
        Ok(self.text_encoder.forward(&ids)?.last_hidden_state)
    }

    /// The scheduler this model runs `steps` steps with.
    pub fn scheduler(&self, steps: usize) -> Result<Scheduler, EngineLoadError> {
        Scheduler::new(&self.scheduler_config, steps)
    }

    /// Denoises `latents` (1, c, h, w) for `steps` steps of the model's
    /// scheduler with guidance `guidance`; `context` is (uncond, cond) from
    /// `encode_prompts`. Returns the final latents.
    pub fn denoise(
        &self,
        context: &Tensor,
        latents: Tensor,
        steps: usize,
        guidance: f64,
        noise: &mut StepNoise,
        on_step: &mut StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        let scheduler = self.scheduler(steps)?;
        // Like diffusers: no classifier-free guidance at guidance <= 1 (one
        // UNet pass on the prompt alone; SD-Turbo runs at guidance 0).
        let cfg = guidance > 1.0;
        let context = if cfg {
            context.clone()
        } else {
            context.narrow(0, 1, 1)?
        };
        let mut latents = (latents * scheduler.init_noise_sigma())?;
        for (i, &t) in scheduler.timesteps().iter().enumerate() {
            let scaled = scheduler.scale_model_input(&latents, i)?;
            let guided = if cfg {
                let input = Tensor::cat(&[&scaled, &scaled], 0)?;
                let eps = self.unet.forward(&input, t, &context)?;
                let uncond = eps.narrow(0, 0, 1)?;
                let cond = eps.narrow(0, 1, 1)?;
                (&uncond + ((cond - &uncond)? * guidance)?)?
            } else {
                self.unet.forward(&scaled, t, &context)?
            };
            let step_noise = if scheduler.needs_noise() {
                Some(noise(i)?)
            } else {
                None
            };
            latents = scheduler.step(&guided, i, &latents, step_noise.as_ref())?;
            if !on_step(i + 1, &latents) {
                return Ok(None);
            }
        }
        Ok(Some(latents))
    }

    /// Latents → RGB8 pixels (row-major HWC), as diffusers' `output_type`
    /// "pil": `(x / 2 + 0.5).clamp(0, 1) * 255`, rounded.
    pub fn decode_rgb8(
        &self,
        latents: &Tensor,
    ) -> Result<(usize, usize, Vec<u8>), EngineLoadError> {
        let image = self.decode_unit(latents)?;
        let (h, w, _) = image.dims3()?;
        let pixels = (image * 255.0)?
            .round()?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| v as u8)
            .collect();
        Ok((w, h, pixels))
    }

    /// Latents → (h, w, 3) floats in [0, 1], diffusers' `output_type="np"`.
    pub fn decode_unit(&self, latents: &Tensor) -> Result<Tensor, EngineLoadError> {
        let image = self.vae.decode(latents)?;
        let image = ((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
        Ok(image.squeeze(0)?.permute((1, 2, 0))?.contiguous()?)
    }
}
