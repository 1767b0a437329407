//! The AutoencoderKL decoder (latents → pixels), built from a diffusers
//! `vae/config.json`. Shared by SD 1.x/2.x/XL (4 latent channels) and, with
//! its shift factor, by SD3 and FLUX (16 channels).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use cyberimage_kernels::conv::{conv2d, Conv2d};
use cyberimage_kernels::group_norm::{group_norm, GroupNorm};
use cyberimage_kernels::layout::contiguous;
use cyberimage_kernels::linear::{linear, Linear};

use crate::layers::blocks::{attention, conv3x3, Mask, ResnetBlock};
use serde::Deserialize;

use crate::error::EngineLoadError;
use crate::weights::{read_config, var_builder};

/// diffusers builds every VAE norm with this epsilon.
pub(crate) const NORM_EPS: f64 = 1e-6;

#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    pub latent_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "rgb")]
    pub in_channels: usize,
}

fn rgb() -> usize {
    3
}

fn yes() -> bool {
    true
}

/// Single-head self-attention over all pixels, as in the VAE mid block.
pub(crate) struct SpatialAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl SpatialAttention {
    pub(crate) fn new(channels: usize, groups: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm: group_norm(groups, channels, NORM_EPS, vb.pp("group_norm"))?,
            q: linear(channels, channels, vb.pp("to_q"))?,
            k: linear(channels, channels, vb.pp("to_k"))?,
            v: linear(channels, channels, vb.pp("to_v"))?,
            out: linear(channels, channels, vb.pp("to_out.0"))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = contiguous(
            &self
                .norm
                .forward(x)?
                .reshape((b, c, h * w))?
                .transpose(1, 2)?,
        )?;
        let q = self.q.forward(&tokens)?;
        let k = self.k.forward(&tokens)?;
        let v = self.v.forward(&tokens)?;
        let attended =
            self.out
                .forward(&attention(&q, &k, &v, (c as f64).powf(-0.5), Mask::None)?)?;
        let attended = contiguous(&attended.transpose(1, 2)?)?.reshape((b, c, h, w))?;
        x + attended
    }
}

struct UpBlock {
    resnets: Vec<ResnetBlock>,
    upsample: Option<Conv2d>,
}

pub struct VaeDecoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: Option<SpatialAttention>,
    up_blocks: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    pub config: VaeConfig,
}

impl VaeDecoder {
    pub fn load(folder: &Path, dtype: DType, device: &Device) -> Result<Self, EngineLoadError> {
        let cfg: VaeConfig = read_config(&folder.join("config.json"))?;
        Self::new(var_builder(folder, dtype, device)?, cfg)
    }

    pub fn new(vb: VarBuilder, cfg: VaeConfig) -> Result<Self, EngineLoadError> {
        let groups = cfg.norm_num_groups;
        let channels: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let top = *channels
            .first()
            .ok_or_else(|| EngineLoadError::Unsupported("VAE without blocks".into()))?;
        let dec = vb.pp("decoder");
        let post_quant_conv = if cfg.use_post_quant_conv {
            Some(conv2d(
                cfg.latent_channels,
                cfg.latent_channels,
                1,
                Default::default(),
                vb.pp("post_quant_conv"),
            )?)
        } else {
            None
        };
        let mid = dec.pp("mid_block");
        let mid_resnets = [
            ResnetBlock::new(top, top, groups, NORM_EPS, None, mid.pp("resnets.0"))?,
            ResnetBlock::new(top, top, groups, NORM_EPS, None, mid.pp("resnets.1"))?,
        ];
        let mid_attention = if cfg.mid_block_add_attention {
            Some(SpatialAttention::new(top, groups, mid.pp("attentions.0"))?)
        } else {
            None
        };
        let mut up_blocks = Vec::new();
        let mut prev = top;
        for (i, &cout) in channels.iter().enumerate() {
            let vb_block = dec.pp(format!("up_blocks.{i}"));
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| {
                    let cin = if j == 0 { prev } else { cout };
                    ResnetBlock::new(
                        cin,
                        cout,
                        groups,
                        NORM_EPS,
                        None,
                        vb_block.pp(format!("resnets.{j}")),
                    )
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let upsample = if i + 1 < channels.len() {
                Some(conv3x3(cout, cout, vb_block.pp("upsamplers.0.conv"))?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsample });
            prev = cout;
        }
        Ok(Self {
            post_quant_conv,
            conv_in: conv3x3(cfg.latent_channels, top, dec.pp("conv_in"))?,
            mid_resnets,
            mid_attention,
            up_blocks,
            norm_out: group_norm(groups, prev, NORM_EPS, dec.pp("conv_norm_out"))?,
            conv_out: conv3x3(prev, cfg.out_channels, dec.pp("conv_out"))?,
            config: cfg,
        })
    }

    /// Decodes *scaled* latents, as a denoiser produces them: undoes the
    /// scaling (and shift) first. Output is in [-1, 1] (not clamped).
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        let mut z = (latents / self.config.scaling_factor)?;
        if let Some(shift) = self.config.shift_factor {
            z = (z + shift)?;
        }
        self.decode_unscaled(&z)
    }

    /// Decodes latents already divided by the scaling factor.
    pub fn decode_unscaled(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z)?,
            None => z.clone(),
        };
        let mut x = self.conv_in.forward(&z)?;
        x = self.mid_resnets[0].forward(&x, None)?;
        if let Some(attn) = &self.mid_attention {
            x = attn.forward(&x)?;
        }
        x = self.mid_resnets[1].forward(&x, None)?;
        for block in &self.up_blocks {
            for r in &block.resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(conv) = &block.upsample {
                let (_, _, h, w) = x.dims4()?;
                x = conv.forward(&x.upsample_nearest2d(h * 2, w * 2)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }

    /// Latents → (h, w, 3) floats in [0, 1] for a batch of one, diffusers'
    /// `output_type="np"`: `(x / 2 + 0.5).clamp(0, 1)`.
    pub fn decode_unit(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        let image = self.decode(latents)?;
        let image = ((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
        image.squeeze(0)?.permute((1, 2, 0))?.contiguous()
    }
}

/// (h, w, 3) floats in [0, 1] → (width, height, RGB8 row-major), as
/// diffusers' `output_type="pil"` rounds them.
pub fn unit_to_rgb8(image: &Tensor) -> Result<(usize, usize, Vec<u8>), EngineLoadError> {
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
