//! Reading configs and weights of a model's components: a diffusers
//! component folder, or the part of a single checkpoint file it points at
//! (`single_file`, found in ComfyUI / A1111 folders by `scan`); the file
//! format itself (`safetensors`), the weights' digests (`digest`), the
//! models compiled into the binary (`builtin`), and the memory budget with
//! the engine's options (`memory`), and LoRA files with their merging
//! into loaded weights (`lora`, `lora_merge`), an upscaler's one file
//! (`upscaler_file`: safetensors or a PyTorch pickle), and a component's
//! weight names and shapes from headers alone (`shapes`).

pub mod builtin;
pub(crate) mod digest;
pub mod files;
pub mod lora;
pub mod lora_merge;
pub mod memory;
pub mod safetensors;
pub mod scan;
pub mod shapes;
pub mod single_file;
pub mod upscaler_file;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::EngineLoadError;
pub use files::{f32_bytes, read_config, read_tensors, safetensors_in};

/// Reads every tensor of a component folder, one tensor at a time with
/// plain reads. A memory map would keep the file's pages resident next to
/// the copies the model owns (about 2× the weights at load); reading keeps
/// the peak at the weights plus one tensor.
pub fn var_builder(
    folder: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, EngineLoadError> {
    Ok(VarBuilder::from_tensors(
        component_tensors(folder, device, dtype)?,
        dtype,
        device,
    ))
}

/// As `var_builder`, with the tensors by name beside it: they share
/// storage with the layers built from the builder, so a LoRA merged into
/// the table is merged into the model (`lora_merge`).
pub fn var_builder_and_table(
    folder: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(VarBuilder<'static>, lora_merge::ParameterTable), EngineLoadError> {
    let tensors = component_tensors(folder, device, dtype)?;
    let table = tensors.clone();
    Ok((VarBuilder::from_tensors(tensors, dtype, device), table))
}

/// Every tensor of a component, under diffusers' names: the folder's own
/// safetensors files, or the part of a single checkpoint file that its
/// `single-file.json` points at (renamed from that file's layout).
pub fn component_tensors(
    folder: &Path,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>, EngineLoadError> {
    match single_file::pointer(folder)? {
        Some(part) => single_file::read_component(folder, &part, device, dtype),
        None => read_tensors(&safetensors_in(folder)?, device, dtype),
    }
}
