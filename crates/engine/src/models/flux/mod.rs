//! The FLUX.1 transformer (diffusers' `FluxTransformer2DModel`, BFL's
//! `Flux`): double-stream blocks where text and image tokens keep their
//! own weights but attend jointly, then single-stream blocks over the
//! concatenated sequence with attention and MLP in parallel. Every block is
//! modulated (shift, scale, gate) by one conditioning vector: the timestep,
//! the distilled guidance (dev) and the pooled CLIP text. Positions enter
//! as rotary embeddings over three axes (text index, row, column).
//!
//! Weights come from `FluxWeights` in the BFL layout, dense or quantized.

pub mod lora;
pub mod names;
pub mod weights;

use candle_core::{Device, Module, Tensor};
use serde::Deserialize;

use crate::error::EngineLoadError;
use crate::layers::blocks::{attention, merge_heads, sinusoidal_embedding, Mask};
use crate::layers::modulation::{chunks, modulate, rms_norm};
use crate::models::flux::weights::{FluxWeights, QLinear};
use cyberimage_kernels::activations::gelu_tanh;
use cyberimage_kernels::layout::contiguous;

/// Sinusoid width of the timestep and guidance embeddings.
const TIME_CHANNELS: usize = 256;

#[derive(Clone, Debug, Deserialize)]
pub struct FluxConfig {
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub pooled_projection_dim: usize,
    #[serde(default)]
    pub guidance_embeds: bool,
    #[serde(default = "default_axes")]
    pub axes_dims_rope: Vec<usize>,
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
}

fn default_in_channels() -> usize {
    64
}
fn default_axes() -> Vec<usize> {
    vec![16, 56, 56]
}
fn default_patch() -> usize {
    1
}

impl FluxConfig {
    /// The config of a BFL-layout checkpoint with no `config.json` (a single
    /// file or a GGUF): sizes from the tensors; RoPE axes are FLUX.1's
    /// (16, 56, 56) and need a head size of 128.
    pub fn infer(weights: &FluxWeights) -> Result<Self, EngineLoadError> {
        let dims = |name: &str| {
            weights.get(name).map(|w| w.dims()).ok_or_else(|| {
                EngineLoadError::Unsupported(format!("not a FLUX transformer: no {name}"))
            })
        };
        let img_in = dims("img_in.weight")?;
        let head_dim = dims("double_blocks.0.img_attn.norm.query_norm.scale")?[0];
        let count = |prefix: &str| {
            (0..)
                .take_while(|i| {
                    weights.contains(&format!("{prefix}.{i}.linear2.weight"))
                        || weights.contains(&format!("{prefix}.{i}.img_attn.qkv.weight"))
                })
                .count()
        };
        let axes = default_axes();
        if axes.iter().sum::<usize>() != head_dim {
            return Err(EngineLoadError::Unsupported(format!(
                "FLUX checkpoint with head size {head_dim}: put its config.json beside it"
            )));
        }
        Ok(Self {
            in_channels: img_in[1],
            num_layers: count("double_blocks"),
            num_single_layers: count("single_blocks"),
            attention_head_dim: head_dim,
            num_attention_heads: img_in[0] / head_dim,
            joint_attention_dim: dims("txt_in.weight")?[1],
            pooled_projection_dim: dims("vector_in.in_layer.weight")?[1],
            guidance_embeds: weights.contains("guidance_in.in_layer.weight"),
            axes_dims_rope: axes,
            out_channels: None,
            patch_size: 1,
        })
    }

    fn hidden(&self) -> usize {
        self.attention_head_dim * self.num_attention_heads
    }
}

/// The linears of `weights` as LoRAs reach them, by their shapes alone
/// (every 2-D `….weight` of the BFL layout is a linear): for checking
/// LoRAs before the model is loaded. Nothing can be merged into it.
pub fn lora_target_of_shapes(weights: &FluxWeights, config: &FluxConfig) -> lora::FluxLoraTarget {
    let slots = weights
        .names()
        .filter(|name| name.ends_with(".weight"))
        .filter_map(|name| {
            let dims = weights.get(name)?.dims();
            (dims.len() == 2).then(|| {
                (
                    name.clone(),
                    lora::LoraSlot {
                        dims,
                        dense: Vec::new(),
                        adapter: None,
                    },
                )
            })
        })
        .collect();
    lora::FluxLoraTarget::new(
        slots,
        config.hidden(),
        config.num_layers,
        config.num_single_layers,
        config.guidance_embeds,
    )
}

struct Mlp {
    in_layer: QLinear,
    out_layer: QLinear,
}

impl Mlp {
    fn new(
        w: &FluxWeights,
        prefix: &str,
        input: usize,
        hidden: usize,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            in_layer: w.linear(&format!("{prefix}.in_layer"), input, hidden)?,
            out_layer: w.linear(&format!("{prefix}.out_layer"), hidden, hidden)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.out_layer.forward(&self.in_layer.forward(x)?.silu()?)
    }
}

/// RMS norms of queries and keys over the head dimension.
struct QkNorm {
    query: Tensor,
    key: Tensor,
}

impl QkNorm {
    fn new(w: &FluxWeights, prefix: &str) -> candle_core::Result<Self> {
        Ok(Self {
            query: w.dense(&format!("{prefix}.query_norm.scale"))?,
            key: w.dense(&format!("{prefix}.key_norm.scale"))?,
        })
    }
}

/// (batch, tokens, 3·hidden) → q, k, v as (batch, heads, tokens, head_dim),
/// q and k normed.
fn split_qkv(
    qkv: &Tensor,
    heads: usize,
    norm: &QkNorm,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (b, n, three_h) = qkv.dims3()?;
    let head_dim = three_h / 3 / heads;
    let qkv = qkv
        .reshape((b, n, 3, heads, head_dim))?
        .permute((2, 0, 3, 1, 4))?;
    let q = rms_norm(&contiguous(&qkv.get(0)?)?, &norm.query)?;
    let k = rms_norm(&contiguous(&qkv.get(1)?)?, &norm.key)?;
    Ok((q, k, contiguous(&qkv.get(2)?)?))
}

/// Rotary position embedding: cos and sin per (token, head_dim), each
/// frequency repeated for the pair of channels it rotates.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// `ids`: per token, its position on each axis.
    fn new(ids: &[[f64; 3]], axes: &[usize], device: &Device) -> candle_core::Result<Self> {
        let head_dim: usize = axes.iter().sum();
        let mut cos = Vec::with_capacity(ids.len() * head_dim);
        let mut sin = Vec::with_capacity(ids.len() * head_dim);
        for id in ids {
            for (axis, &dim) in axes.iter().enumerate() {
                for j in 0..dim / 2 {
                    let freq = 1.0 / 10000f64.powf((2 * j) as f64 / dim as f64);
                    let angle = id[axis] * freq;
                    for _ in 0..2 {
                        cos.push(angle.cos() as f32);
                        sin.push(angle.sin() as f32);
                    }
                }
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (ids.len(), head_dim), device)?,
            sin: Tensor::from_vec(sin, (ids.len(), head_dim), device)?,
        })
    }

    /// x (batch, heads, tokens, head_dim): each channel pair (a, b) becomes
    /// (a·cos − b·sin, b·cos + a·sin).
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, n, d) = x.dims4()?;
        let pairs = x.reshape((b, h, n, d / 2, 2))?;
        let even = pairs.narrow(4, 0, 1)?;
        let odd = pairs.narrow(4, 1, 1)?;
        let rotated = Tensor::cat(&[&odd.neg()?, &even], 4)?.reshape((b, h, n, d))?;
        x.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?
    }
}

/// Joint attention over (batch, heads, tokens, head_dim) operands with
/// RoPE on queries and keys; returns (batch, tokens, hidden).
fn rope_attention(q: &Tensor, k: &Tensor, v: &Tensor, rope: &Rope) -> candle_core::Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let flat = |t: Tensor| t.reshape((b * h, n, d))?.contiguous();
    let q = flat(rope.apply(q)?)?;
    let k = flat(rope.apply(k)?)?;
    let v = flat(v.clone())?;
    merge_heads(
        &attention(&q, &k, &v, (d as f64).powf(-0.5), Mask::None)?,
        (b, h, n, d),
    )
}

struct StreamWeights {
    modulation: QLinear,
    qkv: QLinear,
    norm: QkNorm,
    proj: QLinear,
    mlp_in: QLinear,
    mlp_out: QLinear,
}

impl StreamWeights {
    fn new(w: &FluxWeights, block: &str, stream: &str, hidden: usize) -> candle_core::Result<Self> {
        let mlp = hidden * 4;
        Ok(Self {
            modulation: w.linear(&format!("{block}.{stream}_mod.lin"), hidden, 6 * hidden)?,
            qkv: w.linear(&format!("{block}.{stream}_attn.qkv"), hidden, 3 * hidden)?,
            norm: QkNorm::new(w, &format!("{block}.{stream}_attn.norm"))?,
            proj: w.linear(&format!("{block}.{stream}_attn.proj"), hidden, hidden)?,
            mlp_in: w.linear(&format!("{block}.{stream}_mlp.0"), hidden, mlp)?,
            mlp_out: w.linear(&format!("{block}.{stream}_mlp.2"), mlp, hidden)?,
        })
    }
}

struct DoubleBlock {
    img: StreamWeights,
    txt: StreamWeights,
    heads: usize,
}

impl DoubleBlock {
    fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        rope: &Rope,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let img_mod = chunks(&self.img.modulation.forward(vec)?, 6)?;
        let txt_mod = chunks(&self.txt.modulation.forward(vec)?, 6)?;
        let img_in = modulate(img, &img_mod[0], &img_mod[1])?;
        let txt_in = modulate(txt, &txt_mod[0], &txt_mod[1])?;
        let (iq, ik, iv) = split_qkv(&self.img.qkv.forward(&img_in)?, self.heads, &self.img.norm)?;
        let (tq, tk, tv) = split_qkv(&self.txt.qkv.forward(&txt_in)?, self.heads, &self.txt.norm)?;
        let joint = |t: &Tensor, i: &Tensor| Tensor::cat(&[t, i], 2);
        let attended = rope_attention(
            &joint(&tq, &iq)?,
            &joint(&tk, &ik)?,
            &joint(&tv, &iv)?,
            rope,
        )?;
        let text_len = txt.dim(1)?;
        let txt_attn = attended.narrow(1, 0, text_len)?;
        let img_attn = attended.narrow(1, text_len, img.dim(1)?)?;

        let stream = |x: &Tensor, attn: &Tensor, m: &[Tensor], wts: &StreamWeights| {
            let x = (x + wts.proj.forward(attn)?.broadcast_mul(&m[2].unsqueeze(1)?)?)?;
            let hidden = gelu_tanh(&wts.mlp_in.forward(&modulate(&x, &m[3], &m[4])?)?)?;
            &x + wts
                .mlp_out
                .forward(&hidden)?
                .broadcast_mul(&m[5].unsqueeze(1)?)?
        };
        Ok((
            stream(img, &img_attn, &img_mod, &self.img)?,
            stream(txt, &txt_attn, &txt_mod, &self.txt)?,
        ))
    }
}

struct SingleBlock {
    modulation: QLinear,
    linear1: QLinear,
    linear2: QLinear,
    norm: QkNorm,
    heads: usize,
    hidden: usize,
}

impl SingleBlock {
    fn forward(&self, x: &Tensor, vec: &Tensor, rope: &Rope) -> candle_core::Result<Tensor> {
        let m = chunks(&self.modulation.forward(vec)?, 3)?;
        let fused = self.linear1.forward(&modulate(x, &m[0], &m[1])?)?;
        let qkv = fused.narrow(2, 0, 3 * self.hidden)?;
        let mlp = fused.narrow(2, 3 * self.hidden, fused.dim(2)? - 3 * self.hidden)?;
        let (q, k, v) = split_qkv(&qkv.contiguous()?, self.heads, &self.norm)?;
        let attended = rope_attention(&q, &k, &v, rope)?;
        let out = self
            .linear2
            .forward(&Tensor::cat(&[&attended, &gelu_tanh(&mlp)?], 2)?)?;
        x + out.broadcast_mul(&m[2].unsqueeze(1)?)?
    }
}

pub struct FluxTransformer {
    img_in: QLinear,
    txt_in: QLinear,
    time_in: Mlp,
    guidance_in: Option<Mlp>,
    vector_in: Mlp,
    double: Vec<DoubleBlock>,
    single: Vec<SingleBlock>,
    final_modulation: QLinear,
    final_linear: QLinear,
    lora: lora::FluxLoraTarget,
    pub config: FluxConfig,
}

impl FluxTransformer {
    pub fn new(w: &FluxWeights, config: FluxConfig) -> Result<Self, EngineLoadError> {
        if config.patch_size != 1 {
            return Err(EngineLoadError::Unsupported(format!(
                "FLUX patch_size {}",
                config.patch_size
            )));
        }
        let h = config.hidden();
        let heads = config.num_attention_heads;
        let out = config.out_channels.unwrap_or(config.in_channels);
        let double = (0..config.num_layers)
            .map(|i| -> candle_core::Result<DoubleBlock> {
                let block = format!("double_blocks.{i}");
                Ok(DoubleBlock {
                    img: StreamWeights::new(w, &block, "img", h)?,
                    txt: StreamWeights::new(w, &block, "txt", h)?,
                    heads,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let single = (0..config.num_single_layers)
            .map(|i| -> candle_core::Result<SingleBlock> {
                let block = format!("single_blocks.{i}");
                Ok(SingleBlock {
                    modulation: w.linear(&format!("{block}.modulation.lin"), h, 3 * h)?,
                    linear1: w.linear(&format!("{block}.linear1"), h, 3 * h + 4 * h)?,
                    linear2: w.linear(&format!("{block}.linear2"), h + 4 * h, h)?,
                    norm: QkNorm::new(w, &format!("{block}.norm"))?,
                    heads,
                    hidden: h,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            img_in: w.linear("img_in", config.in_channels, h)?,
            txt_in: w.linear("txt_in", config.joint_attention_dim, h)?,
            time_in: Mlp::new(w, "time_in", TIME_CHANNELS, h)?,
            guidance_in: if config.guidance_embeds {
                Some(Mlp::new(w, "guidance_in", TIME_CHANNELS, h)?)
            } else {
                None
            },
            vector_in: Mlp::new(w, "vector_in", config.pooled_projection_dim, h)?,
            double,
            single,
            final_modulation: w.linear("final_layer.adaLN_modulation.1", h, 2 * h)?,
            final_linear: w.linear("final_layer.linear", h, out)?,
            lora: lora::FluxLoraTarget::new(
                w.take_lora_slots(),
                h,
                config.num_layers,
                config.num_single_layers,
                config.guidance_embeds,
            ),
            config,
        })
    }

    /// Its linears as LoRAs reach them.
    pub fn lora_target(&self) -> &lora::FluxLoraTarget {
        &self.lora
    }

    /// Positions: text tokens all at (0, 0, 0), image token (row, col) at
    /// (0, row, col), in the packed latents' row-major order.
    pub fn rope(
        &self,
        text_len: usize,
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> candle_core::Result<Rope> {
        let ids: Vec<[f64; 3]> = std::iter::repeat_n([0.0; 3], text_len)
            .chain((0..rows).flat_map(|r| (0..cols).map(move |c| [0.0, r as f64, c as f64])))
            .collect();
        Rope::new(&ids, &self.config.axes_dims_rope, device)
    }

    /// Predicts the velocity of packed latents `img` (batch, rows·cols,
    /// in_channels) at noise level `sigma`, given the T5 states `txt`
    /// (batch, tokens, joint_attention_dim) and pooled CLIP text `pooled`.
    /// `guidance` is used by dev models (guidance_embeds) only.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        pooled: &Tensor,
        sigma: f64,
        guidance: f64,
        rope: &Rope,
    ) -> candle_core::Result<Tensor> {
        let b = img.dim(0)?;
        let device = img.device();
        let embed = |value: f64| -> candle_core::Result<Tensor> {
            let e = sinusoidal_embedding(&[value * 1000.0], TIME_CHANNELS, true, 0.0);
            Tensor::from_vec(e, (1, TIME_CHANNELS), device)?.repeat((b, 1))
        };
        let mut vec = self.time_in.forward(&embed(sigma)?)?;
        if let Some(g) = &self.guidance_in {
            vec = (vec + g.forward(&embed(guidance)?)?)?;
        }
        let vec = (vec + self.vector_in.forward(pooled)?)?.silu()?;
        let mut img = self.img_in.forward(img)?;
        let mut txt = self.txt_in.forward(txt)?;
        for block in &self.double {
            (img, txt) = block.forward(&img, &txt, &vec, rope)?;
        }
        let text_len = txt.dim(1)?;
        let mut x = Tensor::cat(&[&txt, &img], 1)?;
        for block in &self.single {
            x = block.forward(&x, &vec, rope)?;
        }
        let img = x.narrow(1, text_len, x.dim(1)? - text_len)?;
        let m = chunks(&self.final_modulation.forward(&vec)?, 2)?;
        self.final_linear.forward(&modulate(&img, &m[0], &m[1])?)
    }
}
