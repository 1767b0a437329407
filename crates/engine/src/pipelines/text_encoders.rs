//! A pipeline's text encoders: kept loaded beside the denoiser, or loaded
//! for each use and freed after (`[engine] drop_text_encoders`), with the
//! LoRAs of the current job merged either way: into the kept ones (and
//! taken out again when the set changes), or into each fresh load.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::error::EngineLoadError;
use crate::weights::lora::Component;
use crate::weights::lora_merge::{merge_for_once, LoraUse, MergedLoras, ParameterTable};

pub(crate) type Loader<T> = fn(&Path, &Device) -> Result<T, EngineLoadError>;
/// The encoders' weight tables, by component.
pub(crate) type Tables<T> = for<'a> fn(&'a T) -> Vec<(Component, &'a ParameterTable)>;

pub(crate) struct TextEncoders<T> {
    kept: Option<T>,
    dir: PathBuf,
    device: Device,
    load: Loader<T>,
    tables: Tables<T>,
    loras: Vec<LoraUse>,
    merged: MergedLoras,
}

impl<T> TextEncoders<T> {
    pub(crate) fn new(
        dir: &Path,
        device: &Device,
        keep: bool,
        load: Loader<T>,
        tables: Tables<T>,
    ) -> Result<Self, EngineLoadError> {
        Ok(Self {
            kept: if keep { Some(load(dir, device)?) } else { None },
            dir: dir.to_path_buf(),
            device: device.clone(),
            load,
            tables,
            loras: Vec::new(),
            merged: MergedLoras::default(),
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
            None => {
                let fresh = (self.load)(&self.dir, &self.device)?;
                merge_for_once(&(self.tables)(&fresh), &self.loras)?;
                f(&fresh)
            }
        }
    }

    /// Makes `set` the LoRAs the encoders run with. Kept encoders are
    /// merged now (an error leaves none merged); dropped ones at each load.
    pub(crate) fn set_loras(&mut self, set: &[LoraUse]) -> Result<(), EngineLoadError> {
        if let Some(kept) = &self.kept {
            let tables = (self.tables)(kept);
            if let Err(e) = self.merged.set(&tables, set) {
                self.loras.clear();
                return Err(e);
            }
        }
        self.loras = set.to_vec();
        Ok(())
    }
}
