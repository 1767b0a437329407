//! The local prompt-enrichment model: the engine's Qwen3 chat
//! (`pipelines::chat`) behind the enrich crate's `LocalChat`. Loaded on the
//! first enrichment (a 1.7B model is several GB as f32) and kept; each
//! answer draws from its own seed, so asking again gives another version.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use cyberimage_api::LocalChat;
use cyberimage_engine::pipelines::chat::ChatModel;

pub struct LocalQwen {
    folder: PathBuf,
    name: String,
    loaded: Mutex<Option<Arc<ChatModel>>>,
}

impl LocalQwen {
    /// A model folder with the files the chat needs (checked now, so a
    /// wrong path stops start-up rather than the first click).
    pub fn new(folder: &Path) -> anyhow::Result<Self> {
        for file in ["config.json", "tokenizer.json"] {
            let path = folder.join(file);
            anyhow::ensure!(
                path.is_file(),
                "[enrich] local_model: {} has no {file} (give a Qwen3 model folder in \
                 transformers' layout)",
                folder.display()
            );
        }
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| folder.display().to_string());
        Ok(Self {
            folder: folder.to_path_buf(),
            name,
            loaded: Mutex::new(None),
        })
    }

    fn model(&self) -> anyhow::Result<Arc<ChatModel>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(model) = loaded.as_ref() {
            return Ok(model.clone());
        }
        let model = Arc::new(
            ChatModel::load_cpu(&self.folder)
                .with_context(|| format!("loading {}", self.folder.display()))?,
        );
        *loaded = Some(model.clone());
        Ok(model)
    }
}

impl LocalChat for LocalQwen {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn complete(
        &self,
        system: &str,
        user: &str,
        max_tokens: u32,
        temperature: f32,
    ) -> Result<String, String> {
        let model = self.model().map_err(|e| format!("{e:#}"))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        model
            .complete(system, user, max_tokens as usize, temperature, seed)
            .map_err(|e| e.to_string())
    }
}
