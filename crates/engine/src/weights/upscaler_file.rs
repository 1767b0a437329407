//! An upscaler's (or a tiny preview decoder's) one weights file, as people
//! download them: safetensors,
//! or a PyTorch pickle (`.pth`, what Real-ESRGAN and most of OpenModelDB
//! publish), which may wrap its state dict in `params_ema` or `params`
//! (BasicSR's training checkpoints) and prefix names with `module.`
//! (saved from `DataParallel`). Read whole, as f32: these networks are
//! small (Real-ESRGAN x4plus is 67 MB).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::files::read_tensors;
use crate::error::EngineLoadError;

/// Largest upscaler file read (the biggest RRDBNet variants are ~200 MB).
pub const MAX_UPSCALER_BYTES: u64 = 1 << 30;

/// Every tensor of the file, by name, as f32 on `device`.
pub fn read_upscaler_tensors(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, EngineLoadError> {
    let io_error = |source| EngineLoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::metadata(path).map_err(io_error)?.len();
    if bytes > MAX_UPSCALER_BYTES {
        return Err(EngineLoadError::Unsupported(format!(
            "{} is {bytes} bytes; upscaler files are read up to {MAX_UPSCALER_BYTES}",
            path.display()
        )));
    }
    let tensors = if is_pickle(path) {
        read_pickle(path, device)?
    } else {
        read_tensors(&[path.to_path_buf()], device, DType::F32)?
    };
    Ok(tensors
        .into_iter()
        .map(|(name, tensor)| match name.strip_prefix("module.") {
            Some(rest) => (rest.to_string(), tensor),
            None => (name, tensor),
        })
        .collect())
}

/// `.pth`, `.pt` and `.ckpt` are PyTorch pickles; anything else is read
/// as safetensors.
pub fn is_pickle(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("pth" | "pt" | "ckpt")
    )
}

fn read_pickle(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, EngineLoadError> {
    // BasicSR keeps the weights to use under `params_ema` (or `params`);
    // a plain state dict has neither.
    let mut last_error = None;
    for key in [Some("params_ema"), Some("params"), None] {
        match candle_core::pickle::read_all_with_key(path, key) {
            Ok(tensors) if !tensors.is_empty() => {
                return tensors
                    .into_iter()
                    .map(|(name, tensor)| {
                        let tensor = tensor.to_dtype(DType::F32)?.to_device(device)?;
                        Ok((name, tensor))
                    })
                    .collect();
            }
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => EngineLoadError::Unsupported(format!(
            "{} is not a PyTorch state dict this engine can read: {e}",
            path.display()
        )),
        None => EngineLoadError::Unsupported(format!("{} holds no tensors", path.display())),
    })
}
