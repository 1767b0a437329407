//! The UNet's cross-attention transformer (diffusers' `Transformer2DModel`
//! in its continuous-input form): group norm, a 1×1 conv or linear
//! projection to tokens, self-attention + cross-attention + GEGLU blocks,
//! and back to an image with a residual.

use candle_core::{Module, Tensor};
use candle_nn::{layer_norm, Conv2dConfig, LayerNorm, VarBuilder};
use cyberimage_kernels::conv::{conv2d, Conv2d};
use cyberimage_kernels::group_norm::{group_norm, GroupNorm};
use cyberimage_kernels::layout::contiguous;
use cyberimage_kernels::linear::{linear, linear_no_bias, Linear};

use crate::layers::blocks::{multi_head_attention, Mask};
use cyberimage_kernels::activations::geglu;

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
            .forward(&multi_head_attention(&q, &k, &v, self.heads, Mask::None)?)
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
        self.ff_out.forward(&geglu(&proj)?)? + x
    }
}

enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel` in its continuous-input form.
/// What the transformer takes from its network's config.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpatialTransformerConfig {
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    pub use_linear_projection: bool,
}

pub(crate) struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    pub(crate) fn new(
        channels: usize,
        heads: usize,
        layers: usize,
        cfg: SpatialTransformerConfig,
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

    pub(crate) fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let to_tokens = |t: Tensor| contiguous(&t.reshape((b, c, h * w))?.transpose(1, 2)?);
        let to_image = |t: Tensor| contiguous(&t.transpose(1, 2)?)?.reshape((b, c, h, w));
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
