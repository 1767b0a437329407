//! LoRAs on the FLUX transformer, in any of the namings people download:
//! diffusers / PEFT (`transformer.transformer_blocks.0.attn.to_q`), the
//! original BFL names as ComfyUI saves them
//! (`diffusion_model.double_blocks.0.img_attn.qkv`), kohya's flattened BFL
//! names (`lora_unet_double_blocks_0_img_attn_qkv`) and flattened diffusers
//! names (`lora_transformer_…`). The model runs BFL's fused matrices, so a
//! diffusers `to_q` changes the first third of `qkv`'s rows, and a fused
//! kohya `qkv` changes three row blocks when the weights were loaded from
//! a diffusers folder (kept there as separate blocks).
//!
//! Dense weights are merged; quantized (GGUF) ones get a low-rank
//! [`Adapter`] beside their product, every LoRA of the layer in one pair
//! of thin matrices.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use candle_core::{Tensor, D};

use super::names::{diffusers_linears, RowsIn};
use crate::error::EngineLoadError;
use crate::weights::lora::{LayerName, LowRank};
use crate::weights::lora_merge::{Branch, LoraPlaces, LoraTarget, Placement};

/// The low-rank change run beside one quantized layer: `x @ down_t @
/// up_t`, with every LoRA's rank side by side (`down_t`: inputs × R,
/// `up_t`: R × outputs, zero where a LoRA does not reach).
pub struct Adapter {
    down_t: Tensor,
    up_t: Tensor,
}

impl Adapter {
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_matmul(&self.down_t)?
            .broadcast_matmul(&self.up_t)
    }
}

/// A quantized layer's adapter, shared by the layer and the target.
pub type AdapterSlot = Arc<RwLock<Option<Adapter>>>;

/// One linear as LoRAs reach it.
pub struct LoraSlot {
    /// (outputs, inputs)
    pub(super) dims: Vec<usize>,
    /// Its float row blocks (first row, the layer's own tensor).
    pub(super) dense: Vec<(usize, Tensor)>,
    /// Set for quantized weights only.
    pub(super) adapter: Option<AdapterSlot>,
}

pub struct FluxLoraTarget {
    /// By BFL weight name (`double_blocks.0.img_attn.qkv.weight`).
    slots: HashMap<String, LoraSlot>,
    /// Every module name a LoRA may use, in either naming, dotted.
    modules: HashMap<String, Vec<RowsIn>>,
    /// The same names flattened (kohya's `_` for `.`).
    flattened: HashMap<String, String>,
}

impl FluxLoraTarget {
    /// Over the linears of a model with `double` and `single` blocks of
    /// width `hidden`.
    pub(super) fn new(
        slots: HashMap<String, LoraSlot>,
        hidden: usize,
        double: usize,
        single: usize,
        guidance: bool,
    ) -> Self {
        let mut modules: HashMap<String, Vec<RowsIn>> = slots
            .keys()
            .filter_map(|name| name.strip_suffix(".weight"))
            .map(|module| {
                let whole = RowsIn {
                    module: module.to_string(),
                    rows: None,
                    first_row: 0,
                };
                (module.to_string(), vec![whole])
            })
            .collect();
        modules.extend(diffusers_linears(hidden, double, single, guidance));
        let flattened = modules
            .keys()
            .map(|name| (name.replace('.', "_"), name.clone()))
            .collect();
        Self {
            slots,
            modules,
            flattened,
        }
    }

    /// Whether the weight `name` runs quantized.
    pub fn is_quantized(&self, name: &str) -> bool {
        self.slots.get(name).is_some_and(|s| s.adapter.is_some())
    }

    /// The weight of `module` (in either naming) as the model runs it now,
    /// LoRAs merged (branches beside quantized weights are not in it): for
    /// tests and diagnostics. `None` for a quantized or unknown module.
    pub fn weight_as(&self, module: &str) -> Option<Tensor> {
        let mut pieces = Vec::new();
        for place in self.modules.get(module)? {
            let slot = self.slots.get(&format!("{}.weight", place.module))?;
            if slot.dense.is_empty() {
                return None;
            }
            let blocks: Vec<&Tensor> = slot.dense.iter().map(|(_, t)| t).collect();
            let whole = Tensor::cat(&blocks, 0).ok()?;
            let rows = place.rows.clone().unwrap_or(0..slot.dims[0]);
            let piece = whole.narrow(0, place.first_row, rows.len()).ok()?;
            pieces.push((rows.start, piece));
        }
        pieces.sort_by_key(|(start, _)| *start);
        let pieces: Vec<Tensor> = pieces.into_iter().map(|(_, t)| t).collect();
        Tensor::cat(&pieces, 0).ok()
    }

    /// How many layers run a LoRA beside their quantized weights now.
    pub fn adapted_layers(&self) -> usize {
        self.slots
            .values()
            .filter_map(|s| s.adapter.as_ref())
            .filter(|a| a.read().unwrap_or_else(|e| e.into_inner()).is_some())
            .count()
    }
}

impl LoraPlaces for FluxLoraTarget {
    fn place(&self, layer: &LowRank) -> Option<Vec<Placement>> {
        let module = match &layer.layer {
            LayerName::Dotted(name) => name.as_str(),
            LayerName::Flattened(name) => self.flattened.get(name)?.as_str(),
        };
        let up_rows = layer.up.dim(0).ok()?;
        self.modules.get(module).map(|places| {
            places
                .iter()
                .map(|p| Placement {
                    weight: format!("{}.weight", p.module),
                    up_rows: p.rows.clone().unwrap_or(0..up_rows),
                    first_row: p.first_row,
                })
                .collect()
        })
    }

    fn dims(&self, weight: &str) -> Option<Vec<usize>> {
        self.slots.get(weight).map(|s| s.dims.clone())
    }
}

impl LoraTarget for FluxLoraTarget {
    fn dense_rows(&self, weight: &str) -> Vec<(usize, Tensor)> {
        self.slots
            .get(weight)
            .map(|s| s.dense.clone())
            .unwrap_or_default()
    }

    fn set_branches(&self, branches: Vec<Branch>) -> Result<(), EngineLoadError> {
        let mut by_weight: HashMap<&str, Vec<&Branch>> = HashMap::new();
        for branch in &branches {
            by_weight.entry(&branch.weight).or_default().push(branch);
        }
        let mut adapters = Vec::new();
        for (weight, branches) in &by_weight {
            let slot = self.slots.get(*weight);
            let Some((slot, adapter)) = slot.and_then(|s| s.adapter.as_ref().map(|a| (s, a)))
            else {
                return Err(EngineLoadError::Lora(format!(
                    "{weight} is not a quantized weight of this model"
                )));
            };
            adapters.push((adapter, combine(branches, slot.dims[0])?));
        }
        for slot in self.slots.values() {
            if let Some(adapter) = &slot.adapter {
                *adapter.write().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        for (slot, adapter) in adapters {
            *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(adapter);
        }
        Ok(())
    }
}

/// One layer's branches as one adapter: downs stacked, ups placed at their
/// rows of the output and zero elsewhere.
fn combine(branches: &[&Branch], outputs: usize) -> Result<Adapter, EngineLoadError> {
    let downs: Vec<&Tensor> = branches.iter().map(|b| &b.down).collect();
    let ups = branches
        .iter()
        .map(|b| {
            let rows = b.up.dim(0)?;
            b.up.pad_with_zeros(0, b.first_row, outputs - b.first_row - rows)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Adapter {
        down_t: Tensor::cat(&downs, 0)?.t()?.contiguous()?,
        up_t: Tensor::cat(&ups, D::Minus1)?.t()?.contiguous()?,
    })
}
