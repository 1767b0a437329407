//! `UNet2DConditionModel` of the SD 1.x / 2.x / XL families, built from a
//! diffusers `unet/config.json`: sinusoidal time embedding (plus SDXL's
//! `text_time` added embedding of the pooled prompt and the size/crop
//! micro-conditioning), down blocks with optional cross-attention
//! transformers, a cross-attention mid block, and up blocks that consume
//! the skip connections in reverse.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use cyberimage_kernels::conv::{conv2d, Conv2d};
use cyberimage_kernels::group_norm::{group_norm, GroupNorm};
use cyberimage_kernels::linear::{linear, Linear};
use serde::Deserialize;

use crate::error::EngineLoadError;
use crate::layers::blocks::{conv3x3, sinusoidal_embedding, ResnetBlock};
use crate::layers::transformer2d::{SpatialTransformer, SpatialTransformerConfig};
use crate::weights::lora_merge::ParameterTable;
use crate::weights::{read_config, var_builder_and_table};

/// A config value diffusers allows either once for all blocks or per block.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> usize {
        match self {
            Self::One(v) => *v,
            Self::Each(v) => v[i.min(v.len() - 1)],
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    /// Legacy name: in SD 1.x/2.x configs this is the number of heads.
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "one_layer")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
}

impl UNetConfig {
    fn spatial_transformer(&self) -> SpatialTransformerConfig {
        SpatialTransformerConfig {
            cross_attention_dim: self.cross_attention_dim,
            norm_num_groups: self.norm_num_groups,
            use_linear_projection: self.use_linear_projection,
        }
    }
}

/// SDXL's extra conditioning, batched like the latents.
pub struct AddedConditioning {
    /// (batch, projection_dim): the second text encoder's pooled output.
    pub text_embeds: Tensor,
    /// (batch, 6): original height and width, crop top and left, target
    /// height and width.
    pub time_ids: Tensor,
}

/// SDXL's `text_time` embedding: sinusoids of the six size numbers beside
/// the pooled text, through a two-layer MLP, added to the time embedding.
struct TextTimeEmbedding {
    time_dim: usize,
    linear_1: Linear,
    linear_2: Linear,
}

fn one_layer() -> PerBlock {
    PerBlock::One(1)
}

fn yes() -> bool {
    true
}

struct Layer {
    resnet: ResnetBlock,
    transformer: Option<SpatialTransformer>,
}

impl Layer {
    fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.resnet.forward(x, Some(temb))?;
        match &self.transformer {
            Some(t) => t.forward(&x, context),
            None => Ok(x),
        }
    }
}

struct Block {
    layers: Vec<Layer>,
    resample: Option<Conv2d>,
}

pub struct UNet {
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down: Vec<Block>,
    mid_first: ResnetBlock,
    mid_layers: Vec<Layer>,
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    added: Option<TextTimeEmbedding>,
    pub config: UNetConfig,
}

impl UNet {
    pub fn load(folder: &Path, dtype: DType, device: &Device) -> Result<Self, EngineLoadError> {
        Ok(Self::load_with_table(folder, dtype, device)?.0)
    }

    /// As `load`, with the weights by name (for merging LoRAs into them).
    pub fn load_with_table(
        folder: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, ParameterTable), EngineLoadError> {
        let cfg: UNetConfig = read_config(&folder.join("config.json"))?;
        let (vb, table) = var_builder_and_table(folder, dtype, device)?;
        Ok((Self::new(vb, cfg)?, table))
    }

    pub fn new(vb: VarBuilder, cfg: UNetConfig) -> Result<Self, EngineLoadError> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let temb_dim = ch[0] * 4;
        let added = match cfg.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let missing = |field: &str| {
                    EngineLoadError::Unsupported(format!(
                        "UNet config has addition_embed_type \"text_time\" but no {field}"
                    ))
                };
                let time_dim = cfg
                    .addition_time_embed_dim
                    .ok_or_else(|| missing("addition_time_embed_dim"))?;
                let input = cfg
                    .projection_class_embeddings_input_dim
                    .ok_or_else(|| missing("projection_class_embeddings_input_dim"))?;
                let ae = vb.pp("add_embedding");
                Some(TextTimeEmbedding {
                    time_dim,
                    linear_1: linear(input, temb_dim, ae.pp("linear_1"))?,
                    linear_2: linear(temb_dim, temb_dim, ae.pp("linear_2"))?,
                })
            }
            Some(other) => {
                return Err(EngineLoadError::Unsupported(format!(
                    "UNet addition_embed_type {other:?} (only SDXL's \"text_time\" is implemented)"
                )))
            }
        };
        let groups = cfg.norm_num_groups;
        let eps = cfg.norm_eps;
        let heads_of = |i: usize| {
            cfg.num_attention_heads
                .as_ref()
                .unwrap_or(&cfg.attention_head_dim)
                .get(i)
        };
        let layer = |cin: usize,
                     cout: usize,
                     attn: bool,
                     block: usize,
                     vb_block: &VarBuilder,
                     j: usize|
         -> candle_core::Result<Layer> {
            let resnet = ResnetBlock::new(
                cin,
                cout,
                groups,
                eps,
                Some(temb_dim),
                vb_block.pp(format!("resnets.{j}")),
            )?;
            let transformer = attn
                .then(|| {
                    SpatialTransformer::new(
                        cout,
                        heads_of(block),
                        cfg.transformer_layers_per_block.get(block),
                        cfg.spatial_transformer(),
                        vb_block.pp(format!("attentions.{j}")),
                    )
                })
                .transpose()?;
            Ok(Layer {
                resnet,
                transformer,
            })
        };
        let has_attention = |kind: &str| kind.starts_with("CrossAttn");

        let mut down = Vec::new();
        let mut cin = ch[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let vb_block = vb.pp(format!("down_blocks.{i}"));
            let cout = ch[i];
            let layers = (0..cfg.layers_per_block)
                .map(|j| {
                    layer(
                        if j == 0 { cin } else { cout },
                        cout,
                        has_attention(kind),
                        i,
                        &vb_block,
                        j,
                    )
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let resample = if i + 1 < n {
                let cfg2 = Conv2dConfig {
                    padding: 1,
                    stride: 2,
                    ..Default::default()
                };
                Some(conv2d(
                    cout,
                    cout,
                    3,
                    cfg2,
                    vb_block.pp("downsamplers.0.conv"),
                )?)
            } else {
                None
            };
            down.push(Block { layers, resample });
            cin = cout;
        }

        let top = ch[n - 1];
        let mid = vb.pp("mid_block");
        let mid_first =
            ResnetBlock::new(top, top, groups, eps, Some(temb_dim), mid.pp("resnets.0"))?;
        let mid_layers = (0..1)
            .map(|j| -> candle_core::Result<Layer> {
                Ok(Layer {
                    transformer: Some(SpatialTransformer::new(
                        top,
                        heads_of(n - 1),
                        cfg.transformer_layers_per_block.get(n - 1),
                        cfg.spatial_transformer(),
                        mid.pp(format!("attentions.{j}")),
                    )?),
                    resnet: ResnetBlock::new(
                        top,
                        top,
                        groups,
                        eps,
                        Some(temb_dim),
                        mid.pp(format!("resnets.{}", j + 1)),
                    )?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut prev_out = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let vb_block = vb.pp(format!("up_blocks.{i}"));
            let cout = rev[i];
            let skip_in = rev[(i + 1).min(n - 1)];
            let block_index = n - 1 - i;
            let layers = (0..=cfg.layers_per_block)
                .map(|j| {
                    let res_in = if j == 0 { prev_out } else { cout };
                    let skip = if j == cfg.layers_per_block {
                        skip_in
                    } else {
                        cout
                    };
                    // Resnet first, transformer after, as in the up blocks.
                    let l = layer(
                        res_in + skip,
                        cout,
                        has_attention(kind),
                        block_index,
                        &vb_block,
                        j,
                    )?;
                    Ok(l)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let resample = if i + 1 < n {
                Some(conv3x3(cout, cout, vb_block.pp("upsamplers.0.conv"))?)
            } else {
                None
            };
            up.push(Block { layers, resample });
            prev_out = cout;
        }

        let te = vb.pp("time_embedding");
        Ok(Self {
            conv_in: conv3x3(cfg.in_channels, ch[0], vb.pp("conv_in"))?,
            time_linear_1: linear(ch[0], temb_dim, te.pp("linear_1"))?,
            time_linear_2: linear(temb_dim, temb_dim, te.pp("linear_2"))?,
            down,
            mid_first,
            mid_layers,
            up,
            norm_out: group_norm(groups, ch[0], eps, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(ch[0], cfg.out_channels, vb.pp("conv_out"))?,
            added,
            config: cfg,
        })
    }

    /// Whether the model needs `AddedConditioning` (SDXL).
    pub fn needs_added_conditioning(&self) -> bool {
        self.added.is_some()
    }

    /// Predicts noise for `sample` (b, c, h, w) at `timestep`, conditioned on
    /// `context` (b, tokens, cross_attention_dim) and, for SDXL, `added`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> candle_core::Result<Tensor> {
        let b = sample.dim(0)?;
        let cfg = &self.config;
        let dim = cfg.block_out_channels[0];
        let temb = sinusoidal_embedding(&[timestep], dim, cfg.flip_sin_to_cos, cfg.freq_shift);
        let temb = Tensor::from_vec(temb, (1, dim), sample.device())?
            .repeat((b, 1))?
            .to_dtype(sample.dtype())?;
        let mut temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&temb)?.silu()?)?;
        match (&self.added, added) {
            (Some(embedding), Some(added)) => {
                temb = (temb + embedding.forward(added, cfg)?)?;
            }
            (Some(_), None) => {
                return Err(candle_core::Error::Msg(
                    "this UNet (SDXL) needs the pooled text and size conditioning".into(),
                ))
            }
            (None, _) => {}
        }

        let mut x = self.conv_in.forward(sample)?;
        let mut skips = vec![x.clone()];
        for block in &self.down {
            for l in &block.layers {
                x = l.forward(&x, &temb, context)?;
                skips.push(x.clone());
            }
            if let Some(conv) = &block.resample {
                x = conv.forward(&x)?;
                skips.push(x.clone());
            }
        }
        x = self.mid_first.forward(&x, Some(&temb))?;
        for l in &self.mid_layers {
            x = l
                .transformer
                .as_ref()
                .expect("mid layers attend")
                .forward(&x, context)?;
            x = l.resnet.forward(&x, Some(&temb))?;
        }
        for block in &self.up {
            for l in &block.layers {
                let skip = skips.pop().expect("one skip per up layer");
                x = l.forward(&Tensor::cat(&[&x, &skip], 1)?, &temb, context)?;
            }
            if let Some(conv) = &block.resample {
                // Upsample to the size of the skip that comes next, so odd
                // latent sizes line up as in diffusers.
                let (h, w) = match skips.last() {
                    Some(s) => (s.dim(2)?, s.dim(3)?),
                    None => (x.dim(2)? * 2, x.dim(3)? * 2),
                };
                x = conv.forward(&x.upsample_nearest2d(h, w)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }
}

impl TextTimeEmbedding {
    fn forward(&self, added: &AddedConditioning, cfg: &UNetConfig) -> candle_core::Result<Tensor> {
        let (b, n) = added.time_ids.dims2()?;
        let values: Vec<f64> = added
            .time_ids
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let time =
            sinusoidal_embedding(&values, self.time_dim, cfg.flip_sin_to_cos, cfg.freq_shift);
        let time = Tensor::from_vec(time, (b, n * self.time_dim), added.time_ids.device())?
            .to_dtype(added.text_embeds.dtype())?;
        let input = Tensor::cat(&[&added.text_embeds, &time], 1)?;
        self.linear_2
            .forward(&self.linear_1.forward(&input)?.silu()?)
    }
}
