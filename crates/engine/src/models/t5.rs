//! The T5 encoder (transformers' `T5EncoderModel`) that FLUX and SD3 read
//! long prompts with, built from its `config.json`: RMS layer norms
//! without bias, self-attention with unscaled scores and a learned
//! relative-position bias (computed once, in the first block, and shared),
//! and a feed-forward that is gated (T5 v1.1: `gelu_new` gate times a
//! linear branch) or plain.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{embedding, Embedding, VarBuilder};
use cyberimage_kernels::activations::gelu_tanh;
use cyberimage_kernels::linear::{linear_no_bias, Linear};
use serde::Deserialize;

use crate::error::EngineLoadError;
use crate::layers::blocks::{attention, merge_heads, split_heads, Mask};
use crate::weights::{read_config, var_builder};

#[derive(Clone, Debug, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    #[serde(default)]
    pub dense_act_fn: Option<String>,
}

fn default_max_distance() -> usize {
    128
}

fn default_eps() -> f64 {
    1e-6
}

fn default_ff() -> String {
    "relu".into()
}

#[derive(Clone, Copy)]
enum Activation {
    Relu,
    /// `gelu_new`: the tanh approximation.
    GeluTanh,
    Gelu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            Self::GeluTanh => gelu_tanh(x),
            Self::Gelu => x.gelu_erf(),
        }
    }
}

/// T5's layer norm: scale by the root mean square, no centring, no bias.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(variance + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)
    }
}

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn forward(&self, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let split = |t: Tensor| split_heads(&t, self.heads);
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        // T5 folds the 1/sqrt(d) scale into its weights: scores are unscaled.
        let out = attention(&q, &k, &v, 1.0, Mask::Additive(bias))?;
        self.o
            .forward(&merge_heads(&out, (b, self.heads, n, self.head_dim))?)
    }
}

struct FeedForward {
    wi_gate: Linear,
    wi_linear: Option<Linear>,
    wo: Linear,
    act: Activation,
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = self.act.apply(&self.wi_gate.forward(x)?)?;
        let hidden = match &self.wi_linear {
            Some(linear) => (hidden * linear.forward(x)?)?,
            None => hidden,
        };
        self.wo.forward(&hidden)
    }
}

struct Block {
    attn_norm: RmsNorm,
    attn: SelfAttention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

pub struct T5Encoder {
    embedding: Embedding,
    relative_bias: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    config: T5Config,
}

impl T5Encoder {
    /// Loads a transformers `text_encoder_2/`-style folder.
    pub fn load(folder: &Path, dtype: DType, device: &Device) -> Result<Self, EngineLoadError> {
        let cfg: T5Config = read_config(&folder.join("config.json"))?;
        Self::new(var_builder(folder, dtype, device)?, cfg)
    }

    pub fn new(vb: VarBuilder, cfg: T5Config) -> Result<Self, EngineLoadError> {
        let gated = cfg.feed_forward_proj.starts_with("gated-");
        let act_name = cfg
            .dense_act_fn
            .clone()
            .unwrap_or_else(|| cfg.feed_forward_proj.trim_start_matches("gated-").into());
        let act = match act_name.as_str() {
            "relu" => Activation::Relu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            other => {
                return Err(EngineLoadError::Unsupported(format!(
                    "T5 activation {other:?}"
                )))
            }
        };
        let inner = cfg.num_heads * cfg.d_kv;
        let enc = vb.pp("encoder");
        let blocks = (0..cfg.num_layers)
            .map(|i| -> candle_core::Result<Block> {
                let block = enc.pp(format!("block.{i}"));
                let sa = block.pp("layer.0.SelfAttention");
                let ff = block.pp("layer.1.DenseReluDense");
                let (wi_gate, wi_linear) = if gated {
                    (
                        linear_no_bias(cfg.d_model, cfg.d_ff, ff.pp("wi_0"))?,
                        Some(linear_no_bias(cfg.d_model, cfg.d_ff, ff.pp("wi_1"))?),
                    )
                } else {
                    (linear_no_bias(cfg.d_model, cfg.d_ff, ff.pp("wi"))?, None)
                };
                Ok(Block {
                    attn_norm: RmsNorm::new(
                        cfg.d_model,
                        cfg.layer_norm_epsilon,
                        block.pp("layer.0.layer_norm"),
                    )?,
                    attn: SelfAttention {
                        q: linear_no_bias(cfg.d_model, inner, sa.pp("q"))?,
                        k: linear_no_bias(cfg.d_model, inner, sa.pp("k"))?,
                        v: linear_no_bias(cfg.d_model, inner, sa.pp("v"))?,
                        o: linear_no_bias(inner, cfg.d_model, sa.pp("o"))?,
                        heads: cfg.num_heads,
                        head_dim: cfg.d_kv,
                    },
                    ff_norm: RmsNorm::new(
                        cfg.d_model,
                        cfg.layer_norm_epsilon,
                        block.pp("layer.1.layer_norm"),
                    )?,
                    ff: FeedForward {
                        wi_gate,
                        wi_linear,
                        wo: linear_no_bias(cfg.d_ff, cfg.d_model, ff.pp("wo"))?,
                        act,
                    },
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Released checkpoints store the tied embedding as `shared` and
        // sometimes also as `encoder.embed_tokens`.
        let embedding_vb = if vb.contains_tensor("shared.weight") {
            vb.pp("shared")
        } else {
            enc.pp("embed_tokens")
        };
        Ok(Self {
            embedding: embedding(cfg.vocab_size, cfg.d_model, embedding_vb)?,
            relative_bias: embedding(
                cfg.relative_attention_num_buckets,
                cfg.num_heads,
                enc.pp("block.0.layer.0.SelfAttention.relative_attention_bias"),
            )?,
            blocks,
            final_norm: RmsNorm::new(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                enc.pp("final_layer_norm"),
            )?,
            config: cfg,
        })
    }

    /// The bucket of each (query, key) offset: exact for small offsets,
    /// logarithmic up to `max_distance`, separate halves for keys before
    /// and after the query (the encoder is bidirectional).
    fn position_buckets(&self, n: usize) -> Vec<u32> {
        let half = self.config.relative_attention_num_buckets / 2;
        let max_exact = half / 2;
        let max_distance = self.config.relative_attention_max_distance as f64;
        let mut buckets = Vec::with_capacity(n * n);
        for query in 0..n {
            for key in 0..n {
                let relative = key as i64 - query as i64;
                let mut bucket = if relative > 0 { half } else { 0 };
                let distance = relative.unsigned_abs() as usize;
                bucket += if distance < max_exact {
                    distance
                } else {
                    let log_ratio = (distance as f64 / max_exact as f64).ln()
                        / (max_distance / max_exact as f64).ln();
                    // Truncation toward zero, as the reference's cast.
                    let large = max_exact + (log_ratio * (half - max_exact) as f64) as usize;
                    large.min(half - 1)
                };
                buckets.push(bucket as u32);
            }
        }
        buckets
    }

    /// `input_ids` (batch, tokens) → last hidden state (batch, tokens, d_model).
    /// No attention mask: the FLUX and SD3 pipelines attend over the padding
    /// too, and parity means doing the same.
    pub fn forward(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_, n) = input_ids.dims2()?;
        let device = input_ids.device();
        let mut x = self.embedding.forward(input_ids)?;
        let buckets = Tensor::from_vec(self.position_buckets(n), (n, n), device)?;
        // (n, n, heads) → (heads, n, n), broadcast over the batch: the
        // attention runs on (batch·heads, n, n) scores.
        let bias = self
            .relative_bias
            .forward(&buckets)?
            .permute((2, 0, 1))?
            .contiguous()?
            .to_dtype(x.dtype())?;
        let batch = input_ids.dim(0)?;
        let bias = bias.repeat((batch, 1, 1))?;
        for block in &self.blocks {
            let attended = block.attn.forward(&block.attn_norm.forward(&x)?, &bias)?;
            x = (x + attended)?;
            let ff = block.ff.forward(&block.ff_norm.forward(&x)?)?;
            x = (x + ff)?;
        }
        self.final_norm.forward(&x)
    }
}
