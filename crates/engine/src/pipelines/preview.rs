//! Live previews: each latent pixel projected to RGB by a fixed linear map
//! per latent space, the cheap approximation ComfyUI shows while sampling
//! (no VAE: a 1024² SDXL latent is 128² pixels and 4×3 multiplies each).
//! The factors are ComfyUI's published ones (`comfy/latent_formats.py`,
//! comfyanonymous/ComfyUI at 040a324), applied to the latents as the
//! denoiser sees them.

use candle_core::Tensor;

use crate::error::EngineLoadError;

/// One latent space's projection: per latent channel an (R, G, B) row,
/// plus a bias; the result lives in [-1, 1] like the VAE's output.
pub struct LatentRgb {
    factors: &'static [[f32; 3]],
    bias: [f32; 3],
}

pub const SD15: LatentRgb = LatentRgb {
    factors: &[
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    bias: [0.0; 3],
};

pub const SDXL: LatentRgb = LatentRgb {
    factors: &[
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
    bias: [0.1084, -0.0175, -0.0011],
};

pub const SD3: LatentRgb = LatentRgb {
    factors: &[
        [-0.0922, -0.0175, 0.0749],
        [0.0311, 0.0633, 0.0954],
        [0.1994, 0.0927, 0.0458],
        [0.0856, 0.0339, 0.0902],
        [0.0587, 0.0272, -0.0496],
        [-0.0006, 0.1104, 0.0309],
        [0.0978, 0.0306, 0.0427],
        [-0.0042, 0.1038, 0.1358],
        [-0.0194, 0.0020, 0.0669],
        [-0.0488, 0.0130, -0.0268],
        [0.0922, 0.0988, 0.0951],
        [-0.0278, 0.0524, -0.0542],
        [0.0332, 0.0456, 0.0895],
        [-0.0069, -0.0030, -0.0810],
        [-0.0596, -0.0465, -0.0293],
        [-0.1448, -0.1463, -0.1189],
    ],
    bias: [0.2394, 0.2135, 0.1925],
};

pub const FLUX: LatentRgb = LatentRgb {
    factors: &[
        [-0.0346, 0.0244, 0.0681],
        [0.0034, 0.0210, 0.0687],
        [0.0275, -0.0668, -0.0433],
        [-0.0174, 0.0160, 0.0617],
        [0.0859, 0.0721, 0.0329],
        [0.0004, 0.0383, 0.0115],
        [0.0405, 0.0861, 0.0915],
        [-0.0236, -0.0185, -0.0259],
        [-0.0245, 0.0250, 0.1180],
        [0.1008, 0.0755, -0.0421],
        [-0.0515, 0.0201, 0.0011],
        [0.0428, -0.0012, -0.0036],
        [0.0817, 0.0765, 0.0749],
        [-0.1264, -0.0522, -0.1103],
        [-0.0280, -0.0881, -0.0499],
        [-0.1262, -0.0982, -0.0778],
    ],
    bias: [-0.0329, -0.0718, -0.0851],
};

/// A preview picture: (width, height, RGB8 row-major).
pub type PreviewPixels = (usize, usize, Vec<u8>);

/// A tiny autoencoder's decoder for previews (TAESD and its kin, when its
/// weights are on the machine), with the latent scale and shift it reads
/// them under: `latents / scale + shift`, as a pipeline hands latents to
/// a VAE. Its pictures are the job's size, where the projection's are the
/// latents'.
pub struct PreviewDecoder {
    pub decoder: crate::models::taesd::TinyDecoder,
    pub scale: f64,
    pub shift: f64,
}

impl PreviewDecoder {
    /// `None` when the latents are not this decoder's (another channel
    /// count): the caller falls back to the projection.
    pub fn rgb8(&self, latents: &Tensor) -> Option<Result<PreviewPixels, EngineLoadError>> {
        let (_, channels, _, _) = latents.dims4().ok()?;
        if channels != self.decoder.latent_channels() {
            return None;
        }
        let run = || -> Result<PreviewPixels, EngineLoadError> {
            let x = latents
                .to_dtype(candle_core::DType::F32)?
                .affine(1.0 / self.scale, self.shift)?;
            let picture = self.decoder.decode(&x)?.clamp(0f32, 1f32)?;
            let (_, _, h, w) = picture.dims4()?;
            let chw = picture.squeeze(0)?.flatten_all()?.to_vec1::<f32>()?;
            let plane = h * w;
            let mut rgb = Vec::with_capacity(plane * 3);
            for pixel in 0..plane {
                for c in 0..3 {
                    rgb.push((chw[c * plane + pixel] * 255.0).round() as u8);
                }
            }
            Ok((w, h, rgb))
        };
        Some(run())
    }
}

/// The decoder's picture when there is one for these latents, else the
/// projection's.
pub fn preview_pixels(
    latents: &Tensor,
    table: &LatentRgb,
    decoder: Option<&PreviewDecoder>,
) -> Result<PreviewPixels, EngineLoadError> {
    match decoder.and_then(|d| d.rgb8(latents)) {
        Some(pixels) => pixels,
        None => table.rgb8(latents),
    }
}

impl LatentRgb {
    /// Latents (1, C, h, w) → an h×w RGB8 picture. Fails when the channel
    /// count is not this space's (a model this table does not describe).
    pub fn rgb8(&self, latents: &Tensor) -> Result<PreviewPixels, EngineLoadError> {
        let (_, channels, h, w) = latents.dims4()?;
        if channels != self.factors.len() {
            return Err(EngineLoadError::Unsupported(format!(
                "no preview for {channels} latent channels (the table has {})",
                self.factors.len()
            )));
        }
        let values = latents
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let plane = h * w;
        let mut rgb = Vec::with_capacity(plane * 3);
        for pixel in 0..plane {
            for (colour, bias) in self.bias.iter().enumerate() {
                let mut v = *bias;
                for (c, row) in self.factors.iter().enumerate() {
                    v += values[c * plane + pixel] * row[colour];
                }
                let unit = ((v + 1.0) / 2.0).clamp(0.0, 1.0);
                rgb.push((unit * 255.0).round() as u8);
            }
        }
        Ok((w, h, rgb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn each_pixel_is_the_factor_rows_weighted_by_its_channels() {
        // One pixel with channels (1, 0, 0, 0) is SD 1.5's first row; a
        // second with (0, 0, 0, -1) is minus the last.
        let latents = Tensor::new(
            &[[[[1f32, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]], [[0.0, -1.0]]]],
            &Device::Cpu,
        )
        .unwrap();
        let (w, h, rgb) = SD15.rgb8(&latents).unwrap();
        assert_eq!((w, h), (2, 1));
        let expect = |v: f32| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8;
        assert_eq!(
            rgb,
            vec![
                expect(0.3512),
                expect(0.2297),
                expect(0.3227),
                expect(0.2120),
                expect(0.2616),
                expect(0.7177)
            ]
        );
        assert_eq!(SDXL.factors.len(), 4);
        assert_eq!((SD3.factors.len(), FLUX.factors.len()), (16, 16));
        assert!(SD3.rgb8(&latents).is_err(), "4 channels are not SD 3's 16");
    }
}
