//! Qwen3 (transformers' `Qwen3ForCausalLM`), built from its `config.json`:
//! RMS norms, grouped-query attention with an RMS norm on each head's
//! queries and keys and rotary positions, a SwiGLU MLP, and the output
//! head tied to the embeddings when the config says so (the small
//! models). It is the text encoder of Z-Image and FLUX.2 [klein] (their
//! pipelines read its hidden states) and a small local language model
//! (its logits, with a key/value cache for generating token by token).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{embedding, Embedding, VarBuilder};
use cyberimage_kernels::linear::{linear_no_bias, Linear};
use serde::Deserialize;

use crate::error::EngineLoadError;
use crate::layers::blocks::{attention, merge_heads, Mask};
use crate::weights::{read_config, var_builder};

#[derive(Clone, Debug, Deserialize)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// transformers 4's place for it …
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// … and transformers 5's.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}

impl Qwen3Config {
    /// The rotary base (Qwen3's is 1e6).
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(1_000_000.0)
    }

    fn check(&self) -> Result<(), EngineLoadError> {
        let unsupported = |what: String| Err(EngineLoadError::Unsupported(what));
        if self.attention_bias {
            return unsupported("Qwen3 with attention biases".into());
        }
        if let Some(kind) = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
            .filter(|t| *t != "default")
        {
            return unsupported(format!("Qwen3 with {kind} rotary scaling"));
        }
        if self.hidden_act.as_deref().is_some_and(|a| a != "silu") {
            return unsupported(format!("Qwen3 with {:?}", self.hidden_act));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return unsupported(
                "Qwen3 whose heads are not a multiple of its key/value heads".into(),
            );
        }
        Ok(())
    }
}

/// Qwen3's RMS norm: in f32, `x / sqrt(mean(x²) + eps) · weight`.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(ms + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)
    }
}

/// The cos / sin tables of rotary positions, for `positions` from `start`.
fn rotary(
    cfg: &Qwen3Config,
    start: usize,
    len: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let theta = cfg.theta();
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / cfg.head_dim as f64)) as f32)
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
    let positions: Vec<f32> = (start..start + len).map(|p| p as f32).collect();
    let positions = Tensor::from_vec(positions, (len, 1), device)?;
    let freqs = positions.matmul(&inv_freq)?;
    let freqs = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// `x · cos + rotate_half(x) · sin` over (batch, heads, tokens, head_dim).
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let (x1, x2) = (
        x.narrow(D::Minus1, 0, half)?,
        x.narrow(D::Minus1, half, half)?,
    );
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// One layer's keys and values so far (batch, kv heads, tokens, head_dim).
#[derive(Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// Keys and values of the tokens seen so far, per layer: the next call
/// runs only the new tokens.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    tokens: usize,
}

impl KvCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.tokens
    }

    pub fn is_empty(&self) -> bool {
        self.tokens == 0
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &Qwen3Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        Ok(Self {
            q: linear_no_bias(h, cfg.num_attention_heads * d, vb.pp("q_proj"))?,
            k: linear_no_bias(h, cfg.num_key_value_heads * d, vb.pp("k_proj"))?,
            v: linear_no_bias(h, cfg.num_key_value_heads * d, vb.pp("v_proj"))?,
            o: linear_no_bias(cfg.num_attention_heads * d, h, vb.pp("o_proj"))?,
            q_norm: RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("q_norm"))?,
            k_norm: RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("k_norm"))?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
        })
    }

    /// (batch, tokens, heads · head_dim) → (batch, heads, tokens, head_dim),
    /// each head's vector normed.
    fn heads_of(
        &self,
        x: &Tensor,
        heads: usize,
        norm: Option<&RmsNorm>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let x = x.reshape((b, t, heads, self.head_dim))?;
        let x = match norm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        };
        x.transpose(1, 2)?.contiguous()
    }

    /// Each key/value head repeated for the query heads that share it.
    fn repeat_kv(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let rep = self.heads / self.kv_heads;
        if rep == 1 {
            return Ok(x.clone());
        }
        let (b, kv, t, d) = x.dims4()?;
        x.unsqueeze(2)?
            .broadcast_as((b, kv, rep, t, d))?
            .reshape((b, kv * rep, t, d))
    }

    fn forward(
        &self,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        causal: Option<&Tensor>,
        cache: &mut Option<LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let q = apply_rotary(
            &self.heads_of(&self.q.forward(x)?, self.heads, Some(&self.q_norm))?,
            cos,
            sin,
        )?;
        let k = apply_rotary(
            &self.heads_of(&self.k.forward(x)?, self.kv_heads, Some(&self.k_norm))?,
            cos,
            sin,
        )?;
        let v = self.heads_of(&self.v.forward(x)?, self.kv_heads, None)?;
        let (k, v) = match cache.take() {
            Some(past) => (
                Tensor::cat(&[&past.k, &k], 2)?,
                Tensor::cat(&[&past.v, &v], 2)?,
            ),
            None => (k, v),
        };
        *cache = Some(LayerCache {
            k: k.clone(),
            v: v.clone(),
        });
        let total = k.dim(2)?;
        let flat = |x: Tensor, tokens: usize| {
            x.contiguous()?
                .reshape((b * self.heads, tokens, self.head_dim))
        };
        let (q, k, v) = (
            flat(q, t)?,
            flat(self.repeat_kv(&k)?, total)?,
            flat(self.repeat_kv(&v)?, total)?,
        );
        let scale = (self.head_dim as f64).powf(-0.5);
        // New tokens see every cached one and, among themselves, the ones
        // before them; a single new token sees them all.
        let mask = match causal {
            Some(triangle) if t > 1 => Mask::Causal(triangle),
            _ => Mask::None,
        };
        let out = attention(&q, &k, &v, scale, mask)?;
        self.o
            .forward(&merge_heads(&out, (b, self.heads, t, self.head_dim))?)
    }
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn new(cfg: &Qwen3Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: linear_no_bias(h, i, vb.pp("gate_proj"))?,
            up: linear_no_bias(h, i, vb.pp("up_proj"))?,
            down: linear_no_bias(i, h, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gated = (candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}

struct Layer {
    input_norm: RmsNorm,
    attention: Attention,
    post_attention_norm: RmsNorm,
    mlp: Mlp,
}

/// What one pass gives: the final hidden states (after the last norm),
/// every layer's input when asked (transformers' `hidden_states`, the last
/// being the final normed states), and the logits of the last token or of
/// all of them.
pub struct Qwen3Output {
    pub hidden: Tensor,
    pub hidden_states: Vec<Tensor>,
    pub logits: Option<Tensor>,
}

pub struct Qwen3 {
    pub config: Qwen3Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// The output head: its own weights, or the embeddings' (tied).
    lm_head: Linear,
    device: Device,
}

/// Which logits a pass computes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

impl Qwen3 {
    pub fn load(folder: &Path, device: &Device) -> Result<Self, EngineLoadError> {
        let config: Qwen3Config = read_config(&folder.join("config.json"))?;
        config.check()?;
        let vb = var_builder(folder, DType::F32, device)?;
        Self::new(config, vb, device)
    }

    pub fn new(
        config: Qwen3Config,
        vb: VarBuilder,
        device: &Device,
    ) -> Result<Self, EngineLoadError> {
        let m = vb.pp("model");
        let embed = embedding(config.vocab_size, config.hidden_size, m.pp("embed_tokens"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = m.pp(format!("layers.{i}"));
                Ok(Layer {
                    input_norm: RmsNorm::new(
                        config.hidden_size,
                        config.rms_norm_eps,
                        l.pp("input_layernorm"),
                    )?,
                    attention: Attention::new(&config, l.pp("self_attn"))?,
                    post_attention_norm: RmsNorm::new(
                        config.hidden_size,
                        config.rms_norm_eps,
                        l.pp("post_attention_layernorm"),
                    )?,
                    mlp: Mlp::new(&config, l.pp("mlp"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = RmsNorm::new(config.hidden_size, config.rms_norm_eps, m.pp("norm"))?;
        let lm_head = if config.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
            Linear::from(candle_nn::Linear::new(embed.embeddings().clone(), None))
        } else {
            linear_no_bias(config.hidden_size, config.vocab_size, vb.pp("lm_head"))?
        };
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            lm_head,
            device: device.clone(),
        })
    }

    /// Runs `ids` (batch, tokens) after what `cache` holds (updating it;
    /// `None`: no cache, the prompt alone).
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        keep_hidden_states: bool,
        logits: Logits,
    ) -> candle_core::Result<Qwen3Output> {
        let (_, t) = ids.dims2()?;
        let mut scratch = KvCache::default();
        let cache = cache.unwrap_or(&mut scratch);
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
            cache.tokens = 0;
        }
        let start = cache.tokens;
        let (cos, sin) = rotary(&self.config, start, t, &self.device)?;
        // The causal triangle, for paths the attention kernel does not take
        // (the kernel takes it from the flag when keys = queries).
        let causal = if t > 1 {
            let total = start + t;
            let mask: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..total).map(move |j| {
                        if j > start + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(mask, (t, total), &self.device)?)
        } else {
            None
        };
        let mut x = self.embed.forward(ids)?;
        let mut hidden_states = Vec::new();
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            if keep_hidden_states {
                hidden_states.push(x.clone());
            }
            let attended = layer.attention.forward(
                &layer.input_norm.forward(&x)?,
                (&cos, &sin),
                causal.as_ref(),
                slot,
            )?;
            x = (x + attended)?;
            x = (&x + layer.mlp.forward(&layer.post_attention_norm.forward(&x)?)?)?;
        }
        cache.tokens += t;
        let hidden = self.norm.forward(&x)?;
        if keep_hidden_states {
            hidden_states.push(hidden.clone());
        }
        let logits = match logits {
            Logits::None => None,
            Logits::Last => Some(self.lm_head.forward(&hidden.narrow(1, t - 1, 1)?)?),
            Logits::All => Some(self.lm_head.forward(&hidden)?),
        };
        Ok(Qwen3Output {
            hidden,
            hidden_states,
            logits,
        })
    }

    /// `count` tokens after `prompt` (1-D ids), each the most likely one
    /// (greedy), stopping early at `stop`; the key/value cache keeps each
    /// step to the new token.
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        count: usize,
        stop: &[u32],
    ) -> candle_core::Result<Vec<u32>> {
        let mut cache = KvCache::default();
        let mut next_input = Tensor::new(prompt, &self.device)?.unsqueeze(0)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let step = self.forward(&next_input, Some(&mut cache), false, Logits::Last)?;
            let logits = step.logits.expect("asked for").flatten_all()?;
            let token = logits.argmax(0)?.to_scalar::<u32>()?;
            out.push(token);
            if stop.contains(&token) {
                break;
            }
            next_input = Tensor::new(&[token], &self.device)?.unsqueeze(0)?;
        }
        Ok(out)
    }
}
