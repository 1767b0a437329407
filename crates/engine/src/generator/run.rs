//! One job's images through a loaded pipeline, whatever its family: seeded
//! noise per image, step progress across all images, cancel between steps,
//! decoding to RGB8.

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use cyberimage_core::{
    CancelToken, EngineError, GenerationSpec, InputImage, PreviewImage, ProgressObserver,
    ProgressUpdate,
};

use crate::error::EngineLoadError;
use crate::models::vae_encoder::Posterior;
use crate::pipelines::img2img::{image_tensor, keep_unmasked, latent_mask, LazyEncoder};
use crate::pipelines::preview::PreviewPixels;
use crate::pipelines::StepCallback;
use crate::schedulers::noise::{gaussian, step_gaussian};

/// A job's failure from any error the engine's layers return.
pub(super) fn failed(e: impl std::fmt::Display) -> EngineError {
    EngineError::Failed(e.to_string())
}

/// One job's images through a loaded pipeline.
pub(super) struct Run<'a> {
    pub spec: &'a GenerationSpec,
    pub observer: &'a dyn ProgressObserver,
    pub cancel: &'a CancelToken,
    pub device: &'a Device,
    /// Set for image-to-image jobs.
    pub init: Option<&'a InitInput>,
    /// A tiny autoencoder for previews, when its weights are present.
    pub preview_decoder: Option<&'a crate::pipelines::preview::PreviewDecoder>,
    /// An inpainting UNet's masked picture, encoded for the job's first
    /// image and sampled for every image (`inpaint_conditioning`).
    pub masked_posterior: OnceLock<Posterior>,
}

/// An image-to-image job's input, as the VAE encoder takes it.
pub(super) struct InitInput {
    /// (1, 3, h, w) in [-1, 1].
    pub image: Tensor,
    pub strength: f64,
    /// Inpainting: (1, 1, h/f, w/f), 1 where the model repaints.
    pub mask: Option<Tensor>,
    /// The same mask at the image's size (an inpainting UNet is given the
    /// image with this part blanked).
    pixel_mask: Option<Tensor>,
    /// Inpainting with `keep_unmasked`: the input's RGB and the mask's
    /// luma at the job's size, laid over each decoded image.
    overlay: Option<(Vec<u8>, Vec<u8>)>,
    /// The input's latent posterior, encoded for the job's first image
    /// and sampled for every image (only the draw differs).
    posterior: OnceLock<Posterior>,
}

/// The draw that samples the VAE posterior of an image-to-image job's
/// input: a step number no sampler reaches, so it never repeats a step's.
const POSTERIOR_DRAW: usize = 1 << 15;

impl InitInput {
    /// The job's input when its spec asks for one (which must then be
    /// given, at the job's size).
    pub fn of(
        spec: &GenerationSpec,
        input: Option<&InputImage>,
        latent_factor: usize,
        device: &Device,
    ) -> Result<Option<Self>, EngineError> {
        let (Some(init), Some(input)) = (&spec.init_image, input) else {
            return match (&spec.init_image, input) {
                (Some(_), None) => Err(failed("the job's input image was not given")),
                _ => Ok(None),
            };
        };
        if (input.width, input.height) != (spec.width, spec.height) {
            return Err(failed(format!(
                "the input image is {}×{}, the job {}×{}",
                input.width, input.height, spec.width, spec.height
            )));
        }
        let image = image_tensor(
            &input.rgb,
            input.width as usize,
            input.height as usize,
            device,
        )
        .map_err(failed)?;
        let mask = match (&init.mask_sha256, &input.mask) {
            (None, _) => None,
            (Some(_), None) => return Err(failed("the job's mask was not given")),
            (Some(_), Some(luma)) => Some(
                latent_mask(
                    luma,
                    input.width as usize,
                    input.height as usize,
                    latent_factor,
                    device,
                )
                .map_err(failed)?,
            ),
        };
        let pixel_mask = match (&mask, &input.mask) {
            (Some(_), Some(luma)) => Some(
                latent_mask(luma, input.width as usize, input.height as usize, 1, device)
                    .map_err(failed)?,
            ),
            _ => None,
        };
        let overlay = match (&input.mask, init.keep_unmasked) {
            (Some(luma), true) => Some((input.rgb.clone(), luma.clone())),
            _ => None,
        };
        Ok(Some(Self {
            image,
            strength: init.strength,
            mask,
            pixel_mask,
            overlay,
            posterior: OnceLock::new(),
        }))
    }

    /// Image `seed`'s clean latents (shaped like `like`): the input's
    /// posterior, encoded once per job, sampled with the image's own draw.
    pub fn clean_latents(
        &self,
        encoder: &LazyEncoder,
        seed: u64,
        like: &Tensor,
    ) -> Result<Tensor, EngineLoadError> {
        let posterior = match self.posterior.get() {
            Some(posterior) => posterior,
            None => {
                let encoded = encoder.posterior(&self.image)?;
                self.posterior.get_or_init(|| encoded)
            }
        };
        let eps = Tensor::from_vec(
            step_gaussian(seed, POSTERIOR_DRAW, like.elem_count()),
            like.shape(),
            like.device(),
        )?;
        encoder.sample(posterior, &eps)
    }
}

impl Run<'_> {
    /// What an inpainting UNet takes beside image `seed`'s latents (shaped
    /// like `like`): the latent-size mask and the latents of the input
    /// with the masked part blanked (grey), as (1, 1 + c, h, w). Without a
    /// mask the whole picture is repainted; without an input image (text
    /// to image on an inpainting model) the masked image is all grey, as
    /// AUTOMATIC1111 conditions such models.
    pub fn inpaint_conditioning(
        &self,
        encoder: &LazyEncoder,
        seed: u64,
        like: &Tensor,
        factor: usize,
    ) -> Result<Tensor, EngineLoadError> {
        let (_, _, h, w) = like.dims4()?;
        let device = like.device();
        let (image, pixel_mask, mask) = match self.init {
            Some(init) => (
                init.image.clone(),
                init.pixel_mask.clone(),
                init.mask.clone(),
            ),
            None => (
                Tensor::zeros((1, 3, h * factor, w * factor), like.dtype(), device)?,
                None,
                None,
            ),
        };
        let posterior = match self.masked_posterior.get() {
            Some(posterior) => posterior,
            None => {
                let masked = match pixel_mask {
                    Some(m) => image.broadcast_mul(&(1.0 - m)?)?,
                    None => image.zeros_like()?,
                };
                let encoded = encoder.posterior(&masked)?;
                self.masked_posterior.get_or_init(|| encoded)
            }
        };
        let mask = match mask {
            Some(m) => m,
            None => Tensor::ones((1, 1, h, w), like.dtype(), device)?,
        };
        let eps = Tensor::from_vec(
            step_gaussian(seed, MASKED_IMAGE_DRAW, like.elem_count()),
            like.shape(),
            device,
        )?;
        let masked_latents = encoder.sample(posterior, &eps)?;
        Ok(Tensor::cat(&[&mask, &masked_latents], 1)?)
    }
}

/// The draw that samples the masked image's posterior for an inpainting
/// UNet: beside the input's own.
const MASKED_IMAGE_DRAW: usize = POSTERIOR_DRAW + 1;

/// A family's preview of its step latents.
pub(super) type Preview<'a> =
    dyn Fn(&Tensor) -> Result<PreviewPixels, crate::error::EngineLoadError> + 'a;

/// Per image: (seed, width, height, RGB8 pixels).
pub(super) type Images = Vec<(u64, usize, usize, Vec<u8>)>;
pub(super) type Metadata = Vec<(String, String)>;

impl Run<'_> {
    /// Denoising steps per image.
    pub fn steps(&self) -> usize {
        self.spec.steps as usize
    }

    /// The guidance scale, as the pipelines take it.
    pub fn guidance(&self) -> f64 {
        f64::from(self.spec.guidance_scale)
    }

    /// The initial noise of image `index`: (seed, tensor of `shape`).
    fn noise(
        &self,
        index: u32,
        shape: (usize, usize, usize, usize),
    ) -> Result<(u64, Tensor), EngineError> {
        let seed = self.spec.image_seed(index);
        let count = shape.0 * shape.1 * shape.2 * shape.3;
        let noise = Tensor::from_vec(gaussian(seed, count), shape, self.device).map_err(failed)?;
        Ok((seed, noise))
    }

    /// Reports step progress across all images, with a preview after
    /// every step but the last (the picture itself follows); false once
    /// cancelled.
    fn step_reporter<'s>(
        &'s self,
        index: u32,
        preview: &'s Preview,
    ) -> impl FnMut(usize, &Tensor) -> bool + 's {
        let per_image = self.spec.steps_run();
        let done_before = index * per_image;
        let total = self.spec.total_steps();
        move |step, latents| {
            self.observer.on_progress(ProgressUpdate::Step {
                done: done_before + step as u32,
                total,
            });
            if (step as u32) < per_image && !self.cancel.is_cancelled() {
                // A preview that cannot be made is skipped: it never
                // fails the job.
                if let Ok((width, height, rgb)) = preview(latents) {
                    self.observer.on_preview(PreviewImage {
                        step: step as u32,
                        width: width as u32,
                        height: height as u32,
                        rgb,
                    });
                }
            }
            !self.cancel.is_cancelled()
        }
    }

    /// Every image of the job: seeded noise of (channels, h/factor,
    /// w/factor) → `denoise` (given the seed, the noise and the step
    /// reporter; `None` when cancelled) → `decode` to (h, w, 3) in [0, 1];
    /// `preview` pictures the step latents.
    pub fn images(
        &self,
        channels: usize,
        factor: usize,
        mut denoise: impl FnMut(
            u64,
            Tensor,
            &mut StepCallback,
        ) -> Result<Option<Tensor>, crate::error::EngineLoadError>,
        decode: impl Fn(&Tensor) -> Result<Tensor, crate::error::EngineLoadError>,
        preview: &Preview,
    ) -> Result<Images, EngineError> {
        let spec = self.spec;
        let shape = (
            1,
            channels,
            spec.height as usize / factor,
            spec.width as usize / factor,
        );
        let mut images = Vec::new();
        for index in 0..spec.num_images {
            let (seed, noise) = self.noise(index, shape)?;
            let result =
                denoise(seed, noise, &mut self.step_reporter(index, preview)).map_err(failed)?;
            let Some(latents) = result else {
                return Err(EngineError::Cancelled);
            };
            self.observer.on_progress(ProgressUpdate::Decoding);
            let image = decode(&latents).map_err(failed)?;
            let (width, height, mut rgb) =
                crate::models::vae::unit_to_rgb8(&image).map_err(failed)?;
            if let Some((input, mask)) = self.init.and_then(|init| init.overlay.as_ref()) {
                if input.len() == rgb.len() && mask.len() * 3 == rgb.len() {
                    keep_unmasked(&mut rgb, input, mask);
                }
            }
            images.push((seed, width, height, rgb));
        }
        Ok(images)
    }
}
