//! LoRAs merged into a loaded model's weights, and taken out again, without
//! reloading it: each adapted weight becomes `W + Σ strength · alpha /
//! rank · up @ down`, written into the storage the model's layers share
//! with its parameter table (`kernels::in_place`). The first LoRA to touch
//! a weight saves a copy of it; unmerging copies those back, so switching
//! LoRAs a hundred times leaves exactly the weights that were loaded (a
//! subtraction would leave rounding behind, and the same seed would no
//! longer give the same picture).
//!
//! A model says where a LoRA layer goes through [`LoraTarget`]: one layer
//! may change row blocks of a fused weight (diffusers' `to_q` is the first
//! third of FLUX's `qkv`), or one fused layer several weights. Quantized
//! weights are not rewritten: their change runs beside them as a low-rank
//! [`Branch`] (requantizing would lose the LoRA in the rounding and cost
//! seconds per weight).

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use candle_core::Tensor;
use cyberimage_kernels::in_place::{add_product_in_place, copy_in_place};

use crate::error::EngineLoadError;
use crate::weights::lora::{resolve, Component, LoraFile, LowRank, ParameterNames};

/// A component's weights by name, sharing storage with its layers.
pub type ParameterTable = HashMap<String, Tensor>;

/// Where (part of) a LoRA layer's change goes: rows `up_rows` of its up
/// matrix change the rows of weight `weight` from `first_row` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub weight: String,
    pub up_rows: Range<usize>,
    pub first_row: usize,
}

/// A low-rank change run beside a quantized weight: `x @ downᵀ @ upᵀ`
/// added to rows `first_row..` of the layer's output (`up` carries the
/// strength and alpha / rank).
#[derive(Clone, Debug)]
pub struct Branch {
    pub weight: String,
    pub first_row: usize,
    pub down: Tensor,
    pub up: Tensor,
}

/// Where a component's LoRA layers go, and the shapes there: all a check
/// needs (the weights' names and shapes, read from file headers, will do).
pub trait LoraPlaces {
    /// Where `layer` goes; `None` when the model has no such layer. The
    /// placements' `up_rows` must cover the layer's up matrix exactly.
    fn place(&self, layer: &LowRank) -> Option<Vec<Placement>>;

    /// The weight's shape (rows, then the input dimensions).
    fn dims(&self, weight: &str) -> Option<Vec<usize>>;
}

/// One component's weights as LoRAs change them.
pub trait LoraTarget: LoraPlaces {
    /// The weight's float row blocks (first row, a tensor sharing the
    /// layer's storage); empty when it is quantized.
    fn dense_rows(&self, weight: &str) -> Vec<(usize, Tensor)>;

    /// Makes `branches` the ones run beside the quantized weights (none:
    /// the weights alone).
    fn set_branches(&self, branches: Vec<Branch>) -> Result<(), EngineLoadError> {
        match branches.first() {
            None => Ok(()),
            Some(b) => Err(EngineLoadError::Lora(format!(
                "{} is quantized, and this model cannot run a LoRA beside it",
                b.weight
            ))),
        }
    }
}

/// A component's weights by name: the loaded tensors, or only their
/// shapes (`weights::shapes`).
pub trait WeightTable {
    fn weight_names(&self) -> Vec<&String>;
    fn weight_dims(&self, name: &str) -> Option<Vec<usize>>;
    /// The tensor itself; `None` for a table of shapes.
    fn weight_tensor(&self, name: &str) -> Option<Tensor>;
}

impl WeightTable for ParameterTable {
    fn weight_names(&self) -> Vec<&String> {
        self.keys().collect()
    }

    fn weight_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.get(name).map(|t| t.dims().to_vec())
    }

    fn weight_tensor(&self, name: &str) -> Option<Tensor> {
        self.get(name).cloned()
    }
}

impl WeightTable for crate::weights::shapes::Shapes {
    fn weight_names(&self) -> Vec<&String> {
        self.keys().collect()
    }

    fn weight_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.get(name).cloned()
    }

    fn weight_tensor(&self, _: &str) -> Option<Tensor> {
        None
    }
}

impl<W: WeightTable> WeightTable for &W {
    fn weight_names(&self) -> Vec<&String> {
        (**self).weight_names()
    }

    fn weight_dims(&self, name: &str) -> Option<Vec<usize>> {
        (**self).weight_dims(name)
    }

    fn weight_tensor(&self, name: &str) -> Option<Tensor> {
        (**self).weight_tensor(name)
    }
}

/// A plain table (borrowed or owned, of tensors or of shapes): every layer
/// name resolves to one whole weight.
pub struct TableTarget<T> {
    table: T,
    names: ParameterNames,
}

impl<T: WeightTable> TableTarget<T> {
    pub fn new(table: T) -> Self {
        let names = ParameterNames::new(table.weight_names());
        Self { table, names }
    }

    pub fn table(&self) -> &T {
        &self.table
    }
}

impl<T: WeightTable> LoraPlaces for TableTarget<T> {
    fn place(&self, layer: &LowRank) -> Option<Vec<Placement>> {
        let weight = resolve(&self.names, &layer.layer)?;
        let rows = self
            .table
            .weight_dims(weight)
            .and_then(|d| d.first().copied())
            .unwrap_or(0);
        Some(vec![Placement {
            weight: weight.to_string(),
            up_rows: 0..rows,
            first_row: 0,
        }])
    }

    fn dims(&self, weight: &str) -> Option<Vec<usize>> {
        self.table.weight_dims(weight)
    }
}

impl<T: Borrow<ParameterTable>> LoraTarget for TableTarget<T>
where
    TableTarget<T>: LoraPlaces,
{
    fn dense_rows(&self, weight: &str) -> Vec<(usize, Tensor)> {
        self.table
            .borrow()
            .get(weight)
            .map(|t| vec![(0, t.clone())])
            .unwrap_or_default()
    }
}

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

/// Refuses a set with a LoRA for a component outside `reachable` (SDXL's
/// second text encoder on SD 1.5: a LoRA for another family).
pub fn check_components(reachable: &[Component], set: &[LoraUse]) -> Result<(), EngineLoadError> {
    for lora in set {
        if let Some(component) = lora
            .file
            .components()
            .into_iter()
            .find(|c| !reachable.contains(c))
        {
            return Err(EngineLoadError::Lora(format!(
                "{} adapts a {component}, which this model does not have (or LoRAs cannot reach \
                 yet): is it for another model family?",
                lora.id
            )));
        }
    }
    Ok(())
}

/// A saved row block: component, weight, its first row.
type SavedKey = (Component, String, usize);

/// What is merged into one model now.
#[derive(Default)]
pub struct MergedLoras {
    saved: HashMap<SavedKey, Tensor>,
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
        let targets = table_targets(tables);
        self.set_on(&as_dyn(&targets), set)
    }

    /// As [`set`](Self::set), on any targets.
    pub fn set_on(
        &mut self,
        targets: &[(Component, &dyn LoraTarget)],
        set: &[LoraUse],
    ) -> Result<(), EngineLoadError> {
        if self.applied == set {
            return Ok(());
        }
        self.unmerge_on(targets)?;
        if let Err(e) = merge_into(targets, set, Some(&mut self.saved)) {
            self.unmerge_on(targets)?;
            return Err(e);
        }
        self.applied = set.to_vec();
        Ok(())
    }

    /// Makes `set` the merged LoRAs of `targets` (a denoiser), then runs
    /// `also` (the text encoders' turn); when that fails the merge is
    /// taken out again, so on any error nothing stays merged.
    pub fn set_then(
        &mut self,
        targets: &[(Component, &dyn LoraTarget)],
        set: &[LoraUse],
        also: impl FnOnce() -> Result<(), EngineLoadError>,
    ) -> Result<(), EngineLoadError> {
        self.set_on(targets, set)?;
        if let Err(e) = also() {
            self.unmerge_on(targets)?;
            return Err(e);
        }
        Ok(())
    }

    /// Puts back every weight a LoRA changed.
    pub fn unmerge(
        &mut self,
        tables: &[(Component, &ParameterTable)],
    ) -> Result<(), EngineLoadError> {
        let targets = table_targets(tables);
        self.unmerge_on(&as_dyn(&targets))
    }

    /// As [`unmerge`](Self::unmerge), on any targets; their branches go too.
    pub fn unmerge_on(
        &mut self,
        targets: &[(Component, &dyn LoraTarget)],
    ) -> Result<(), EngineLoadError> {
        for ((component, name, first_row), original) in self.saved.drain() {
            let target = targets
                .iter()
                .find(|(c, _)| *c == component)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    EngineLoadError::Lora(format!(
                        "{component} is gone before its LoRA weights were put back"
                    ))
                })?;
            let block = target
                .dense_rows(&name)
                .into_iter()
                .find(|(first, _)| *first == first_row)
                .map(|(_, t)| t)
                .ok_or_else(|| EngineLoadError::Lora(format!("{name} lost its rows")))?;
            copy_in_place(&block, &original)?;
        }
        for (_, target) in targets {
            target.set_branches(Vec::new())?;
        }
        self.applied.clear();
        Ok(())
    }
}

fn table_targets<'a>(
    tables: &[(Component, &'a ParameterTable)],
) -> Vec<(Component, TableTarget<&'a ParameterTable>)> {
    tables
        .iter()
        .map(|(c, t)| (*c, TableTarget::new(*t)))
        .collect()
}

fn as_dyn<'a>(
    targets: &'a [(Component, TableTarget<&'a ParameterTable>)],
) -> Vec<(Component, &'a dyn LoraTarget)> {
    targets
        .iter()
        .map(|(c, t)| (*c, t as &dyn LoraTarget))
        .collect()
}

/// Merges `set` into freshly loaded weights that will be dropped after use
/// (text encoders loaded per prompt): nothing is saved.
pub fn merge_for_once(
    tables: &[(Component, &ParameterTable)],
    set: &[LoraUse],
) -> Result<(), EngineLoadError> {
    let targets = table_targets(tables);
    merge_into(&as_dyn(&targets), set, None)
}

/// Whether `set` fits `targets` (each component's, by its own names):
/// every layer placed, its rows covered, its shapes those of the weights.
/// What merging would refuse, found without touching a weight.
pub fn check_fit(
    targets: &[(Component, &dyn LoraPlaces)],
    set: &[LoraUse],
) -> Result<(), EngineLoadError> {
    for (component, target) in targets {
        for lora in set {
            for layer in lora
                .file
                .layers
                .iter()
                .filter(|l| l.component == *component)
            {
                for (placement, shape) in placements(*target, lora, layer)? {
                    layer.check_pair(placement.up_rows.clone(), &shape)?;
                }
            }
        }
    }
    Ok(())
}

/// [`check_fit`] on plain tables (of tensors or of shapes), by component.
pub fn check_tables<T: WeightTable>(
    tables: &[(Component, T)],
    set: &[LoraUse],
) -> Result<(), EngineLoadError> {
    let targets: Vec<(Component, TableTarget<&T>)> = tables
        .iter()
        .map(|(c, t)| (*c, TableTarget::new(t)))
        .collect();
    let places: Vec<(Component, &dyn LoraPlaces)> = targets
        .iter()
        .map(|(c, t)| (*c, t as &dyn LoraPlaces))
        .collect();
    check_fit(&places, set)
}

/// Where `layer` of `lora` goes, each part with the shape of the rows it
/// changes; an error names what does not fit.
fn placements(
    target: &dyn LoraPlaces,
    lora: &LoraUse,
    layer: &LowRank,
) -> Result<Vec<(Placement, Vec<usize>)>, EngineLoadError> {
    let component = layer.component;
    let placements = target.place(layer).ok_or_else(|| {
        EngineLoadError::Lora(format!(
            "{} adapts {component} layer {}, which this model does not have: is it for another model family?",
            lora.id, layer.layer
        ))
    })?;
    let covered: usize = placements.iter().map(|p| p.up_rows.len()).sum();
    if covered != layer.up.dim(0)? {
        return Err(EngineLoadError::Lora(format!(
            "{}: {} changes {} rows where the model's layer has {covered}: is the LoRA for another model?",
            lora.id,
            layer.layer,
            layer.up.dim(0)?
        )));
    }
    placements
        .into_iter()
        .map(|placement| {
            let dims = target
                .dims(&placement.weight)
                .ok_or_else(|| EngineLoadError::Lora(format!("{}: no weight", placement.weight)))?;
            let rows = placement.up_rows.len();
            if placement.first_row + rows > dims[0] {
                return Err(EngineLoadError::Lora(format!(
                    "{}: rows {}..{} of a {:?} weight",
                    layer.layer,
                    placement.first_row,
                    placement.first_row + rows,
                    dims
                )));
            }
            let mut shape = dims;
            shape[0] = rows;
            Ok((placement, shape))
        })
        .collect()
}

fn merge_into(
    targets: &[(Component, &dyn LoraTarget)],
    set: &[LoraUse],
    mut saved: Option<&mut HashMap<SavedKey, Tensor>>,
) -> Result<(), EngineLoadError> {
    for (component, target) in targets {
        let mut branches = Vec::new();
        for lora in set {
            for layer in lora
                .file
                .layers
                .iter()
                .filter(|l| l.component == *component)
            {
                for (placement, shape) in placements(*target as &dyn LoraPlaces, lora, layer)? {
                    let (down, up) =
                        layer.scaled_pair(placement.up_rows.clone(), &shape, lora.strength)?;
                    let blocks = target.dense_rows(&placement.weight);
                    if blocks.is_empty() {
                        branches.push(Branch {
                            weight: placement.weight.clone(),
                            first_row: placement.first_row,
                            down,
                            up,
                        });
                        continue;
                    }
                    add_rows(&blocks, &up, &down, placement.first_row, |first, block| {
                        if let Some(saved) = saved.as_deref_mut() {
                            let key = (*component, placement.weight.clone(), first);
                            if let Entry::Vacant(slot) = saved.entry(key) {
                                slot.insert(block.copy()?);
                            }
                        }
                        Ok(())
                    })?;
                }
            }
        }
        target.set_branches(branches)?;
    }
    Ok(())
}

/// Adds `up · down` (rows from `first_row` on) into the row blocks it
/// overlaps, calling `before` with each block about to change.
fn add_rows(
    blocks: &[(usize, Tensor)],
    up: &Tensor,
    down: &Tensor,
    first_row: usize,
    mut before: impl FnMut(usize, &Tensor) -> Result<(), EngineLoadError>,
) -> Result<(), EngineLoadError> {
    let end = first_row + up.dim(0)?;
    for (start, block) in blocks {
        let block_end = start + block.dim(0)?;
        let (from, to) = (first_row.max(*start), end.min(block_end));
        if from >= to {
            continue;
        }
        before(*start, block)?;
        add_product_in_place(
            &block.narrow(0, from - start, to - from)?,
            &up.narrow(0, from - first_row, to - from)?,
            down,
        )?;
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
