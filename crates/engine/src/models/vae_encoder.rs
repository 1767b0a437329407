//! The AutoencoderKL encoder (pixels → latents), for image-to-image: the
//! same `vae/` folder as the decoder. It gives the latent posterior's mean
//! and standard deviation; a sample is `mean + std · ε` with ε drawn by
//! the caller (so a seed decides it, and tests can feed diffusers' draw).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use cyberimage_kernels::conv::{conv2d, Conv2d};
use cyberimage_kernels::group_norm::{group_norm, GroupNorm};

use crate::error::EngineLoadError;
use crate::layers::blocks::{conv3x3, ResnetBlock};
use crate::models::vae::{SpatialAttention, VaeConfig, NORM_EPS};
use crate::weights::{read_config, var_builder};

struct DownBlock {
    resnets: Vec<ResnetBlock>,
    /// 3×3 stride 2 after padding right and bottom by one (diffusers'
    /// encoder downsampler).
    downsample: Option<Conv2d>,
}

pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: Option<SpatialAttention>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    pub config: VaeConfig,
}

/// The latent posterior of an image: a diagonal Gaussian.
pub struct Posterior {
    pub mean: Tensor,
    pub std: Tensor,
}

impl Posterior {
    /// `mean + std · ε`.
    pub fn sample(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        &self.mean + (&self.std * eps)?
    }
}

impl VaeEncoder {
    pub fn load(folder: &Path, dtype: DType, device: &Device) -> Result<Self, EngineLoadError> {
        let cfg: VaeConfig = read_config(&folder.join("config.json"))?;
        Self::new(var_builder(folder, dtype, device)?, cfg)
    }

    pub fn new(vb: VarBuilder, cfg: VaeConfig) -> Result<Self, EngineLoadError> {
        let groups = cfg.norm_num_groups;
        let channels = &cfg.block_out_channels;
        let first = *channels
            .first()
            .ok_or_else(|| EngineLoadError::Unsupported("VAE without blocks".into()))?;
        let enc = vb.pp("encoder");
        let mut down_blocks = Vec::new();
        let mut prev = first;
        for (i, &cout) in channels.iter().enumerate() {
            let block = enc.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let cin = if j == 0 { prev } else { cout };
                    ResnetBlock::new(
                        cin,
                        cout,
                        groups,
                        NORM_EPS,
                        None,
                        block.pp(format!("resnets.{j}")),
                    )
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let downsample = if i + 1 < channels.len() {
                let stride2 = Conv2dConfig {
                    stride: 2,
                    ..Default::default()
                };
                Some(conv2d(
                    cout,
                    cout,
                    3,
                    stride2,
                    block.pp("downsamplers.0.conv"),
                )?)
            } else {
                None
            };
            down_blocks.push(DownBlock {
                resnets,
                downsample,
            });
            prev = cout;
        }
        let mid = enc.pp("mid_block");
        let mid_resnets = [
            ResnetBlock::new(prev, prev, groups, NORM_EPS, None, mid.pp("resnets.0"))?,
            ResnetBlock::new(prev, prev, groups, NORM_EPS, None, mid.pp("resnets.1"))?,
        ];
        let mid_attention = if cfg.mid_block_add_attention {
            Some(SpatialAttention::new(prev, groups, mid.pp("attentions.0"))?)
        } else {
            None
        };
        let moments = 2 * cfg.latent_channels;
        let quant_conv = if cfg.use_quant_conv {
            Some(conv2d(
                moments,
                moments,
                1,
                Default::default(),
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            conv_in: conv3x3(cfg.in_channels, first, enc.pp("conv_in"))?,
            down_blocks,
            mid_resnets,
            mid_attention,
            norm_out: group_norm(groups, prev, NORM_EPS, enc.pp("conv_norm_out"))?,
            conv_out: conv3x3(prev, moments, enc.pp("conv_out"))?,
            quant_conv,
            config: cfg,
        })
    }

    /// The posterior of `image` (1, 3, h, w) in [-1, 1].
    pub fn posterior(&self, image: &Tensor) -> candle_core::Result<Posterior> {
        let mut x = self.conv_in.forward(image)?;
        for block in &self.down_blocks {
            for r in &block.resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(conv) = &block.downsample {
                x = conv.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?;
            }
        }
        x = self.mid_resnets[0].forward(&x, None)?;
        if let Some(attn) = &self.mid_attention {
            x = attn.forward(&x)?;
        }
        x = self.mid_resnets[1].forward(&x, None)?;
        let mut moments = self.conv_out.forward(&self.norm_out.forward_silu(&x)?)?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments)?;
        }
        let c = self.config.latent_channels;
        let mean = moments.narrow(1, 0, c)?;
        let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok(Posterior { mean, std })
    }

    /// Latents as a denoiser takes them: a posterior sample with noise
    /// `eps`, shifted (SD 3, FLUX) and scaled, the inverse of the
    /// decoder's `decode`.
    pub fn latents(&self, image: &Tensor, eps: &Tensor) -> candle_core::Result<Tensor> {
        self.sample(&self.posterior(image)?, eps)
    }

    /// `latents` from a posterior already computed (an image's posterior
    /// is the same for every sample drawn from it).
    pub fn sample(&self, posterior: &Posterior, eps: &Tensor) -> candle_core::Result<Tensor> {
        let mut z = posterior.sample(eps)?;
        if let Some(shift) = self.config.shift_factor {
            z = (z - shift)?;
        }
        z * self.config.scaling_factor
    }
}
