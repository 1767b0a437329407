//! A component's weight names and shapes exactly as `component_tensors`
//! would load them (single files renamed and their fused matrices split by
//! the same layout code), read from file headers alone: what a LoRA needs
//! checked against a model before its job is queued, in a few
//! milliseconds and without the gigabytes of the weights themselves.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::EngineLoadError;
use crate::weights::files::safetensors_in;
use crate::weights::safetensors::read_header;
use crate::weights::single_file;

/// Weight names and their shapes.
pub type Shapes = HashMap<String, Vec<usize>>;

/// What [`component_tensors`](super::component_tensors) of `folder` would
/// hold, as names and shapes.
pub fn component_shapes(folder: &Path) -> Result<Shapes, EngineLoadError> {
    if let Some(part) = single_file::pointer(folder)? {
        return single_file::component_shapes(folder, &part);
    }
    let mut shapes = Shapes::new();
    for file in safetensors_in(folder)? {
        let header = read_header(&file).map_err(|source| EngineLoadError::Io {
            path: file.clone(),
            source,
        })?;
        shapes.extend(header.into_iter().map(|(name, entry)| (name, entry.shape)));
    }
    Ok(shapes)
}

/// Tensors of these shapes that hold no data (one value, strides of
/// zero), for layout code that renames weights, takes row blocks of them
/// and joins small biases, so that code can tell a model's shapes from its
/// headers. Anything that copies one allocates its full size: only code
/// that moves no matrix may take them.
pub fn stand_ins(shapes: &Shapes) -> Result<HashMap<String, Tensor>, EngineLoadError> {
    let one = Tensor::zeros((), DType::F32, &Device::Cpu)?;
    shapes
        .iter()
        .map(|(name, dims)| Ok((name.clone(), one.broadcast_as(dims.as_slice())?)))
        .collect()
}
