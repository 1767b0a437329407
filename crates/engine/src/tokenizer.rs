//! CLIP prompt tokenization: the tokenizer's ids with start and end tokens,
//! truncated to the context length (keeping the end token) and padded.

use std::path::Path;

use crate::EngineLoadError;

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    max_len: usize,
    pad_id: u32,
    eos_id: u32,
}

impl ClipTokenizer {
    /// `folder` is a diffusers `tokenizer/` folder with a `tokenizer.json`.
    /// SD 1.x pads with the end token; SD 2.x and SDXL's second tokenizer pad
    /// with `!` (id 0): `special_tokens_map.json` says which.
    pub fn load(folder: &Path, max_len: usize) -> Result<Self, EngineLoadError> {
        let file = folder.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| EngineLoadError::Tokenizer(format!("{}: {e}", file.display())))?;
        let eos_id = inner
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| EngineLoadError::Tokenizer("no <|endoftext|> token".into()))?;
        let pad_token = std::fs::read_to_string(folder.join("special_tokens_map.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| match &v["pad_token"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
                _ => None,
            })
            .unwrap_or_else(|| "<|endoftext|>".into());
        let pad_id = inner.token_to_id(&pad_token).unwrap_or(eos_id);
        Ok(Self {
            inner,
            max_len,
            pad_id,
            eos_id,
        })
    }

    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, EngineLoadError> {
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| EngineLoadError::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > self.max_len {
            ids.truncate(self.max_len);
            ids[self.max_len - 1] = self.eos_id;
        }
        ids.resize(self.max_len, self.pad_id);
        Ok(ids)
    }
}
