//! The LoRA files a job names, read from the generator's LoRA folders and
//! kept parsed (by digest) for the next jobs: a LoRA used again is neither
//! read nor parsed again. The jobs service checked each file's digest
//! when it queued the job and the worker before it started it; the cache
//! trusts the digest the spec carries.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cyberimage_core::{EngineError, GenerationSpec};

use crate::weights::lora::LoraFile;
use crate::weights::lora_merge::LoraUse;

/// Parsed files kept: enough for a few jobs' sets, bounded in memory.
const KEPT: usize = 16;

#[derive(Default)]
pub(super) struct LoraFiles {
    /// Searched in order (the data dir's `loras/`, then other programs'
    /// LoRA folders).
    pub(super) dirs: Vec<PathBuf>,
    parsed: Mutex<Vec<(String, Arc<LoraFile>)>>,
}

impl LoraFiles {
    /// The job's LoRAs, in its order, with their weights.
    pub(super) fn uses(&self, spec: &GenerationSpec) -> Result<Vec<LoraUse>, EngineError> {
        spec.loras
            .iter()
            .map(|lora| {
                Ok(LoraUse {
                    id: lora.name.clone(),
                    file: self.file(&lora.name, &lora.sha256)?,
                    strength: f64::from(lora.weight),
                })
            })
            .collect()
    }

    fn file(&self, name: &str, sha256: &str) -> Result<Arc<LoraFile>, EngineError> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = parsed.iter().position(|(digest, _)| digest == sha256) {
            let hit = parsed.remove(at);
            let file = hit.1.clone();
            parsed.push(hit);
            return Ok(file);
        }
        if self.dirs.is_empty() {
            return Err(EngineError::Unsupported(format!(
                "LoRA {name:?}: this engine has no LoRA folder"
            )));
        }
        let file_name = format!("{name}.safetensors");
        let path = self
            .dirs
            .iter()
            .map(|dir| dir.join(&file_name))
            .find(|path| path.is_file())
            .unwrap_or_else(|| self.dirs[0].join(&file_name));
        let file = Arc::new(LoraFile::read(&path).map_err(|e| {
            EngineError::Unsupported(format!("LoRA {name:?} ({}): {e}", path.display()))
        })?);
        if parsed.len() >= KEPT {
            parsed.remove(0);
        }
        parsed.push((sha256.to_string(), file.clone()));
        Ok(file)
    }
}
