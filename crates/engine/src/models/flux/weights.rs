//! Where the FLUX transformer's weights come from, under one naming: the
//! original Black Forest Labs layout (`double_blocks.0.img_attn.qkv`, …),
//! which is also what the GGUF files people run on small machines use.
//!
//! - a BFL single file (`flux1-dev.safetensors`): read as is;
//! - a diffusers `transformer/` folder: renamed, with the separate q/k/v
//!   projections standing in for BFL's fused ones as row blocks (no copy:
//!   a fused layer runs its blocks and joins the outputs), and the final
//!   modulation's halves swapped (diffusers orders it scale, shift);
//! - a GGUF file: quantized matrices stay quantized (matmuls run on the
//!   quantized blocks), float tensors are read as f32.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::lora::{AdapterSlot, LoraSlot};
use super::names::{
    DOUBLE_FUSED, DOUBLE_LINEARS, DOUBLE_NORMS, FINAL_MODULATION, GLOBAL_LINEARS, GUIDANCE_LINEARS,
    SINGLE_FUSED, SINGLE_LINEARS, SINGLE_NORMS,
};
use crate::error::EngineLoadError;

pub enum Weight {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
    /// A fused matrix kept as its row blocks (diffusers' separate q, k, v).
    Parts(Vec<Tensor>),
}

impl Weight {
    fn dense(&self, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(t) => t.to_dtype(DType::F32),
            Self::Quantized(q) => q.dequantize(device),
            Self::Parts(parts) => Tensor::cat(parts, 0)?.to_dtype(DType::F32),
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        match self {
            Self::Dense(t) => t.dims().to_vec(),
            Self::Quantized(q) => q.shape().dims().to_vec(),
            Self::Parts(parts) => {
                let mut dims = parts[0].dims().to_vec();
                dims[0] = parts.iter().map(|p| p.dim(0).unwrap_or(0)).sum();
                dims
            }
        }
    }
}

/// A linear layer over dense or quantized weights; a fused layer may be
/// held as row blocks, whose outputs are joined.
pub struct QLinear {
    blocks: Vec<Block>,
    bias: Option<Tensor>,
    /// LoRAs run beside a quantized weight (dense ones are merged in).
    adapter: AdapterSlot,
}

/// One row block: dense matrices go through the kernels' `Linear` (candle's
/// product in f32, the bf16 kernels under `precision = "bf16"`), quantized
/// ones through candle's quantized product.
enum Block {
    Dense(cyberimage_kernels::linear::Linear),
    Quantized(QMatMul),
}

impl Block {
    fn dense(weight: Tensor) -> Self {
        Self::Dense(candle_nn::Linear::new(weight, None).into())
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(linear) => linear.forward(x),
            Self::Quantized(q) => q.forward(x),
        }
    }
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        let y = match self.blocks.as_slice() {
            [one] => one.forward(&x)?,
            blocks => {
                let outputs = blocks
                    .iter()
                    .map(|b| b.forward(&x))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&outputs, candle_core::D::Minus1)?
            }
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match &*self.adapter.read().unwrap_or_else(|e| e.into_inner()) {
            Some(adapter) => y + adapter.forward(&x)?,
            None => Ok(y),
        }
    }
}

pub struct FluxWeights {
    tensors: HashMap<String, Weight>,
    device: Device,
    /// What the weights were read from, for metadata and messages.
    pub format: &'static str,
    /// Each linear made, as LoRAs reach it (taken by [`Self::lora_target`]).
    lora_slots: Mutex<HashMap<String, LoraSlot>>,
}

/// A GGUF file opened, its header (metadata and tensor table) read.
fn open_gguf(
    path: &Path,
) -> Result<(std::io::BufReader<std::fs::File>, gguf_file::Content), EngineLoadError> {
    let io = |source| EngineLoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| EngineLoadError::Unsupported(format!("{}: {e}", path.display())))?;
    Ok((file, content))
}

impl FluxWeights {
    pub fn from_bfl(tensors: HashMap<String, Tensor>, device: &Device) -> Self {
        Self::from_weights(
            tensors
                .into_iter()
                .map(|(k, v)| (k, Weight::Dense(v)))
                .collect(),
            device,
            "safetensors (BFL layout)",
        )
    }

    /// Renames a diffusers `FluxTransformer2DModel` state dict into the BFL
    /// layout. Unknown keys are an error: a silently ignored tensor would
    /// be a silently wrong model.
    pub fn from_diffusers(
        mut d: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self, EngineLoadError> {
        let mut out: HashMap<String, Weight> = HashMap::new();
        let take = |d: &mut HashMap<String, Tensor>, key: &str| {
            d.remove(key).ok_or_else(|| {
                EngineLoadError::Unsupported(format!("FLUX transformer: missing tensor {key}"))
            })
        };
        let rename_linear = |d: &mut HashMap<String, Tensor>,
                             out: &mut HashMap<String, Weight>,
                             from: &str,
                             to: &str|
         -> Result<(), EngineLoadError> {
            let weight = take(d, &format!("{from}.weight"))?;
            out.insert(format!("{to}.weight"), Weight::Dense(weight));
            if let Some(bias) = d.remove(&format!("{from}.bias")) {
                out.insert(format!("{to}.bias"), Weight::Dense(bias));
            }
            Ok(())
        };
        let fuse = |d: &mut HashMap<String, Tensor>,
                    out: &mut HashMap<String, Weight>,
                    parts: &[String],
                    to: &str|
         -> Result<(), EngineLoadError> {
            for suffix in ["weight", "bias"] {
                let pieces = parts
                    .iter()
                    .map(|p| take(d, &format!("{p}.{suffix}")))
                    .collect::<Result<Vec<_>, _>>()?;
                // Biases are small: joined now. Matrices stay in blocks.
                let fused = if suffix == "bias" {
                    Weight::Dense(Tensor::cat(&pieces, 0)?)
                } else {
                    Weight::Parts(pieces)
                };
                out.insert(format!("{to}.{suffix}"), fused);
            }
            Ok(())
        };
        for (from, to) in GLOBAL_LINEARS {
            rename_linear(&mut d, &mut out, from, to)?;
        }
        if d.contains_key("time_text_embed.guidance_embedder.linear_1.weight") {
            for (from, to) in GUIDANCE_LINEARS {
                rename_linear(&mut d, &mut out, from, to)?;
            }
        }
        // diffusers: (scale, shift); BFL: (shift, scale).
        for suffix in ["weight", "bias"] {
            let t = take(&mut d, &format!("{}.{suffix}", FINAL_MODULATION.0))?;
            let half = t.dim(0)? / 2;
            let halves = vec![t.narrow(0, half, half)?, t.narrow(0, 0, half)?];
            let swapped = if suffix == "bias" {
                Weight::Dense(Tensor::cat(&halves, 0)?)
            } else {
                Weight::Parts(halves)
            };
            out.insert(format!("{}.{suffix}", FINAL_MODULATION.1), swapped);
        }
        let count = |prefix: &str, d: &HashMap<String, Tensor>| {
            (0..)
                .take_while(|i| d.keys().any(|k| k.starts_with(&format!("{prefix}.{i}."))))
                .count()
        };
        for i in 0..count("transformer_blocks", &d) {
            let f = format!("transformer_blocks.{i}");
            let t = format!("double_blocks.{i}");
            for (parts, fused) in DOUBLE_FUSED {
                let parts = parts.map(|n| format!("{f}.{n}")).to_vec();
                fuse(&mut d, &mut out, &parts, &format!("{t}.{fused}"))?;
            }
            for (from, to) in DOUBLE_LINEARS {
                rename_linear(
                    &mut d,
                    &mut out,
                    &format!("{f}.{from}"),
                    &format!("{t}.{to}"),
                )?;
            }
            for (from, to) in DOUBLE_NORMS {
                let w = take(&mut d, &format!("{f}.attn.{from}.weight"))?;
                out.insert(format!("{t}.{to}.scale"), Weight::Dense(w));
            }
        }
        for i in 0..count("single_transformer_blocks", &d) {
            let f = format!("single_transformer_blocks.{i}");
            let t = format!("single_blocks.{i}");
            let parts = SINGLE_FUSED.map(|n| format!("{f}.{n}")).to_vec();
            fuse(&mut d, &mut out, &parts, &format!("{t}.linear1"))?;
            for (from, to) in SINGLE_LINEARS {
                rename_linear(
                    &mut d,
                    &mut out,
                    &format!("{f}.{from}"),
                    &format!("{t}.{to}"),
                )?;
            }
            for (from, to) in SINGLE_NORMS {
                let w = take(&mut d, &format!("{f}.attn.{from}.weight"))?;
                out.insert(format!("{t}.norm.{to}.scale"), Weight::Dense(w));
            }
        }
        if let Some(left) = d.keys().next() {
            return Err(EngineLoadError::Unsupported(format!(
                "FLUX transformer: unexpected tensor {left} ({} left over)",
                d.len()
            )));
        }
        Ok(Self::from_weights(
            out,
            device,
            "safetensors (diffusers layout)",
        ))
    }

    /// Reads a GGUF file in the BFL layout (as the community's FLUX GGUF
    /// conversions are). Float tensors become f32; quantized ones stay so.
    pub fn from_gguf(path: &Path, device: &Device) -> Result<Self, EngineLoadError> {
        let (mut file, content) = open_gguf(path)?;
        let mut tensors = HashMap::new();
        for name in content.tensor_infos.keys() {
            let q = content.tensor(&mut file, name, device)?;
            let weight = match q.dtype() {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                    Weight::Dense(q.dequantize(device)?)
                }
                _ => Weight::Quantized(Arc::new(q)),
            };
            // Some converters prefix the diffusion model's keys.
            let name = name
                .strip_prefix("model.diffusion_model.")
                .unwrap_or(name)
                .to_owned();
            tensors.insert(name, weight);
        }
        Ok(Self::from_weights(tensors, device, "GGUF"))
    }

    /// A GGUF file's tensor names and shapes (as [`Self::from_gguf`] gives
    /// them) over data-less stand-ins (`weights::shapes::stand_ins`): its
    /// header alone is read.
    pub fn gguf_shapes(path: &Path) -> Result<Self, EngineLoadError> {
        let (_, content) = open_gguf(path)?;
        let shapes = content
            .tensor_infos
            .iter()
            .map(|(name, info)| {
                let name = name.strip_prefix("model.diffusion_model.").unwrap_or(name);
                (name.to_owned(), info.shape.dims().to_vec())
            })
            .collect();
        let tensors = crate::weights::shapes::stand_ins(&shapes)?
            .into_iter()
            .map(|(k, v)| (k, Weight::Dense(v)))
            .collect();
        Ok(Self::from_weights(tensors, &Device::Cpu, "GGUF"))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&Weight> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// A float tensor (norm scales), dequantized if it was stored quantized.
    pub fn dense(&self, name: &str) -> candle_core::Result<Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("FLUX: missing tensor {name}")))?
            .dense(&self.device)
    }

    /// `prefix.weight` (out, in) and `prefix.bias`, checked against the
    /// expected shape.
    pub fn linear(
        &self,
        prefix: &str,
        input: usize,
        output: usize,
    ) -> candle_core::Result<QLinear> {
        let name = format!("{prefix}.weight");
        let weight = self
            .tensors
            .get(&name)
            .ok_or_else(|| candle_core::Error::Msg(format!("FLUX: missing tensor {name}")))?;
        if weight.dims() != [output, input] {
            candle_core::bail!(
                "FLUX: {name} is {:?}, expected [{output}, {input}]",
                weight.dims()
            );
        }
        // The tensors the layer runs are the ones LoRAs are merged into.
        let mut dense = Vec::new();
        let blocks = match weight {
            Weight::Dense(t) => {
                let t = t.to_dtype(DType::F32)?;
                dense.push((0, t.clone()));
                vec![Block::dense(t)]
            }
            Weight::Quantized(q) => vec![Block::Quantized(QMatMul::from_arc(q.clone())?)],
            Weight::Parts(parts) => {
                let mut first = 0;
                let mut blocks = Vec::new();
                for p in parts {
                    let p = p.to_dtype(DType::F32)?;
                    dense.push((first, p.clone()));
                    first += p.dim(0)?;
                    blocks.push(Block::dense(p));
                }
                blocks
            }
        };
        let bias = match self.tensors.get(&format!("{prefix}.bias")) {
            Some(b) => Some(b.dense(&self.device)?),
            None => None,
        };
        let adapter = AdapterSlot::default();
        self.lora_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name,
                LoraSlot {
                    dims: vec![output, input],
                    adapter: dense.is_empty().then(|| adapter.clone()),
                    dense,
                },
            );
        Ok(QLinear {
            blocks,
            bias,
            adapter,
        })
    }

    /// The linears made so far as LoRAs reach them (all of them, once the
    /// transformer is built), taken from the weights.
    pub(super) fn take_lora_slots(&self) -> HashMap<String, LoraSlot> {
        std::mem::take(&mut *self.lora_slots.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every matrix quantized by `quantize_tensor`. For tests and
    /// benchmarks of the quantized path.
    pub fn quantized(&self, dtype: GgmlDType) -> candle_core::Result<Self> {
        let mut tensors = HashMap::new();
        for (name, w) in &self.tensors {
            let weight = quantize_tensor(name, w.dense(&self.device)?, dtype)?;
            tensors.insert(name.clone(), weight);
        }
        Ok(Self::from_weights(tensors, &self.device, "GGUF"))
    }

    pub fn from_weights(
        tensors: HashMap<String, Weight>,
        device: &Device,
        format: &'static str,
    ) -> Self {
        Self {
            tensors,
            device: device.clone(),
            format,
            lora_slots: Mutex::default(),
        }
    }

    /// Every tensor as f32 (quantized ones dequantized), in the BFL layout.
    pub fn to_dense(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        self.tensors
            .iter()
            .map(|(name, w)| Ok((name.clone(), w.dense(&self.device)?)))
            .collect()
    }

    /// Writes the weights as a GGUF file (float tensors as f32).
    pub fn write_gguf(&self, path: &Path) -> candle_core::Result<()> {
        let mut owned = Vec::new();
        for (name, w) in &self.tensors {
            let q = match w {
                Weight::Quantized(q) => q.clone(),
                other => Arc::new(QTensor::quantize(
                    &other.dense(&self.device)?,
                    GgmlDType::F32,
                )?),
            };
            owned.push((name.clone(), q));
        }
        owned.sort_by(|a, b| a.0.cmp(&b.0));
        let refs: Vec<(&str, &QTensor)> = owned
            .iter()
            .map(|(n, q)| (n.as_str(), q.as_ref()))
            .collect();
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        gguf_file::write(&mut file, &[], &refs)
    }
}

/// How GGUF conversions store a tensor: a matrix quantized to `dtype` when
/// its rows divide into whole blocks (else Q8_0, else f32), everything
/// else (biases, norm scales) in f32.
pub fn quantize_tensor(name: &str, dense: Tensor, dtype: GgmlDType) -> candle_core::Result<Weight> {
    if dense.rank() != 2 || !name.ends_with(".weight") {
        return Ok(Weight::Dense(dense));
    }
    let cols = dense.dim(1)?;
    for candidate in [dtype, GgmlDType::Q8_0] {
        if cols % candidate.block_size() == 0 {
            return Ok(Weight::Quantized(Arc::new(QTensor::quantize(
                &dense, candidate,
            )?)));
        }
    }
    Ok(Weight::Dense(dense))
}
