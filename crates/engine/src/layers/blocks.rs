//! Building blocks shared by the UNet and the VAE.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use cyberimage_kernels::conv::{conv2d, Conv2d};
use cyberimage_kernels::group_norm::{group_norm, GroupNorm};
use cyberimage_kernels::layout::contiguous;
use cyberimage_kernels::linear::{linear, Linear};
use cyberimage_kernels::softmax::softmax_last_dim_in_place;

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
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&t.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Scores per chunk of queries: 2 Mi floats (8 MiB) stay in cache, where a
/// full 4096×4096 score matrix per head (SD at 512²) would stream about
/// 1 GiB through memory for each of the softmax's passes.
const CHUNK_SCORES: usize = 1 << 21;

/// Query rows a chunk should have at least, for efficient matrix products.
const MIN_ROWS: usize = 256;

/// What attention does to its scores before the softmax.
#[derive(Clone, Copy)]
pub enum Mask<'a> {
    None,
    /// Each query sees itself and the keys before it (CLIP's text
    /// encoder). The tensor is the same mask as an additive (tokens,
    /// tokens) −∞ triangle, for the paths the kernel does not take.
    Causal(&'a Tensor),
    /// An additive bias broadcast over the scores (T5's positions).
    Additive(&'a Tensor),
}

impl<'a> Mask<'a> {
    fn additive(self) -> Option<&'a Tensor> {
        match self {
            Mask::None => None,
            Mask::Causal(t) | Mask::Additive(t) => Some(t),
        }
    }
}

/// Scaled dot-product attention over (batch·heads, tokens, head_dim)
/// operands, masked as `mask` says. Unmasked and causal f32 attention on
/// the CPU is the kernels' (`cyberimage_kernels::attention`); elsewhere large
/// unmasked attentions run in chunks (a few heads × at least 256 query
/// rows), so the full score matrix is never materialised. Everything is made contiguous:
/// candle 0.11's CPU batched matmul is wrong for a transposed left operand
/// with batch > 1 (issue #3744).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Mask,
) -> candle_core::Result<Tensor> {
    let kt = contiguous(&k.t()?)?;
    let v = contiguous(v)?;
    let (bh, nq, _) = q.dims3()?;
    let nk = kt.dim(2)?;
    let causal = matches!(mask, Mask::Causal(_));
    let kernel = match mask {
        Mask::None => true,
        Mask::Causal(_) => nq == nk,
        Mask::Additive(_) => false,
    };
    if kernel && q.device().is_cpu() && q.dtype() == candle_core::DType::F32 {
        let bf16 = cyberimage_kernels::bf16_gemm::in_use();
        return cyberimage_kernels::attention::attention(q, &kt, &v, scale, bf16, causal);
    }
    let mask = mask.additive();
    if mask.is_some() || bh * nq * nk <= CHUNK_SCORES {
        let mut scores = (q.contiguous()?.matmul(&kt)? * scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        return softmax_last_dim_in_place(scores)?.matmul(&v);
    }
    // Scaling the queries first saves a pass over every score.
    let q = (q * scale)?.contiguous()?;
    // Chunks span few heads and many query rows: thin chunks (a few rows
    // across every head) make poor matrix products.
    let heads_per_chunk = (CHUNK_SCORES / (MIN_ROWS * nk)).clamp(1, bh);
    let rows = (CHUNK_SCORES / (heads_per_chunk * nk)).max(1);
    let mut per_heads = Vec::with_capacity(bh.div_ceil(heads_per_chunk));
    for head in (0..bh).step_by(heads_per_chunk) {
        let group = heads_per_chunk.min(bh - head);
        let (qh, kh, vh) = (
            q.narrow(0, head, group)?,
            kt.narrow(0, head, group)?,
            v.narrow(0, head, group)?,
        );
        let (kh, vh) = (kh.contiguous()?, vh.contiguous()?);
        let mut out = Vec::with_capacity(nq.div_ceil(rows));
        for start in (0..nq).step_by(rows) {
            let len = rows.min(nq - start);
            let chunk = qh.narrow(1, start, len)?.contiguous()?;
            let probs = softmax_last_dim_in_place(chunk.matmul(&kh)?)?;
            out.push(probs.matmul(&vh)?);
        }
        per_heads.push(Tensor::cat(&out, 1)?);
    }
    Tensor::cat(&per_heads, 0)
}

/// Multi-head attention on projected (batch, tokens, dim) queries, keys and
/// values: splits `heads`, attends with scale head_dim^-0.5, merges back.
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Mask,
) -> candle_core::Result<Tensor> {
    let (b, n, dim) = q.dims3()?;
    let head_dim = dim / heads;
    let scale = (head_dim as f64).powf(-0.5);
    let (q, k, v) = (
        split_heads(q, heads)?,
        split_heads(k, heads)?,
        split_heads(v, heads)?,
    );
    merge_heads(
        &attention(&q, &k, &v, scale, mask)?,
        (b, heads, n, head_dim),
    )
}

/// (batch, tokens, heads·head_dim) projections → (batch·heads, tokens,
/// head_dim), copied on every thread.
pub fn split_heads(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, tokens, dim) = t.dims3()?;
    let head_dim = dim / heads;
    contiguous(&t.reshape((b, tokens, heads, head_dim))?.transpose(1, 2)?)?.reshape((
        b * heads,
        tokens,
        head_dim,
    ))
}

/// (batch·heads, tokens, head_dim) attention output → (batch, tokens,
/// heads·head_dim), copied on every thread.
pub fn merge_heads(
    x: &Tensor,
    (b, heads, n, head_dim): (usize, usize, usize, usize),
) -> candle_core::Result<Tensor> {
    contiguous(&x.reshape((b, heads, n, head_dim))?.transpose(1, 2)?)?.reshape((
        b,
        n,
        heads * head_dim,
    ))
}

/// diffusers' `get_timestep_embedding` for each of `values`, concatenated:
/// `dim` numbers per value, frequencies exp(-ln(10000)·i / (dim/2 − shift)),
/// cosines first when `flip_sin_to_cos`.
pub fn sinusoidal_embedding(
    values: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
) -> Vec<f32> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(values.len() * dim);
    for &value in values {
        let angles =
            (0..half).map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() * value);
        let (sin, cos): (Vec<f32>, Vec<f32>) =
            angles.map(|a| (a.sin() as f32, a.cos() as f32)).unzip();
        if flip_sin_to_cos {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn chunked_attention_equals_the_full_score_matrix() {
        let dev = Device::Cpu;
        // 2 · 2048 · 1100 scores: over the chunk limit, with a ragged last chunk.
        let q = Tensor::randn(0f32, 1., (2, 2048, 40), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 1100, 40), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, 1100, 40), &dev).unwrap();
        let scale = 40f64.powf(-0.5);
        let chunked = attention(&q, &k, &v, scale, Mask::None).unwrap();
        let scores = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * scale).unwrap();
        let full = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v)
            .unwrap();
        assert_eq!(chunked.dims(), full.dims());
        let err = cyberimage_kernels::relative_error(&chunked, &full).unwrap();
        assert!(err < 1e-5, "relative error {err}");
    }

    #[test]
    fn chunks_over_groups_of_heads_equal_the_full_score_matrix() {
        let dev = Device::Cpu;
        // 13 heads of 2048² scores: groups of 4 heads (a ragged last group)
        // in chunks of 256 query rows.
        let q = Tensor::randn(0f32, 1., (13, 2048, 16), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (13, 2048, 16), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (13, 2048, 16), &dev).unwrap();
        let chunked = attention(&q, &k, &v, 0.25, Mask::None).unwrap();
        let scores = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * 0.25).unwrap();
        let full = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v)
            .unwrap();
        let err = cyberimage_kernels::relative_error(&chunked, &full).unwrap();
        assert!(err < 1e-5, "relative error {err}");
    }
}
