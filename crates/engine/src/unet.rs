//! `UNet2DConditionModel` of the SD 1.x / 2.x families, built from a
//! diffusers `unet/config.json`: sinusoidal time embedding, down blocks with
//! optional cross-attention transformers, a cross-attention mid block, and
//! up blocks that consume the skip connections in reverse.
//!
//! Not yet covered: SDXL's `text_time` added embedding (the config is
//! refused with a clear error rather than run wrongly).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{
    conv2d, group_norm, layer_norm, linear, linear_no_bias, Conv2d, Conv2dConfig, GroupNorm,
    LayerNorm, Linear, VarBuilder,
};
use serde::Deserialize;

use crate::blocks::{conv3x3, multi_head_attention, ResnetBlock};
use crate::weights::{read_config, var_builder};
use crate::EngineLoadError;

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
}

fn one_layer() -> PerBlock {
    PerBlock::One(1)
}

fn yes() -> bool {
    true
}

/// Multi-head attention as in diffusers' `Attention` (no q/k/v bias).
struct MultiHeadAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl MultiHeadAttention {
    fn new(
        dim: usize,
        context_dim: usize,
        heads: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            q: linear_no_bias(dim, dim, vb.pp("to_q"))?,
            k: linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            v: linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            out: linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let q = self.q.forward(x)?;
        let k = self.k.forward(context)?;
        let v = self.v.forward(context)?;
        self.out
            .forward(&multi_head_attention(&q, &k, &v, self.heads, None)?)
    }
}

struct TransformerBlock {
    norm1: LayerNorm,
    attn1: MultiHeadAttention,
    norm2: LayerNorm,
    attn2: MultiHeadAttention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(
        dim: usize,
        context_dim: usize,
        heads: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: MultiHeadAttention::new(dim, dim, heads, vb.pp("attn1"))?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: MultiHeadAttention::new(dim, context_dim, heads, vb.pp("attn2"))?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_in: linear(dim, inner * 2, vb.pp("ff.net.0.proj"))?,
            ff_out: linear(inner, dim, vb.pp("ff.net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let n1 = self.norm1.forward(x)?;
        let x = (self.attn1.forward(&n1, &n1)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, context)? + x)?;
        // GEGLU: the projection holds the value half, then the gate half.
        let proj = self.ff_in.forward(&self.norm3.forward(&x)?)?;
        let half = proj.dim(D::Minus1)? / 2;
        let value = proj.narrow(D::Minus1, 0, half)?;
        let gate = proj.narrow(D::Minus1, half, half)?.gelu_erf()?;
        self.ff_out.forward(&(value * gate)?)? + x
    }
}

enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel` in its continuous-input form.
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    fn new(
        channels: usize,
        heads: usize,
        layers: usize,
        cfg: &UNetConfig,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let proj = |name: &str| -> candle_core::Result<Projection> {
            Ok(if cfg.use_linear_projection {
                Projection::Linear(linear(channels, channels, vb.pp(name))?)
            } else {
                Projection::Conv(conv2d(
                    channels,
                    channels,
                    1,
                    Conv2dConfig::default(),
                    vb.pp(name),
                )?)
            })
        };
        let blocks = (0..layers)
            .map(|i| {
                TransformerBlock::new(
                    channels,
                    cfg.cross_attention_dim,
                    heads,
                    vb.pp(format!("transformer_blocks.{i}")),
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            // diffusers builds this norm with eps 1e-6 whatever norm_eps says.
            norm: group_norm(cfg.norm_num_groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let to_tokens = |t: Tensor| t.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous();
        let to_image = |t: Tensor| t.transpose(1, 2)?.reshape((b, c, h, w));
        let normed = self.norm.forward(x)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(tokens)?)?,
            Projection::Linear(lin) => to_image(lin.forward(&tokens)?)?,
        };
        out + x
    }
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
    pub config: UNetConfig,
}

impl UNet {
    pub fn load(folder: &Path, dtype: DType, device: &Device) -> Result<Self, EngineLoadError> {
        let cfg: UNetConfig = read_config(&folder.join("config.json"))?;
        Self::new(var_builder(folder, dtype, device)?, cfg)
    }

    pub fn new(vb: VarBuilder, cfg: UNetConfig) -> Result<Self, EngineLoadError> {
        if let Some(kind) = &cfg.addition_embed_type {
            return Err(EngineLoadError::Unsupported(format!(
                "UNet addition_embed_type {kind:?} (SDXL micro-conditioning) is not implemented yet"
            )));
        }
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let temb_dim = ch[0] * 4;
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
                        &cfg,
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
                        &cfg,
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
            config: cfg,
        })
    }

    /// Sinusoidal embedding of `timestep` for a batch of `batch`, as
    /// diffusers' `get_timestep_embedding`.
    fn time_embedding(
        &self,
        timestep: f64,
        batch: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let dim = self.config.block_out_channels[0];
        let half = dim / 2;
        let mut emb = Vec::with_capacity(dim);
        let freqs: Vec<f64> = (0..half)
            .map(|i| {
                (-(10000f64.ln()) * i as f64 / (half as f64 - self.config.freq_shift)).exp()
                    * timestep
            })
            .collect();
        let (sin, cos): (Vec<f32>, Vec<f32>) = freqs
            .iter()
            .map(|a| (a.sin() as f32, a.cos() as f32))
            .unzip();
        if self.config.flip_sin_to_cos {
            emb.extend(cos);
            emb.extend(sin);
        } else {
            emb.extend(sin);
            emb.extend(cos);
        }
        Tensor::from_vec(emb, (1, dim), device)?.repeat((batch, 1))
    }

    /// Predicts noise for `sample` (b, c, h, w) at `timestep`, conditioned on
    /// `context` (b, tokens, cross_attention_dim).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let b = sample.dim(0)?;
        let temb = self
            .time_embedding(timestep, b, sample.device())?
            .to_dtype(sample.dtype())?;
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&temb)?.silu()?)?;

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
        self.conv_out.forward(&self.norm_out.forward(&x)?.silu()?)
    }
}
