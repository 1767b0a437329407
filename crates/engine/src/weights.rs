//! Reading configs and safetensors weights from a diffusers component folder.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::EngineLoadError;

pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T, EngineLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineLoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| EngineLoadError::Config {
        path: path.to_path_buf(),
        source,
    })
}

/// The safetensors files of a component folder: diffusers names them
/// `diffusion_pytorch_model*.safetensors`, transformers `model*.safetensors`
/// (sharded checkpoints have several).
pub fn safetensors_in(folder: &Path) -> Result<Vec<PathBuf>, EngineLoadError> {
    let entries = std::fs::read_dir(folder).map_err(|source| EngineLoadError::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineLoadError::Unsupported(format!(
            "no .safetensors weights in {}",
            folder.display()
        )));
    }
    Ok(files)
}

/// Memory-maps every safetensors file of `folder`.
pub fn var_builder(
    folder: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, EngineLoadError> {
    let files = safetensors_in(folder)?;
    // SAFETY: the files are memory-mapped read-only; like every safetensors
    // loader we rely on them not being modified while the model is loaded.
    Ok(unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device)? })
}
