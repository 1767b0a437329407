//! Upscaling jobs on the generator: the super-resolution network of the
//! last upscaler used stays loaded beside the diffusion model (they are
//! small, and a hires pass or a gallery of upscales should not reload
//! either), keyed by its file's path, size and modification time.

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

#[derive(Default)]
pub(super) struct Upscalers {
    loaded: Mutex<Option<(FileKey, Arc<UpscalerNet>)>>,
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
        let unusable = |e: crate::error::EngineLoadError| {
            EngineError::Unsupported(format!("upscaler {}: {e}", path.display()))
        };
        let tensors = read_upscaler_tensors(path, device).map_err(unusable)?;
        let net = Arc::new(UpscalerNet::from_tensors(tensors).map_err(unusable)?);
        *loaded = Some((key, net.clone()));
        Ok(net)
    }

    pub(super) fn inspect(
        &self,
        path: &Path,
        device: &Device,
    ) -> Result<UpscalerInfo, EngineError> {
        let net = self.net(path, device)?;
        Ok(UpscalerInfo {
            architecture: net.architecture().as_str().into(),
            scale: net.scale() as u32,
            size_multiple: net.size_multiple() as u32,
        })
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
