//! The MMDiT of Stable Diffusion 3 / 3.5 (diffusers'
//! `SD3Transformer2DModel`), built from `transformer/config.json`: 2×2
//! patches with cropped sin-cos position embeddings, joint attention of
//! image and text tokens (each stream with its own weights, image first),
//! optional RMS q/k norms (3.5), an extra image-only attention in the
//! "dual attention" blocks (3.5 Medium), a last block whose text stream
//! only feeds the attention, and AdaLN modulation by the timestep and the
//! pooled text throughout.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, Conv2dConfig, Linear, VarBuilder};
use cyberimage_kernels::conv::{conv2d, Conv2d};
use cyberimage_kernels::layout::contiguous;
use serde::Deserialize;

use crate::error::EngineLoadError;
use crate::layers::blocks::{attention, merge_heads, sinusoidal_embedding, Mask};
use crate::layers::modulation::{chunks, modulate, rms_norm};
use crate::weights::lora_merge::ParameterTable;
use crate::weights::{read_config, var_builder_and_table};
use cyberimage_kernels::activations::gelu_tanh;

const TIME_CHANNELS: usize = 256;

#[derive(Clone, Debug, Deserialize)]
pub struct MmditConfig {
    pub patch_size: usize,
    pub in_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub caption_projection_dim: usize,
    pub pooled_projection_dim: usize,
    pub out_channels: usize,
    pub pos_embed_max_size: usize,
    #[serde(default)]
    pub dual_attention_layers: Vec<usize>,
    #[serde(default)]
    pub qk_norm: Option<String>,
}

/// Query, key and value projections of one stream, with optional RMS
/// norms of queries and keys.
struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: Option<Tensor>,
    norm_k: Option<Tensor>,
}

impl Projections {
    fn new(
        vb: &VarBuilder,
        names: [&str; 5],
        dim: usize,
        head_dim: usize,
        qk_norm: bool,
    ) -> candle_core::Result<Self> {
        let norm = |name: &str| -> candle_core::Result<Option<Tensor>> {
            qk_norm
                .then(|| vb.get(head_dim, &format!("{name}.weight")))
                .transpose()
        };
        Ok(Self {
            q: linear(dim, dim, vb.pp(names[0]))?,
            k: linear(dim, dim, vb.pp(names[1]))?,
            v: linear(dim, dim, vb.pp(names[2]))?,
            norm_q: norm(names[3])?,
            norm_k: norm(names[4])?,
        })
    }

    /// (batch, tokens, dim) → q, k, v as (batch, heads, tokens, head_dim).
    fn forward(&self, x: &Tensor, heads: usize) -> candle_core::Result<[Tensor; 3]> {
        let (b, n, dim) = x.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            contiguous(&t.reshape((b, n, heads, dim / heads))?.transpose(1, 2)?)
        };
        let mut q = split(self.q.forward(x)?)?;
        let mut k = split(self.k.forward(x)?)?;
        if let Some(w) = &self.norm_q {
            q = rms_norm(&q, w)?;
        }
        if let Some(w) = &self.norm_k {
            k = rms_norm(&k, w)?;
        }
        Ok([q, k, split(self.v.forward(x)?)?])
    }
}

/// Attention over (batch, heads, tokens, head_dim) operands → (batch,
/// tokens, heads·head_dim).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let nk = k.dim(2)?;
    let q = q.reshape((b * h, n, d))?;
    let k = k.reshape((b * h, nk, d))?;
    let v = v.reshape((b * h, nk, d))?;
    merge_heads(
        &attention(&q, &k, &v, (d as f64).powf(-0.5), Mask::None)?,
        (b, h, n, d),
    )
}

struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            proj: linear(dim, dim * 4, vb.pp("net.0.proj"))?,
            out: linear(dim * 4, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.out.forward(&gelu_tanh(&self.proj.forward(x)?)?)
    }
}

/// The text stream of a block: fully modulated, or (last block) only
/// normed for the attention.
enum ContextStream {
    Full {
        modulation: Linear,
        to_out: Linear,
        ff: FeedForward,
    },
    AttentionOnly {
        modulation: Linear,
    },
}

struct JointBlock {
    modulation: Linear,
    image: Projections,
    image_out: Linear,
    context: Projections,
    context_stream: ContextStream,
    /// SD3.5 Medium's second, image-only attention.
    dual: Option<(Projections, Linear)>,
    ff: FeedForward,
    heads: usize,
}

impl JointBlock {
    fn new(cfg: &MmditConfig, index: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let dim = cfg.attention_head_dim * cfg.num_attention_heads;
        let hd = cfg.attention_head_dim;
        let qk = cfg.qk_norm.is_some();
        let dual = cfg.dual_attention_layers.contains(&index);
        let last = index + 1 == cfg.num_layers;
        let attn = vb.pp("attn");
        let context_stream = if last {
            ContextStream::AttentionOnly {
                modulation: linear(dim, 2 * dim, vb.pp("norm1_context.linear"))?,
            }
        } else {
            ContextStream::Full {
                modulation: linear(dim, 6 * dim, vb.pp("norm1_context.linear"))?,
                to_out: linear(dim, dim, attn.pp("to_add_out"))?,
                ff: FeedForward::new(dim, vb.pp("ff_context"))?,
            }
        };
        let dual = if dual {
            let attn2 = vb.pp("attn2");
            Some((
                Projections::new(
                    &attn2,
                    ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
                    dim,
                    hd,
                    qk,
                )?,
                linear(dim, dim, attn2.pp("to_out.0"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            modulation: linear(
                dim,
                if dual.is_some() { 9 } else { 6 } * dim,
                vb.pp("norm1.linear"),
            )?,
            image: Projections::new(
                &attn,
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
                dim,
                hd,
                qk,
            )?,
            image_out: linear(dim, dim, attn.pp("to_out.0"))?,
            context: Projections::new(
                &attn,
                [
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                    "norm_added_q",
                    "norm_added_k",
                ],
                dim,
                hd,
                qk,
            )?,
            context_stream,
            dual,
            ff: FeedForward::new(dim, vb.pp("ff"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// `temb` is already through SiLU. Returns (image, text; `None` after
    /// the last block).
    fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        temb: &Tensor,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let m = chunks(
            &self.modulation.forward(temb)?,
            if self.dual.is_some() { 9 } else { 6 },
        )?;
        let x_in = modulate(x, &m[0], &m[1])?;
        let ctx_mod = match &self.context_stream {
            ContextStream::Full { modulation, .. } => chunks(&modulation.forward(temb)?, 6)?,
            ContextStream::AttentionOnly { modulation } => {
                // AdaLayerNormContinuous: (scale, shift).
                let c = chunks(&modulation.forward(temb)?, 2)?;
                vec![c[1].clone(), c[0].clone()]
            }
        };
        let ctx_in = modulate(ctx, &ctx_mod[0], &ctx_mod[1])?;
        let [iq, ik, iv] = self.image.forward(&x_in, self.heads)?;
        let [cq, ck, cv] = self.context.forward(&ctx_in, self.heads)?;
        let joint = |i: &Tensor, c: &Tensor| Tensor::cat(&[i, c], 2);
        let attended = attend(&joint(&iq, &cq)?, &joint(&ik, &ck)?, &joint(&iv, &cv)?)?;
        let n = x.dim(1)?;
        let img_attn = attended.narrow(1, 0, n)?;
        let ctx_attn = attended.narrow(1, n, ctx.dim(1)?)?;

        let gate = |t: &Tensor, g: &Tensor| t.broadcast_mul(&g.unsqueeze(1)?);
        let input = x;
        let mut x = (x + gate(&self.image_out.forward(&img_attn)?, &m[2])?)?;
        if let Some((projections, out)) = &self.dual {
            // Modulated from the block's input, like the first attention's.
            let x2 = modulate(input, &m[6], &m[7])?;
            let [q, k, v] = projections.forward(&x2, self.heads)?;
            x = (x + gate(&out.forward(&attend(&q, &k, &v)?)?, &m[8])?)?;
        }
        let ff = self.ff.forward(&modulate(&x, &m[3], &m[4])?)?;
        let x = (&x + gate(&ff, &m[5])?)?;

        let ctx = match &self.context_stream {
            ContextStream::Full { to_out, ff, .. } => {
                let c = (ctx + gate(&to_out.forward(&ctx_attn)?, &ctx_mod[2])?)?;
                let f = ff.forward(&modulate(&c, &ctx_mod[3], &ctx_mod[4])?)?;
                Some((&c + gate(&f, &ctx_mod[5])?)?)
            }
            ContextStream::AttentionOnly { .. } => None,
        };
        Ok((x, ctx))
    }
}

pub struct Mmdit {
    patch_proj: Conv2d,
    pos_embed: Tensor,
    time_1: Linear,
    time_2: Linear,
    text_1: Linear,
    text_2: Linear,
    context_embedder: Linear,
    blocks: Vec<JointBlock>,
    norm_out: Linear,
    proj_out: Linear,
    pub config: MmditConfig,
}

impl Mmdit {
    pub fn load(folder: &Path, dtype: DType, device: &Device) -> Result<Self, EngineLoadError> {
        Ok(Self::load_with_table(folder, dtype, device)?.0)
    }

    /// As `load`, with the weights by name (for merging LoRAs into them).
    pub fn load_with_table(
        folder: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, ParameterTable), EngineLoadError> {
        let cfg: MmditConfig = read_config(&folder.join("config.json"))?;
        let (vb, table) = var_builder_and_table(folder, dtype, device)?;
        Ok((Self::new(vb, cfg)?, table))
    }

    pub fn new(vb: VarBuilder, cfg: MmditConfig) -> Result<Self, EngineLoadError> {
        if let Some(norm) = cfg.qk_norm.as_deref().filter(|n| *n != "rms_norm") {
            return Err(EngineLoadError::Unsupported(format!(
                "MMDiT qk_norm {norm:?}"
            )));
        }
        let dim = cfg.attention_head_dim * cfg.num_attention_heads;
        let p = cfg.patch_size;
        let blocks = (0..cfg.num_layers)
            .map(|i| JointBlock::new(&cfg, i, vb.pp(format!("transformer_blocks.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let te = vb.pp("time_text_embed");
        let grid = cfg.pos_embed_max_size;
        Ok(Self {
            patch_proj: conv2d(
                cfg.in_channels,
                dim,
                p,
                Conv2dConfig {
                    stride: p,
                    ..Default::default()
                },
                vb.pp("pos_embed.proj"),
            )?,
            // Stored with the weights (a persistent buffer in diffusers).
            pos_embed: vb.get((1, grid * grid, dim), "pos_embed.pos_embed")?,
            time_1: linear(TIME_CHANNELS, dim, te.pp("timestep_embedder.linear_1"))?,
            time_2: linear(dim, dim, te.pp("timestep_embedder.linear_2"))?,
            text_1: linear(
                cfg.pooled_projection_dim,
                dim,
                te.pp("text_embedder.linear_1"),
            )?,
            text_2: linear(dim, dim, te.pp("text_embedder.linear_2"))?,
            context_embedder: linear(
                cfg.joint_attention_dim,
                cfg.caption_projection_dim,
                vb.pp("context_embedder"),
            )?,
            blocks,
            norm_out: linear(dim, 2 * dim, vb.pp("norm_out.linear"))?,
            proj_out: linear(dim, p * p * cfg.out_channels, vb.pp("proj_out"))?,
            config: cfg,
        })
    }

    /// The position embeddings of an (rows, cols) patch grid: the centre
    /// crop of the stored `pos_embed_max_size`² grid.
    fn positions(&self, rows: usize, cols: usize) -> candle_core::Result<Tensor> {
        let max = self.config.pos_embed_max_size;
        if rows > max || cols > max {
            candle_core::bail!("{rows}×{cols} patches exceed the model's {max}×{max} positions");
        }
        let dim = self.pos_embed.dim(2)?;
        let top = (max - rows) / 2;
        let left = (max - cols) / 2;
        self.pos_embed
            .reshape((max, max, dim))?
            .narrow(0, top, rows)?
            .narrow(1, left, cols)?
            .reshape((1, rows * cols, dim))
    }

    /// Predicts the velocity of `latents` (b, c, h, w) at `timestep`
    /// (σ·1000), given the joint text states `context` (b, tokens,
    /// joint_attention_dim) and pooled text (b, pooled_projection_dim).
    pub fn forward(
        &self,
        latents: &Tensor,
        timestep: f64,
        context: &Tensor,
        pooled: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, _, h, w) = latents.dims4()?;
        let p = self.config.patch_size;
        let (rows, cols) = (h / p, w / p);
        let x = self
            .patch_proj
            .forward(latents)?
            .flatten_from(2)?
            .transpose(1, 2)?
            .broadcast_add(&self.positions(rows, cols)?)?;
        let t = sinusoidal_embedding(&[timestep], TIME_CHANNELS, true, 0.0);
        let t = Tensor::from_vec(t, (1, TIME_CHANNELS), latents.device())?.repeat((b, 1))?;
        let temb = self.time_2.forward(&self.time_1.forward(&t)?.silu()?)?;
        let text = self.text_2.forward(&self.text_1.forward(pooled)?.silu()?)?;
        let temb = (temb + text)?.silu()?;
        let mut x = x.contiguous()?;
        let mut ctx = Some(self.context_embedder.forward(context)?);
        for block in &self.blocks {
            let c = ctx
                .take()
                .expect("only the last block drops the text stream");
            (x, ctx) = block.forward(&x, &c, &temb)?;
        }
        let m = chunks(&self.norm_out.forward(&temb)?, 2)?;
        let x = self.proj_out.forward(&modulate(&x, &m[1], &m[0])?)?;
        let c = self.config.out_channels;
        x.reshape((b, rows, cols, p, p, c))?
            .permute((0, 5, 1, 3, 2, 4))?
            .reshape((b, c, h, w))
    }
}
