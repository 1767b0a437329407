//! The CLIP text encoder of the Stable Diffusion families, built from a
//! transformers `config.json`.
//!
//! Written for parity with transformers' `CLIPTextModel`: pre-norm encoder
//! layers, causal self-attention, `quick_gelu` (SD 1.x) or exact `gelu`
//! (SD 2.x, SDXL's second encoder), and a final layer norm; with
//! `text_projection` (`CLIPTextModelWithProjection`, SDXL's second encoder)
//! the pooled output is projected. Checkpoints are accepted with or without
//! the `text_model.` prefix (transformers 5 saves `CLIPTextModel` without
//! it; the released SD checkpoints have it).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};
use cyberimage_kernels::activations::quick_gelu;
use cyberimage_kernels::linear::{linear, linear_no_bias, Linear};
use serde::Deserialize;

use crate::error::EngineLoadError;
use crate::layers::blocks::{multi_head_attention, Mask};
use crate::weights::lora_merge::ParameterTable;
use crate::weights::{read_config, var_builder_and_table};

#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Where the pooled output is read: the first end token, except for the
    /// legacy configs that say 2 (the released SD ones), where transformers
    /// takes the highest id in the sequence — also the end token.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

fn default_eps() -> f64 {
    1e-5
}

#[derive(Clone, Copy, Debug)]
enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self, EngineLoadError> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => Err(EngineLoadError::Unsupported(format!(
                "CLIP hidden_act {other:?}"
            ))),
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => quick_gelu(x),
            Self::Gelu => x.gelu_erf(),
        }
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            q: linear(h, h, vb.pp("q_proj"))?,
            k: linear(h, h, vb.pp("k_proj"))?,
            v: linear(h, h, vb.pp("v_proj"))?,
            out: linear(h, h, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor, causal_mask: &Tensor) -> candle_core::Result<Tensor> {
        let q = self.q.forward(x)?;
        let k = self.k.forward(x)?;
        let v = self.v.forward(x)?;
        let context = multi_head_attention(&q, &k, &v, self.heads, Mask::Causal(causal_mask))?;
        self.out.forward(&context)
    }
}

struct EncoderLayer {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig, act: Activation) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            norm1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            attn: Attention::new(vb.pp("self_attn"), cfg)?,
            norm2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(h, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(cfg.intermediate_size, h, vb.pp("mlp.fc2"))?,
            act,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?, mask)?)?;
        let mlp = self.fc2.forward(
            &self
                .act
                .apply(&self.fc1.forward(&self.norm2.forward(&x)?)?)?,
        )?;
        x + mlp
    }
}

pub struct ClipTextEncoder {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
    projection: Option<Linear>,
    eos_token_id: Option<u32>,
    device: Device,
}

/// What the pipelines need from the encoder.
pub struct ClipTextOutput {
    /// `last_hidden_state`: after the final layer norm (SD 1.x, SD 2.x).
    pub last_hidden_state: Tensor,
    /// The hidden state before the last layer, without the final norm
    /// (SDXL conditions on this).
    pub penultimate_hidden_state: Tensor,
    /// (batch, dim): the normed state at the end token, projected when the
    /// model has `text_projection` (`text_embeds` in transformers).
    pub pooled: Tensor,
}

impl ClipTextEncoder {
    /// Loads a transformers `text_encoder/` folder.
    pub fn load(folder: &Path, dtype: DType, device: &Device) -> Result<Self, EngineLoadError> {
        Ok(Self::load_with_table(folder, dtype, device)?.0)
    }

    /// As `load`, with the weights by name (for merging LoRAs into them).
    pub fn load_with_table(
        folder: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, ParameterTable), EngineLoadError> {
        let cfg: ClipTextConfig = read_config(&folder.join("config.json"))?;
        let (vb, table) = var_builder_and_table(folder, dtype, device)?;
        Ok((Self::from_checkpoint(vb, &cfg)?, table))
    }

    /// Builds from a checkpoint's tensors, as `CLIPTextModel` or
    /// `CLIPTextModelWithProjection` saved them (with or without the
    /// `text_model.` prefix).
    pub fn from_checkpoint(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self, EngineLoadError> {
        let projection = if vb.contains_tensor("text_projection.weight") {
            let dim = cfg.projection_dim.unwrap_or(cfg.hidden_size);
            Some(linear_no_bias(
                cfg.hidden_size,
                dim,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        Self::new(vb, cfg, projection)
    }

    pub fn new(
        vb: VarBuilder,
        cfg: &ClipTextConfig,
        projection: Option<Linear>,
    ) -> Result<Self, EngineLoadError> {
        let act = Activation::parse(&cfg.hidden_act)?;
        let emb = vb.pp("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp(format!("encoder.layers.{i}")), cfg, act))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding: embedding(cfg.vocab_size, cfg.hidden_size, emb.pp("token_embedding"))?,
            position_embedding: embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                emb.pp("position_embedding"),
            )?,
            layers,
            final_norm: layer_norm(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            projection,
            eos_token_id: cfg.eos_token_id,
            device: vb.device().clone(),
        })
    }

    fn causal_mask(&self, seq: usize, dtype: DType) -> candle_core::Result<Tensor> {
        let mask: Vec<f32> = (0..seq)
            .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Tensor::from_vec(mask, (seq, seq), &self.device)?.to_dtype(dtype)
    }

    /// `input_ids`: (batch, seq) of u32 token ids.
    pub fn forward(&self, input_ids: &Tensor) -> candle_core::Result<ClipTextOutput> {
        let (batch, seq) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, seq as u32, &self.device)?;
        let mut x = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = self.causal_mask(seq, x.dtype())?;
        let mut penultimate = x.clone();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            if i == last {
                penultimate = x.clone();
            }
            x = layer.forward(&x, &mask)?;
        }
        let last_hidden_state = self.final_norm.forward(&x)?;
        let rows = input_ids
            .to_vec2::<u32>()?
            .iter()
            .enumerate()
            .map(|(b, ids)| {
                last_hidden_state
                    .get(b)?
                    .get(self.end_token_position(ids))?
                    .unsqueeze(0)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut pooled = Tensor::cat(&rows, 0)?;
        if let Some(projection) = &self.projection {
            pooled = projection.forward(&pooled)?;
        }
        debug_assert_eq!(pooled.dim(0)?, batch);
        Ok(ClipTextOutput {
            last_hidden_state,
            penultimate_hidden_state: penultimate,
            pooled,
        })
    }

    fn end_token_position(&self, ids: &[u32]) -> usize {
        let highest = || {
            // The first maximum, as torch's argmax picks it.
            ids.iter()
                .enumerate()
                .fold(
                    (0, 0),
                    |best, (i, &id)| if id > best.1 { (i, id) } else { best },
                )
                .0
        };
        match self.eos_token_id {
            Some(2) | None => highest(),
            Some(eos) => ids.iter().position(|&id| id == eos).unwrap_or_else(highest),
        }
    }
}
