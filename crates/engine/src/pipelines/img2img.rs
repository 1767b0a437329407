//! What image-to-image shares across families: the input image as the
//! VAE takes it, the step a given strength starts from, and the VAE
//! encoder, loaded the first time a pipeline edits an image (text-to-image
//! never pays for it).

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

use crate::error::EngineLoadError;
use crate::models::vae_encoder::{Posterior, VaeEncoder};

/// RGB8 pixels (row-major, `width × height`) → (1, 3, h, w) in [-1, 1],
/// as diffusers' image processor normalises them.
pub fn image_tensor(
    rgb: &[u8],
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor, EngineLoadError> {
    if rgb.len() != width * height * 3 {
        return Err(EngineLoadError::Unsupported(format!(
            "{} bytes are not a {width}×{height} RGB image",
            rgb.len()
        )));
    }
    let values: Vec<f32> = rgb.iter().map(|&v| f32::from(v) / 255.0).collect();
    let image = Tensor::from_vec(values, (height, width, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?;
    Ok(((image * 2.0)? - 1.0)?)
}

/// The first step an image-to-image run takes with `strength`: diffusers'
/// `get_timesteps` keeps the last `int(steps · strength)` steps. Fails when
/// that keeps none.
pub fn start_step(steps: usize, strength: f64) -> Result<usize, EngineLoadError> {
    let kept = cyberimage_core::spec::img2img_steps(steps as u32, strength) as usize;
    if kept == 0 {
        return Err(EngineLoadError::Unsupported(format!(
            "strength {strength} keeps no step of {steps}: raise the strength or the steps"
        )));
    }
    Ok(steps - kept)
}

/// What inpainting keeps: the input's clean latents, the start noise, and
/// the mask at latent size (1 where the model repaints, 0 where the input
/// stays), as diffusers' inpaint pipelines blend them after each step.
pub struct Keep<'a> {
    pub clean: &'a Tensor,
    pub noise: &'a Tensor,
    /// (1, 1, h, w), broadcast over the latent channels.
    pub mask: &'a Tensor,
}

impl Keep<'_> {
    /// The latents after a step, the unmasked part put back: the input at
    /// step `next`'s noise level (its clean latents after the last of
    /// `steps`), `(1 − mask) · kept + mask · latents`. `noised` is the
    /// scheduler's forward process (`add_noise`, flow's `noised`).
    pub fn after_step(
        &self,
        latents: &Tensor,
        next: usize,
        steps: usize,
        noised: impl Fn(&Tensor, &Tensor, usize) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let kept = if next < steps {
            noised(self.clean, self.noise, next)?
        } else {
            self.clean.clone()
        };
        let repaint = latents.broadcast_mul(self.mask)?;
        let keep = kept.broadcast_mul(&(1.0 - self.mask)?)?;
        repaint + keep
    }
}

/// A mask picture (luma, row-major `width × height`, white = repaint) at
/// latent size: binarised at half intensity, then sampled nearest at
/// every `factor`-th pixel, as diffusers' mask processor and
/// `interpolate(mode="nearest")` do.
pub fn latent_mask(
    luma: &[u8],
    width: usize,
    height: usize,
    factor: usize,
    device: &Device,
) -> Result<Tensor, EngineLoadError> {
    if luma.len() != width * height {
        return Err(EngineLoadError::Unsupported(format!(
            "{} bytes are not a {width}×{height} mask",
            luma.len()
        )));
    }
    let (h, w) = (height / factor, width / factor);
    let mut values = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            // 128/255 ≥ 0.5 > 127/255.
            values.push(if luma[y * factor * width + x * factor] >= 128 {
                1f32
            } else {
                0.0
            });
        }
    }
    Ok(Tensor::from_vec(values, (1, 1, h, w), device)?)
}

/// A pipeline's VAE encoder, loaded from its `vae/` folder on first use.
pub struct LazyEncoder {
    folder: PathBuf,
    device: Device,
    encoder: OnceLock<VaeEncoder>,
}

impl LazyEncoder {
    pub fn new(folder: PathBuf, device: &Device) -> Self {
        Self {
            folder,
            device: device.clone(),
            encoder: OnceLock::new(),
        }
    }

    pub fn get(&self) -> Result<&VaeEncoder, EngineLoadError> {
        if let Some(encoder) = self.encoder.get() {
            return Ok(encoder);
        }
        let loaded = VaeEncoder::load(&self.folder, DType::F32, &self.device)?;
        Ok(self.encoder.get_or_init(|| loaded))
    }

    /// Clean latents of `image` (1, 3, h, w) in [-1, 1], the posterior
    /// sampled with `eps`.
    pub fn latents(&self, image: &Tensor, eps: &Tensor) -> Result<Tensor, EngineLoadError> {
        Ok(self.get()?.latents(image, eps)?)
    }

    /// The latent posterior of `image` (1, 3, h, w) in [-1, 1].
    pub fn posterior(&self, image: &Tensor) -> Result<Posterior, EngineLoadError> {
        Ok(self.get()?.posterior(image)?)
    }

    /// Clean latents: `posterior` sampled with `eps`, shifted and scaled.
    pub fn sample(&self, posterior: &Posterior, eps: &Tensor) -> Result<Tensor, EngineLoadError> {
        Ok(self.get()?.sample(posterior, eps)?)
    }
}

/// Puts the input's pixels back outside an inpainting mask, blending
/// across its grey edge: `mask · generated + (1 − mask) · input` per
/// channel, with the mask's luma in 0–255 (AUTOMATIC1111's overlay of the
/// original). Where the mask is black the input comes out exactly.
pub fn keep_unmasked(generated: &mut [u8], input: &[u8], mask: &[u8]) {
    for ((out, inp), &m) in generated
        .chunks_exact_mut(3)
        .zip(input.chunks_exact(3))
        .zip(mask)
    {
        let m = u32::from(m);
        for (o, &i) in out.iter_mut().zip(inp) {
            *o = ((u32::from(*o) * m + u32::from(i) * (255 - m) + 127) / 255) as u8;
        }
    }
}

#[cfg(test)]
mod keep_unmasked_tests {
    use super::keep_unmasked;

    #[test]
    fn black_keeps_the_input_white_the_output_grey_blends() {
        let input = [10, 20, 30, 10, 20, 30, 10, 20, 30];
        let mut out = [200, 100, 0, 200, 100, 0, 200, 100, 0];
        keep_unmasked(&mut out, &input, &[0, 255, 128]);
        assert_eq!(&out[..3], &input[..3]);
        assert_eq!(&out[3..6], &[200, 100, 0]);
        assert_eq!(&out[6..], &[105, 60, 15]);
    }
}
