//! Reading configs and safetensors weights from a diffusers component
//! folder; beside it the weights' digests (`digest`), the models compiled
//! into the binary (`builtin`), and the memory budget with the engine's
//! options (`memory`).

pub mod builtin;
pub(crate) mod digest;
pub mod memory;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::error::EngineLoadError;

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

/// Reads every tensor of `folder`'s safetensors files, one tensor at a
/// time with plain reads. A memory map would keep the file's pages
/// resident next to the copies the model owns (about 2× the weights at
/// load); reading keeps the peak at the weights plus one tensor.
pub fn var_builder(
    folder: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, EngineLoadError> {
    Ok(VarBuilder::from_tensors(
        read_tensors(&safetensors_in(folder)?, device, dtype)?,
        dtype,
        device,
    ))
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
        read_safetensors(file, device, dtype, &mut tensors).map_err(|e| match e {
            ReadError::Io(source) => EngineLoadError::Io {
                path: file.clone(),
                source,
            },
            ReadError::Format(what) => {
                EngineLoadError::Unsupported(format!("{}: {what}", file.display()))
            }
            ReadError::Candle(e) => EngineLoadError::from(e),
        })?;
    }
    Ok(tensors)
}

enum ReadError {
    Io(std::io::Error),
    Format(String),
    Candle(candle_core::Error),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl From<candle_core::Error> for ReadError {
    fn from(e: candle_core::Error) -> Self {
        ReadError::Candle(e)
    }
}

/// The tensor entries of a safetensors file and where its data begins.
fn read_header(file: &mut File) -> Result<(HashMap<String, serde_json::Value>, u64), ReadError> {
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > 100 * 1024 * 1024 {
        return Err(ReadError::Format(format!("header of {header_len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let mut entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| ReadError::Format(format!("header: {e}")))?;
    entries.remove("__metadata__");
    Ok((entries, 8 + header_len))
}

/// Bytes the file's tensors take once loaded as f32 (from its header only).
pub fn f32_bytes(path: &Path) -> std::io::Result<u64> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut file = File::open(path)?;
    let (entries, _) = read_header(&mut file).map_err(|e| match e {
        ReadError::Io(e) => e,
        ReadError::Format(what) => invalid(what),
        ReadError::Candle(e) => invalid(e.to_string()),
    })?;
    let mut total = 0u64;
    for (name, value) in entries {
        let entry: TensorEntry =
            serde_json::from_value(value).map_err(|e| invalid(format!("tensor {name}: {e}")))?;
        total += entry.shape.iter().product::<usize>() as u64 * 4;
    }
    Ok(total)
}

#[derive(serde::Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// The safetensors format: an 8-byte little-endian header length, a JSON
/// header naming each tensor's dtype, shape and byte range, then the data.
fn read_safetensors(
    path: &Path,
    device: &Device,
    float_dtype: DType,
    out: &mut HashMap<String, Tensor>,
) -> Result<(), ReadError> {
    let mut file = File::open(path)?;
    let (entries, data_start) = read_header(&mut file)?;
    let mut buf = Vec::new();
    for (name, value) in entries {
        let entry: TensorEntry = serde_json::from_value(value)
            .map_err(|e| ReadError::Format(format!("tensor {name}: {e}")))?;
        let dtype = match entry.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            "I64" => DType::I64,
            "U32" => DType::U32,
            "U8" => DType::U8,
            other => return Err(ReadError::Format(format!("tensor {name}: dtype {other}"))),
        };
        let (start, end) = entry.data_offsets;
        let expected = entry.shape.iter().product::<usize>() * dtype.size_in_bytes();
        if end < start || (end - start) as usize != expected {
            return Err(ReadError::Format(format!(
                "tensor {name}: bad data offsets"
            )));
        }
        file.seek(SeekFrom::Start(data_start + start))?;
        let tensor = if dtype == DType::F32 && cfg!(target_endian = "little") {
            // Straight into the tensor's own buffer: no staging copy, and a
            // large zeroed allocation is fresh pages the read fills once.
            let mut values = vec![0f32; expected / 4];
            // The file stores them little-endian, like this CPU.
            file.read_exact(cyberimage_kernels::buffers::f32_bytes_mut(&mut values))?;
            Tensor::from_vec(values, entry.shape.as_slice(), device)?
        } else {
            buf.resize(expected, 0);
            file.read_exact(&mut buf)?;
            Tensor::from_raw_buffer(&buf, dtype, &entry.shape, device)?
        };
        let tensor = if tensor.dtype().is_float() && tensor.dtype() != float_dtype {
            tensor.to_dtype(float_dtype)?
        } else {
            tensor
        };
        out.insert(name, tensor);
    }
    Ok(())
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
