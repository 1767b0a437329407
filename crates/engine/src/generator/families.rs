//! The families the generator can run, each behind the same two traits, and
//! the one place a model's family picks its implementation ([`family`]).
//! A new family adds its pipeline under `pipelines/`, an implementation
//! here, and one line in `family`.

use std::any::Any;
use std::path::Path;

use candle_core::{Device, Tensor};
use cyberimage_core::{EngineError, GenerationSpec, ModelFamily};

use super::run::{failed, Images, Metadata, Run};
use crate::error::EngineLoadError;
use crate::pipelines::flux::{Flux, FluxConditioning};
use crate::pipelines::sd::{Conditioning, StableDiffusion};
use crate::pipelines::sd3::{Sd3, Sd3Conditioning};
use crate::schedulers::noise::step_gaussian;
use crate::weights::lora_merge::LoraUse;

/// A job's prompt, encoded by a family for its own pipeline (which takes
/// it back with [`conditioning`]).
pub(super) type Encoded = Box<dyn Any + Send>;

/// A family's entry points before anything is loaded.
pub(super) trait Family: Sync {
    /// Loads the pipeline from a diffusers folder; `keep_encoders` false
    /// loads the text encoders per use instead (`drop_text_encoders`).
    fn load(
        &self,
        dir: &Path,
        device: &Device,
        keep_encoders: bool,
    ) -> Result<Box<dyn LoadedPipeline>, EngineLoadError>;

    /// Encodes the job's prompt with only the text encoders resident,
    /// with the job's LoRAs merged into them.
    fn encode_alone(
        &self,
        dir: &Path,
        device: &Device,
        spec: &GenerationSpec,
        loras: &[LoraUse],
    ) -> Result<Encoded, EngineLoadError>;

    /// Whether `loras` fit the model in `dir` (every layer one it has, of
    /// its shapes), from the files' headers: nothing is loaded.
    fn check_loras(&self, dir: &Path, loras: &[LoraUse]) -> Result<(), EngineLoadError>;
}

/// A loaded pipeline, as the generator drives it.
pub(super) trait LoadedPipeline: Send {
    /// Encodes the job's prompt with the pipeline's own encoders.
    fn encode(&self, spec: &GenerationSpec) -> Result<Encoded, EngineLoadError>;

    /// Every image of the job, and the metadata the family adds.
    fn run(&self, run: &Run, encoded: &Encoded) -> Result<(Images, Metadata), EngineError>;

    /// Makes `loras` the merged LoRAs (none: the weights as loaded).
    fn set_loras(&mut self, loras: &[LoraUse]) -> Result<(), EngineLoadError>;
}

/// The family that runs `family`: the registration of every family.
pub(super) fn family(family: ModelFamily) -> &'static dyn Family {
    match family {
        ModelFamily::Sd15 | ModelFamily::Sd21 | ModelFamily::SdTurbo | ModelFamily::Sdxl => {
            &StableDiffusionFamily
        }
        ModelFamily::Sd3 => &Sd3Family,
        ModelFamily::FluxDev | ModelFamily::FluxSchnell => &FluxFamily,
    }
}

/// The conditioning a pipeline's own family encoded.
fn conditioning<T: 'static>(encoded: &Encoded) -> Result<&T, EngineError> {
    encoded
        .downcast_ref::<T>()
        .ok_or_else(|| failed("the prompt was encoded for another pipeline"))
}

fn boxed<T: Send + 'static>(value: T) -> Encoded {
    Box::new(value)
}

struct StableDiffusionFamily;

impl Family for StableDiffusionFamily {
    fn check_loras(&self, dir: &Path, loras: &[LoraUse]) -> Result<(), EngineLoadError> {
        StableDiffusion::check_loras_in(dir, loras)
    }

    fn load(
        &self,
        dir: &Path,
        device: &Device,
        keep_encoders: bool,
    ) -> Result<Box<dyn LoadedPipeline>, EngineLoadError> {
        Ok(Box::new(StableDiffusion::load_with(
            dir,
            device,
            keep_encoders,
        )?))
    }

    fn encode_alone(
        &self,
        dir: &Path,
        device: &Device,
        spec: &GenerationSpec,
        loras: &[LoraUse],
    ) -> Result<Encoded, EngineLoadError> {
        let negative = spec.negative_prompt.as_deref();
        let guidance = f64::from(spec.guidance_scale);
        StableDiffusion::encode_alone(dir, device, &spec.prompt, negative, guidance, loras)
            .map(boxed)
    }
}

impl LoadedPipeline for StableDiffusion {
    fn set_loras(&mut self, loras: &[LoraUse]) -> Result<(), EngineLoadError> {
        StableDiffusion::set_loras(self, loras)
    }

    fn encode(&self, spec: &GenerationSpec) -> Result<Encoded, EngineLoadError> {
        let negative = spec.negative_prompt.as_deref();
        self.encode_for_guidance(&spec.prompt, negative, f64::from(spec.guidance_scale))
            .map(boxed)
    }

    fn run(&self, run: &Run, encoded: &Encoded) -> Result<(Images, Metadata), EngineError> {
        let cond: &Conditioning = conditioning(encoded)?;
        let (steps, guidance) = (run.steps(), run.guidance());
        let sampler = self.scheduler(steps).map_err(failed)?.name();
        let images = run.images(
            self.latent_channels(),
            self.latent_factor(),
            |seed, latents, on_step| {
                let shape = latents.dims4()?;
                let count = shape.1 * shape.2 * shape.3;
                let mut step_noise =
                    |step| Tensor::from_vec(step_gaussian(seed, step, count), shape, run.device);
                if self.conditioning_channels() > 0 {
                    return self.denoise_inpainting_unet(
                        run,
                        cond,
                        seed,
                        &latents,
                        &mut step_noise,
                        on_step,
                    );
                }
                match run.init {
                    None => self.denoise(cond, latents, steps, guidance, &mut step_noise, on_step),
                    Some(init) => {
                        let clean = init.clean_latents(self.image_encoder(), seed, &latents)?;
                        self.denoise_image(
                            cond,
                            &clean,
                            &latents,
                            init.mask.as_ref(),
                            steps,
                            init.strength,
                            guidance,
                            &mut step_noise,
                            on_step,
                        )
                    }
                }
            },
            |latents| self.decode_unit(latents),
            &|latents| self.preview(latents, run.preview_decoder),
        )?;
        Ok((images, vec![("sampler".into(), sampler.into())]))
    }
}

impl StableDiffusion {
    /// A job on an inpainting UNet (9 input channels): with or without an
    /// input image and mask.
    fn denoise_inpainting_unet(
        &self,
        run: &Run,
        cond: &Conditioning,
        seed: u64,
        noise: &Tensor,
        step_noise: &mut crate::pipelines::sd::StepNoise,
        on_step: &mut crate::pipelines::StepCallback,
    ) -> Result<Option<Tensor>, EngineLoadError> {
        if self.conditioning_channels() != 5 {
            return Err(EngineLoadError::Unsupported(format!(
                "a UNet with {} input channels: inpainting UNets have {} (instruct-pix2pix-style \
                 image conditioning is not supported)",
                self.conditioning_channels() + self.latent_channels(),
                self.latent_channels() + 5
            )));
        }
        let encoder = self.image_encoder();
        let conditioning = run.inpaint_conditioning(encoder, seed, noise, self.latent_factor())?;
        let (clean, strength) = match run.init {
            Some(init) => (
                Some(init.clean_latents(encoder, seed, noise)?),
                init.strength,
            ),
            None => (None, 1.0),
        };
        self.denoise_conditioned(
            cond,
            clean.as_ref(),
            noise,
            &conditioning,
            run.steps(),
            strength,
            run.guidance(),
            step_noise,
            on_step,
        )
    }
}

struct Sd3Family;

impl Family for Sd3Family {
    fn check_loras(&self, dir: &Path, loras: &[LoraUse]) -> Result<(), EngineLoadError> {
        Sd3::check_loras_in(dir, loras)
    }

    fn load(
        &self,
        dir: &Path,
        device: &Device,
        keep_encoders: bool,
    ) -> Result<Box<dyn LoadedPipeline>, EngineLoadError> {
        Ok(Box::new(Sd3::load_with(dir, device, keep_encoders)?))
    }

    fn encode_alone(
        &self,
        dir: &Path,
        device: &Device,
        spec: &GenerationSpec,
        loras: &[LoraUse],
    ) -> Result<Encoded, EngineLoadError> {
        let negative = spec.negative_prompt.as_deref();
        Sd3::encode_alone(dir, device, &spec.prompt, negative, loras).map(boxed)
    }
}

impl LoadedPipeline for Sd3 {
    fn set_loras(&mut self, loras: &[LoraUse]) -> Result<(), EngineLoadError> {
        Sd3::set_loras(self, loras)
    }

    fn encode(&self, spec: &GenerationSpec) -> Result<Encoded, EngineLoadError> {
        self.encode_prompts(&spec.prompt, spec.negative_prompt.as_deref())
            .map(boxed)
    }

    fn run(&self, run: &Run, encoded: &Encoded) -> Result<(Images, Metadata), EngineError> {
        let cond: &Sd3Conditioning = conditioning(encoded)?;
        let (steps, guidance) = (run.steps(), run.guidance());
        let images = run.images(
            self.latent_channels(),
            self.latent_factor(),
            |seed, noise, on_step| match run.init {
                None => self.denoise(cond, noise, steps, guidance, on_step),
                Some(init) => {
                    let clean = init.clean_latents(self.image_encoder(), seed, &noise)?;
                    self.denoise_image(
                        cond,
                        &clean,
                        &noise,
                        init.mask.as_ref(),
                        steps,
                        init.strength,
                        guidance,
                        on_step,
                    )
                }
            },
            |latents| self.decode_unit(latents),
            &|latents| self.preview(latents, run.preview_decoder),
        )?;
        Ok((images, vec![("sampler".into(), "Flow-match Euler".into())]))
    }
}

struct FluxFamily;

impl Family for FluxFamily {
    fn check_loras(&self, dir: &Path, loras: &[LoraUse]) -> Result<(), EngineLoadError> {
        Flux::check_loras_in(dir, loras)
    }

    fn load(
        &self,
        dir: &Path,
        device: &Device,
        keep_encoders: bool,
    ) -> Result<Box<dyn LoadedPipeline>, EngineLoadError> {
        Ok(Box::new(Flux::load_with(dir, device, keep_encoders)?))
    }

    fn encode_alone(
        &self,
        dir: &Path,
        device: &Device,
        spec: &GenerationSpec,
        loras: &[LoraUse],
    ) -> Result<Encoded, EngineLoadError> {
        Flux::encode_alone(dir, device, &spec.prompt, loras).map(boxed)
    }
}

impl LoadedPipeline for Flux {
    fn set_loras(&mut self, loras: &[LoraUse]) -> Result<(), EngineLoadError> {
        Flux::set_loras(self, loras)
    }

    fn encode(&self, spec: &GenerationSpec) -> Result<Encoded, EngineLoadError> {
        self.encode_prompt(&spec.prompt).map(boxed)
    }

    fn run(&self, run: &Run, encoded: &Encoded) -> Result<(Images, Metadata), EngineError> {
        let cond: &FluxConditioning = conditioning(encoded)?;
        let (steps, guidance) = (run.steps(), run.guidance());
        let images = run.images(
            self.latent_channels(),
            self.latent_factor(),
            |seed, noise, on_step| match run.init {
                None => self.denoise(cond, &noise, steps, guidance, on_step),
                Some(init) => {
                    let clean = init.clean_latents(self.image_encoder(), seed, &noise)?;
                    self.denoise_image(
                        cond,
                        &clean,
                        &noise,
                        init.mask.as_ref(),
                        steps,
                        init.strength,
                        guidance,
                        on_step,
                    )
                }
            },
            |latents| self.decode_unit(latents),
            &|packed| {
                let factor = self.latent_factor();
                let (h, w) = (
                    run.spec.height as usize / factor,
                    run.spec.width as usize / factor,
                );
                self.preview(packed, h, w, run.preview_decoder)
            },
        )?;
        let mut metadata = vec![("sampler".into(), "Flow-match Euler".into())];
        if !self.uses_guidance() {
            metadata.push((
                "guidance".into(),
                "none (schnell: not guidance-distilled)".into(),
            ));
        }
        metadata.push(("transformer_weights".into(), self.transformer_format.into()));
        Ok((images, metadata))
    }
}
