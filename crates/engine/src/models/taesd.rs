//! The tiny autoencoder's decoder (madebyollin's TAESD; diffusers'
//! `AutoencoderTiny`): latents to a picture in a few milliseconds, for live
//! previews. The same architecture serves every latent space (TAESD and
//! TAESDXL with 4 channels, TAESD3 and TAEF1 with 16): a soft clamp
//! (`tanh(x / 3) · 3`), a convolution and ReLU, then stages of residual
//! blocks (three 3×3 convolutions with ReLU between, ReLU after the sum)
//! separated by ×2 nearest-neighbour upsampling and a convolution, and the
//! output convolution to RGB in [0, 1].
//!
//! Read from either layout people have: diffusers' (`decoder.layers.N…`)
//! or the original files ComfyUI keeps in `models/vae_approx/`
//! (`taesd_decoder.safetensors`: the same sequence with the clamp as layer
//! 0, so every index one higher). The layer list is read from the indices
//! present: a convolution or a block where weights are, and in the gaps
//! the clamp (before the first convolution), the ReLU (right after it) or
//! an upsampling step (everywhere else).

use std::collections::HashMap;

use candle_core::{Module, Tensor};
use cyberimage_kernels::conv::Conv2d;

use super::upscalers::same_conv;
use crate::error::EngineLoadError;

/// A residual block: `relu(conv(relu(conv(relu(conv(x))))) + skip(x))`.
struct Block {
    convs: [Conv2d; 3],
    /// A 1×1 convolution when the channel count changes.
    skip: Option<Conv2d>,
}

enum Layer {
    Conv(Conv2d),
    Relu,
    // Boxed: a block holds three convolutions, the other variants one or none.
    Block(Box<Block>),
    Upsample,
}

pub struct TinyDecoder {
    layers: Vec<Layer>,
    latent_channels: usize,
}

impl TinyDecoder {
    /// The decoder in `path`: a weights file (safetensors or `.pth`), or
    /// a diffusers `AutoencoderTiny` folder.
    pub fn read(
        path: &std::path::Path,
        device: &candle_core::Device,
    ) -> Result<Self, EngineLoadError> {
        let file = if path.is_dir() {
            path.join("diffusion_pytorch_model.safetensors")
        } else {
            path.to_path_buf()
        };
        Self::from_tensors(crate::weights::upscaler_file::read_upscaler_tensors(
            &file, device,
        )?)
    }

    pub fn from_tensors(mut t: HashMap<String, Tensor>) -> Result<Self, EngineLoadError> {
        let prefix = if t.keys().any(|k| k.starts_with("decoder.layers.")) {
            "decoder.layers."
        } else {
            ""
        };
        let index_of = |key: &str| -> Option<usize> {
            key.strip_prefix(prefix)?.split('.').next()?.parse().ok()
        };
        let last = t.keys().filter_map(|k| index_of(k)).max().ok_or_else(|| {
            EngineLoadError::Unsupported("no tiny-autoencoder decoder layers in the file".into())
        })?;
        let mut layers = Vec::new();
        let mut seen_conv = false;
        let mut latent_channels = 0;
        for i in 0..=last {
            let at = format!("{prefix}{i}");
            if t.contains_key(&format!("{at}.conv.0.weight")) {
                let mut conv = |j: usize| same_conv(&mut t, &format!("{at}.conv.{j}"));
                let convs = [conv(0)?, conv(2)?, conv(4)?];
                let skip = match t.contains_key(&format!("{at}.skip.weight")) {
                    true => Some(same_conv(&mut t, &format!("{at}.skip"))?),
                    false => None,
                };
                layers.push(Layer::Block(Box::new(Block { convs, skip })));
            } else if t.contains_key(&format!("{at}.weight")) {
                if !seen_conv {
                    latent_channels = t[&format!("{at}.weight")].dim(1)?;
                }
                layers.push(Layer::Conv(same_conv(&mut t, &at)?));
                if !seen_conv {
                    seen_conv = true;
                    // The ReLU after the first convolution has no weights:
                    // its index is the next gap.
                    continue;
                }
            } else if !seen_conv {
                // The original files' clamp, layer 0: applied in `decode`.
                continue;
            } else if layers.len() == 1 {
                layers.push(Layer::Relu);
            } else {
                layers.push(Layer::Upsample);
            }
        }
        if !seen_conv || !matches!(layers.last(), Some(Layer::Conv(_))) {
            return Err(EngineLoadError::Unsupported(
                "not a tiny-autoencoder decoder: it must start and end with a convolution".into(),
            ));
        }
        if let Some(name) = t
            .keys()
            .find(|k| k.starts_with(prefix) && index_of(k).is_some())
        {
            return Err(EngineLoadError::Unsupported(format!(
                "tiny-autoencoder tensor {name} fits no layer"
            )));
        }
        Ok(Self {
            layers,
            latent_channels,
        })
    }

    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    /// Latents (1, C, h, w), as the full VAE's decoder would take them →
    /// a picture (1, 3, 8h, 8w) in about [0, 1] (unclamped).
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = ((latents / 3.0)?.tanh()? * 3.0)?;
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(conv) => conv.forward(&x)?,
                Layer::Relu => x.relu()?,
                Layer::Upsample => {
                    let (_, _, h, w) = x.dims4()?;
                    x.upsample_nearest2d(h * 2, w * 2)?
                }
                Layer::Block(block) => {
                    let mut y = x.clone();
                    for (i, conv) in block.convs.iter().enumerate() {
                        y = conv.forward(&y)?;
                        if i < 2 {
                            y = y.relu()?;
                        }
                    }
                    let skip = match &block.skip {
                        Some(conv) => conv.forward(&x)?,
                        None => x.clone(),
                    };
                    (y + skip)?.relu()?
                }
            };
        }
        Ok(x)
    }
}
