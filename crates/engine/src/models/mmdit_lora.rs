//! LoRAs on the SD 3 / 3.5 MMDiT: diffusers / PEFT names
//! (`transformer.transformer_blocks.0.attn.to_q`, or flattened as
//! `lora_transformer_…`) go to the weight of that name; Stability's names
//! (`lora_unet_joint_blocks_0_x_block_attn_qkv`, kohya's sd-scripts, or
//! `diffusion_model.joint_blocks.…` as ComfyUI saves them) have q, k and v
//! fused and the final modulations as shift-then-scale, so their rows are
//! spread over diffusers' separate weights.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::weights::lora::{LayerName, LowRank};
use crate::weights::lora_merge::{
    LoraPlaces, LoraTarget, ParameterTable, Placement, TableTarget, WeightTable,
};
use crate::weights::single_file::{stability_linears, StabilityPlace};

pub struct MmditLoraTarget<T = ParameterTable> {
    /// diffusers' names, each a whole weight.
    diffusers: TableTarget<T>,
    /// Stability module names, dotted, and where their rows go.
    stability: HashMap<String, Vec<StabilityPlace>>,
    /// The same names flattened.
    flattened: HashMap<String, String>,
}

impl<T: WeightTable> MmditLoraTarget<T> {
    /// Over the MMDiT's weights (sharing storage with its layers), or
    /// their shapes alone (to check LoRAs before loading).
    pub fn new(table: T) -> Self {
        let names = table.weight_names();
        let last = names
            .iter()
            .filter_map(|k| k.strip_prefix("transformer_blocks."))
            .filter_map(|k| k.split_once('.')?.0.parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        let stability: HashMap<String, Vec<StabilityPlace>> = stability_linears(last)
            .into_iter()
            .filter(|(_, places)| {
                places
                    .iter()
                    .all(|p| table.weight_dims(&p.weight).is_some())
            })
            .collect();
        let flattened = stability
            .keys()
            .map(|k| (k.replace('.', "_"), k.clone()))
            .collect();
        Self {
            diffusers: TableTarget::new(table),
            stability,
            flattened,
        }
    }

    pub fn table(&self) -> &T {
        self.diffusers.table()
    }
}

impl<T: WeightTable> LoraPlaces for MmditLoraTarget<T> {
    fn place(&self, layer: &LowRank) -> Option<Vec<Placement>> {
        if let Some(whole) = self.diffusers.place(layer) {
            return Some(whole);
        }
        let module = match &layer.layer {
            LayerName::Dotted(name) => name.as_str(),
            LayerName::Flattened(name) => self.flattened.get(name)?.as_str(),
        };
        let up_rows = layer.up.dim(0).ok()?;
        let places = self.stability.get(module)?;
        Some(
            places
                .iter()
                .map(|p| match p.block {
                    None => Placement {
                        weight: p.weight.clone(),
                        up_rows: 0..up_rows,
                        first_row: 0,
                    },
                    Some((k, of)) => {
                        let size = up_rows / of;
                        Placement {
                            weight: p.weight.clone(),
                            up_rows: k * size..(k + 1) * size,
                            first_row: p.at_block * size,
                        }
                    }
                })
                .collect(),
        )
    }

    fn dims(&self, weight: &str) -> Option<Vec<usize>> {
        self.diffusers.dims(weight)
    }
}

impl LoraTarget for MmditLoraTarget {
    fn dense_rows(&self, weight: &str) -> Vec<(usize, Tensor)> {
        self.diffusers.dense_rows(weight)
    }
}
