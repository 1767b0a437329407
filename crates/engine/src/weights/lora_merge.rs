//! LoRAs merged into a loaded model's weights, and taken out again, without
//! reloading it: each adapted weight becomes `W + Σ strength · alpha /
//! rank · up @ down`, written into the storage the model's layers share
//! with its parameter table (`kernels::in_place`). The first LoRA to touch
//! a weight saves a copy of it; unmerging copies those back, so switching
//! LoRAs a hundred times leaves exactly the weights that were loaded (a
//! subtraction would leave rounding behind, and the same seed would no
//! longer give the same picture).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use cyberimage_kernels::in_place::{add_in_place, copy_in_place};

use crate::error::EngineLoadError;
use crate::weights::lora::{resolve, Component, LoraFile, ParameterNames};

/// A component's weights by name, sharing storage with its layers.
pub type ParameterTable = HashMap<String, Tensor>;

/// One LoRA to apply: its name (for messages), its layers and its
/// strength. Two uses are the same when they name the same parsed file at
/// the same strength: a file replaced under the same name is another use.
#[derive(Clone, Debug)]
pub struct LoraUse {
    pub id: String,
    pub file: Arc<LoraFile>,
    pub strength: f64,
}

impl PartialEq for LoraUse {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && Arc::ptr_eq(&self.file, &other.file)
            && self.strength == other.strength
    }
}

/// What is merged into one model now.
#[derive(Default)]
pub struct MergedLoras {
    saved: HashMap<(Component, String), Tensor>,
    applied: Vec<LoraUse>,
}

impl MergedLoras {
    pub fn applied(&self) -> &[LoraUse] {
        &self.applied
    }

    /// Makes `set` the merged LoRAs of the components in `tables` (those
    /// of other components are left to whoever loads them): what was
    /// merged before is taken out first. On an error nothing stays merged.
    pub fn set(
        &mut self,
        tables: &[(Component, &ParameterTable)],
        set: &[LoraUse],
    ) -> Result<(), EngineLoadError> {
        if self.applied == set {
            return Ok(());
        }
        self.unmerge(tables)?;
        if let Err(e) = merge_into(tables, set, Some(&mut self.saved)) {
            self.unmerge(tables)?;
            return Err(e);
        }
        self.applied = set.to_vec();
        Ok(())
    }

    /// Puts back every weight a LoRA changed.
    pub fn unmerge(
        &mut self,
        tables: &[(Component, &ParameterTable)],
    ) -> Result<(), EngineLoadError> {
        for ((component, name), original) in self.saved.drain() {
            let table = tables
                .iter()
                .find(|(c, _)| *c == component)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    EngineLoadError::Lora(format!(
                        "{component} is gone before its LoRA weights were put back"
                    ))
                })?;
            copy_in_place(&table[&name], &original)?;
        }
        self.applied.clear();
        Ok(())
    }
}

/// Merges `set` into freshly loaded weights that will be dropped after use
/// (text encoders loaded per prompt): nothing is saved.
pub fn merge_for_once(
    tables: &[(Component, &ParameterTable)],
    set: &[LoraUse],
) -> Result<(), EngineLoadError> {
    merge_into(tables, set, None)
}

fn merge_into(
    tables: &[(Component, &ParameterTable)],
    set: &[LoraUse],
    mut saved: Option<&mut HashMap<(Component, String), Tensor>>,
) -> Result<(), EngineLoadError> {
    for (component, table) in tables {
        let names = ParameterNames::new(table.keys());
        for lora in set {
            for layer in lora
                .file
                .layers
                .iter()
                .filter(|l| l.component == *component)
            {
                let name = resolve(&names, &layer.layer).ok_or_else(|| {
                    EngineLoadError::Lora(format!(
                        "{} adapts {component} layer {}, which this model does not have: is it for another model family?",
                        lora.id, layer.layer
                    ))
                })?;
                let weight = &table[name];
                let delta = layer.delta(weight.dims(), lora.strength)?;
                if let Some(saved) = saved.as_deref_mut() {
                    if let Entry::Vacant(slot) = saved.entry((*component, name.to_string())) {
                        slot.insert(weight.copy()?);
                    }
                }
                add_in_place(weight, &delta)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::lora::{LayerName, LoraFormat, LowRank};
    use candle_core::{DType, Device};

    fn lora(layer: &str, value: f32) -> LoraUse {
        let dev = Device::Cpu;
        LoraUse {
            id: format!("{layer}-{value}"),
            file: Arc::new(LoraFile {
                format: LoraFormat::Peft,
                layers: vec![LowRank {
                    component: Component::Denoiser,
                    layer: LayerName::Dotted(layer.into()),
                    down: Tensor::full(value, (1, 2), &dev).unwrap(),
                    up: Tensor::ones((2, 1), DType::F32, &dev).unwrap(),
                    alpha: None,
                }],
            }),
            strength: 1.0,
        }
    }

    #[test]
    fn merging_and_switching_restores_the_loaded_weights_exactly() {
        let dev = Device::Cpu;
        let weight = Tensor::new(&[[0.1f32, 0.2], [0.3, 0.7]], &dev).unwrap();
        let layer_view = weight.clone();
        let table: ParameterTable = HashMap::from([("a.weight".to_string(), weight)]);
        let tables = [(Component::Denoiser, &table)];
        let mut merged = MergedLoras::default();
        let original = layer_view.to_vec2::<f32>().unwrap();
        for round in 0..50 {
            let value = 0.013 * round as f32;
            merged
                .set(&tables, &[lora("a", value), lora("a", 0.5)])
                .unwrap();
            let got = layer_view.to_vec2::<f32>().unwrap();
            assert!((got[1][1] - (0.7 + value + 0.5)).abs() < 1e-6, "{got:?}");
        }
        merged.unmerge(&tables).unwrap();
        assert_eq!(
            layer_view.to_vec2::<f32>().unwrap(),
            original,
            "bit for bit"
        );

        // Another file under the same name and strength is merged anew.
        let first = lora("a", 0.25);
        merged.set(&tables, std::slice::from_ref(&first)).unwrap();
        let replaced = LoraUse {
            file: lora("a", 1.0).file,
            ..first.clone()
        };
        merged.set(&tables, &[replaced]).unwrap();
        let got = layer_view.to_vec2::<f32>().unwrap();
        assert!((got[1][1] - 1.7).abs() < 1e-6, "{got:?}");
        merged.unmerge(&tables).unwrap();

        // A layer the model lacks: an error naming it, and nothing merged.
        merged.set(&tables, &[lora("a", 1.0)]).unwrap();
        let err = merged
            .set(&tables, &[lora("a", 2.0), lora("missing", 1.0)])
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(layer_view.to_vec2::<f32>().unwrap(), original);
        assert!(merged.applied().is_empty());
    }
}
