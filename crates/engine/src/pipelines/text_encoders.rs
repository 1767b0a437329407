//! A pipeline's text encoders: kept loaded beside the denoiser, or loaded
//! for each use and freed after (`[engine] drop_text_encoders`).

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::error::EngineLoadError;

pub(crate) type Loader<T> = fn(&Path, &Device) -> Result<T, EngineLoadError>;

pub(crate) struct TextEncoders<T> {
    kept: Option<T>,
    dir: PathBuf,
    device: Device,
    load: Loader<T>,
}

impl<T> TextEncoders<T> {
    pub(crate) fn new(
        dir: &Path,
        device: &Device,
        keep: bool,
        load: Loader<T>,
    ) -> Result<Self, EngineLoadError> {
        Ok(Self {
            kept: if keep { Some(load(dir, device)?) } else { None },
            dir: dir.to_path_buf(),
            device: device.clone(),
            load,
        })
    }

    /// Runs `f` with the encoders, loading them for this call if they are
    /// not kept.
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&T) -> Result<R, EngineLoadError>,
    ) -> Result<R, EngineLoadError> {
        match &self.kept {
            Some(kept) => f(kept),
            None => f(&(self.load)(&self.dir, &self.device)?),
        }
    }
}
