//! The LoRA files a job names, read from the generator's LoRA folders and
//! kept parsed (by digest) for the next jobs: a LoRA used again is neither
//! read nor parsed again. The jobs service checked each file's digest
//! when it queued the job and the worker before it started it; the cache
//! trusts the digest the spec carries, with the file's name and
//! modification time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cyberimage_core::{EngineError, GenerationSpec};

use crate::weights::lora::LoraFile;
use crate::weights::lora_merge::LoraUse;

/// A parsed file's name, digest and modification time.
type FileKey = (String, String, Option<std::time::SystemTime>);

/// Parsed files kept: enough for a few jobs' sets, bounded in memory.
const KEPT: usize = 16;

#[derive(Default)]
pub(super) struct LoraFiles {
    /// Searched in order (the data dir's `loras/`, then other programs'
    /// LoRA folders).
    pub(super) dirs: Vec<PathBuf>,
    parsed: Mutex<Vec<(FileKey, Arc<LoraFile>)>>,
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
        // The digest covers the tensor data only (A1111's LoRA hash): two
        // files with the same data and other layer names in their headers
        // share it, so the file's own name and version are in the key.
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let key = (name.to_string(), sha256.to_string(), modified);
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = parsed.iter().position(|(k, _)| *k == key) {
            let hit = parsed.remove(at);
            let file = hit.1.clone();
            parsed.push(hit);
            return Ok(file);
        }
        let file = Arc::new(LoraFile::read(&path).map_err(|e| {
            EngineError::Unsupported(format!("LoRA {name:?} ({}): {e}", path.display()))
        })?);
        if parsed.len() >= KEPT {
            parsed.remove(0);
        }
        parsed.push((key, file.clone()));
        Ok(file)
    }
}
