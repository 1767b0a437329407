//! Building blocks shared by the UNet and the VAE.

use candle_core::{Module, Tensor};
use candle_nn::{conv2d, group_norm, linear, Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};

pub fn conv3x3(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(cin, cout, 3, cfg, vb)
}

/// diffusers' `ResnetBlock2D` (default time-scale-shift, output scale 1):
/// two norm-SiLU-conv stages, the time embedding added in between, and a
/// 1×1 shortcut when the channel count changes.
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn new(
        cin: usize,
        cout: usize,
        groups: usize,
        eps: f64,
        temb_dim: Option<usize>,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let shortcut = if cin != cout {
            Some(conv2d(
                cin,
                cout,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        let time_emb_proj = temb_dim
            .map(|d| linear(d, cout, vb.pp("time_emb_proj")))
            .transpose()?;
        Ok(Self {
            norm1: group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: conv3x3(cin, cout, vb.pp("conv1"))?,
            time_emb_proj,
            norm2: group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: conv3x3(cout, cout, vb.pp("conv2"))?,
            shortcut,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&t.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Scaled dot-product attention over (batch·heads, tokens, head_dim)
/// operands, with an optional additive mask broadcast over the scores.
/// Everything is made contiguous: candle 0.11's CPU batched matmul is wrong
/// for a transposed left operand with batch > 1 (issue #3744).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let mut scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v.contiguous()?)
}

/// Multi-head attention on projected (batch, tokens, dim) queries, keys and
/// values: splits `heads`, attends with scale head_dim^-0.5, merges back.
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (b, n, dim) = q.dims3()?;
    let head_dim = dim / heads;
    let split = |t: &Tensor| -> candle_core::Result<Tensor> {
        let tokens = t.dim(1)?;
        t.reshape((b, tokens, heads, head_dim))?
            .transpose(1, 2)?
            .reshape((b * heads, tokens, head_dim))?
            .contiguous()
    };
    let scale = (head_dim as f64).powf(-0.5);
    attention(&split(q)?, &split(k)?, &split(v)?, scale, mask)?
        .reshape((b, heads, n, head_dim))?
        .transpose(1, 2)?
        .reshape((b, n, dim))
}
