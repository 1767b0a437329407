//! Upscaling jobs on the generator: the super-resolution network of the
//! last upscaler used stays loaded beside the diffusion model (they are
//! small, and a hires pass or a gallery of upscales should not reload
//! either), keyed by its file's path, size and modification time. What
//! each file is (architecture, scale) is remembered apart, under the same
//! key: listing the folder reads each file version once and leaves the
//! loaded network where it is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use candle_core::Device;
use cyberimage_core::{
    CancelToken, EngineError, GeneratedImage, InputImage, ProgressObserver, ProgressUpdate,
    UpscaleRequest, UpscalerInfo,
};

use super::run::failed;
use crate::models::upscalers::UpscalerNet;
use crate::pipelines::upscale::{upscale, Picture};
use crate::weights::upscaler_file::read_upscaler_tensors;

type FileKey = (PathBuf, u64, Option<SystemTime>);

/// File versions whose description is kept (a folder of upscalers is
/// tens of files; a bound keeps a folder rewritten in a loop from growing
/// it without end).
const DESCRIBED: usize = 256;

#[derive(Default)]
pub(super) struct Upscalers {
    loaded: Mutex<Option<(FileKey, Arc<UpscalerNet>)>>,
    described: Mutex<HashMap<FileKey, Result<UpscalerInfo, String>>>,
}

fn describe(net: &UpscalerNet) -> UpscalerInfo {
    UpscalerInfo {
        architecture: net.architecture().as_str().into(),
        scale: net.scale() as u32,
        size_multiple: net.size_multiple() as u32,
    }
}

fn file_key(path: &Path) -> Result<FileKey, EngineError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        EngineError::ModelUnavailable(format!("upscaler file {}: {e}", path.display()))
    })?;
    Ok((path.to_path_buf(), meta.len(), meta.modified().ok()))
}

impl Upscalers {
    /// The network in `path`, loaded once per file version.
    fn net(&self, path: &Path, device: &Device) -> Result<Arc<UpscalerNet>, EngineError> {
        let key = file_key(path)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, net)) = loaded.as_ref() {
            if *k == key {
                return Ok(net.clone());
            }
        }
        *loaded = None;
        let net = Arc::new(read_net(path, device)?);
        *loaded = Some((key, net.clone()));
        Ok(net)
    }

    /// What the file in `path` holds, read once per file version (a read
    /// that failed is not retried until the file changes).
    pub(super) fn inspect(
        &self,
        path: &Path,
        device: &Device,
    ) -> Result<UpscalerInfo, EngineError> {
        let key = file_key(path)?;
        let known = self
            .described
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let described = match known {
            Some(described) => described,
            None => {
                let loaded = self
                    .loaded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, net)| net.clone());
                let described = match loaded {
                    Some(net) => Ok(describe(&net)),
                    None => read_net(path, device)
                        .map(|net| describe(&net))
                        .map_err(|e| e.to_string()),
                };
                let mut cache = self.described.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= DESCRIBED {
                    cache.clear();
                }
                cache.insert(key, described.clone());
                described
            }
        };
        described.map_err(EngineError::Unsupported)
    }

    pub(super) fn run(
        &self,
        request: &UpscaleRequest,
        input: &InputImage,
        device: &Device,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<GeneratedImage, EngineError> {
        observer.on_progress(ProgressUpdate::LoadingModel);
        let net = self.net(&request.weights, device)?;
        cancel.check()?;
        let picture = Picture {
            width: input.width as usize,
            height: input.height as usize,
            rgb: &input.rgb,
        };
        let tile = match request.tile {
            0 => cyberimage_core::upscale::DEFAULT_TILE,
            t => t,
        } as usize;
        let mut on_tile = |done: usize, total: usize| {
            observer.on_progress(ProgressUpdate::Step {
                done: done as u32,
                total: total as u32,
            });
            !cancel.is_cancelled()
        };
        let out = (request.width as usize, request.height as usize);
        let upscaled = upscale(&net, &picture, out, tile, device, &mut on_tile)
            .map_err(failed)?
            .ok_or(EngineError::Cancelled)?;
        Ok(GeneratedImage {
            width: upscaled.width as u32,
            height: upscaled.height as u32,
            rgb: upscaled.rgb,
            seed: 0,
            extra_metadata: vec![
                (
                    "upscaler_architecture".into(),
                    net.architecture().as_str().into(),
                ),
                ("upscaler_native_scale".into(), net.scale().to_string()),
                ("upscale_tiles".into(), upscaled.tiles.to_string()),
                (
                    "engine".into(),
                    format!(
                        "cyberimage-engine {} on candle 0.11",
                        env!("CARGO_PKG_VERSION")
                    ),
                ),
            ],
        })
    }
}

/// The network in `path`, built apart from the loaded one.
fn read_net(path: &Path, device: &Device) -> Result<UpscalerNet, EngineError> {
    let unusable = |e: crate::error::EngineLoadError| {
        EngineError::Unsupported(format!("upscaler {}: {e}", path.display()))
    };
    let tensors = read_upscaler_tensors(path, device).map_err(unusable)?;
    UpscalerNet::from_tensors(tensors).map_err(unusable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describing_files_reads_each_version_once_and_keeps_the_loaded_net() {
        let dir = tempfile::tempdir().unwrap();
        let built_in = crate::weights::builtin::materialize_upscalers(dir.path()).unwrap();
        let (_, net_path) = &built_in[0];
        let copy = dir.path().join("copy.safetensors");
        std::fs::copy(net_path, &copy).unwrap();
        let junk = dir.path().join("junk.pth");
        std::fs::write(&junk, b"not a network").unwrap();
        let upscalers = Upscalers::default();
        let device = Device::Cpu;
        let loaded = upscalers.net(net_path, &device).unwrap();
        let info = upscalers.inspect(&copy, &device).unwrap();
        assert_eq!(info, upscalers.inspect(net_path, &device).unwrap());
        assert_eq!(info.architecture, loaded.architecture().as_str());
        let still = upscalers.net(net_path, &device).unwrap();
        assert!(
            Arc::ptr_eq(&loaded, &still),
            "listing evicted the loaded net"
        );
        let first = upscalers.inspect(&junk, &device).unwrap_err();
        assert_eq!(upscalers.described.lock().unwrap().len(), 3);
        assert_eq!(upscalers.inspect(&junk, &device).unwrap_err(), first);
        // A replaced file is read again.
        std::fs::write(&copy, b"now junk too, and longer than before").unwrap();
        assert!(upscalers.inspect(&copy, &device).is_err());
    }
}
