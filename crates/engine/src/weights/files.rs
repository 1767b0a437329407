//! The plain files of a diffusers component folder: its `config.json`
//! and its safetensors weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;

use crate::error::EngineLoadError;
use crate::weights::safetensors::{self, ReadError};

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

/// Every tensor of `files`, by name. Float tensors are converted to
/// `dtype` as each is read, so a bf16 checkpoint loaded as f32 never holds
/// both copies (T5-XXL: 9.5 GB stored, 19 GB loaded, not 28.5).
pub fn read_tensors(
    files: &[PathBuf],
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>, EngineLoadError> {
    let mut tensors = HashMap::new();
    for file in files {
        read_file(
            file,
            device,
            dtype,
            &|name| Some(name.to_string()),
            &mut tensors,
        )?;
    }
    Ok(tensors)
}

/// The tensors of `file` that `select` names, under the names it gives.
pub(crate) fn read_file(
    file: &Path,
    device: &Device,
    dtype: DType,
    select: &dyn Fn(&str) -> Option<String>,
    out: &mut HashMap<String, Tensor>,
) -> Result<(), EngineLoadError> {
    safetensors::read_selected(file, device, dtype, select, out).map_err(|e| match e {
        ReadError::Io(source) => EngineLoadError::Io {
            path: file.to_path_buf(),
            source,
        },
        ReadError::Format(what) => {
            EngineLoadError::Unsupported(format!("{}: {what}", file.display()))
        }
        ReadError::Candle(e) => EngineLoadError::from(e),
    })
}

/// Bytes the file's tensors take once loaded as f32 (from its header only).
pub fn f32_bytes(path: &Path) -> std::io::Result<u64> {
    Ok(safetensors::read_header(path)?
        .values()
        .map(|e| e.elements() * 4)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_checkpoints_are_converted_as_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let values = Tensor::new(&[[1.5f32, -2.25], [0.125, 3.0]], &Device::Cpu).unwrap();
        let stored: HashMap<String, Tensor> = [
            ("w".to_string(), values.to_dtype(DType::BF16).unwrap()),
            (
                "ids".to_string(),
                Tensor::new(&[7u32, 9], &Device::Cpu).unwrap(),
            ),
        ]
        .into();
        let file = dir.path().join("model.safetensors");
        candle_core::safetensors::save(&stored, &file).unwrap();
        let read = read_tensors(std::slice::from_ref(&file), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(read["w"].dtype(), DType::F32);
        assert_eq!(
            read["w"].to_vec2::<f32>().unwrap(),
            values.to_vec2::<f32>().unwrap()
        );
        assert_eq!(read["ids"].dtype(), DType::U32, "integers stay as stored");
        // The footprint counts what will be resident: f32.
        assert_eq!(f32_bytes(&file).unwrap(), 4 * 4 + 2 * 4);
    }
}
