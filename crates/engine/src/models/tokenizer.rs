//! Prompt tokenization for CLIP and T5: the tokenizer's ids with its
//! special tokens, truncated to the context length (keeping the end token)
//! and padded.
//!
//! The released SD repos ship only `vocab.json` + `merges.txt` (the slow
//! tokenizer's files), fine-tunes often add a `tokenizer.json`: both load.
//! Without `tokenizer.json` the fast tokenizer is assembled from the two
//! files with CLIP's normalisation, pre-tokenisation and start/end tokens,
//! the same definition transformers converts the slow tokenizer into.

use std::path::Path;

use crate::error::EngineLoadError;

pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    max_len: usize,
    pad_id: u32,
    eos_id: u32,
}

impl PromptTokenizer {
    /// `folder` is a diffusers `tokenizer/` folder: `tokenizer.json`, or
    /// `vocab.json` + `merges.txt`. SD 1.x pads with the end token; SD 2.x
    /// and SDXL's second tokenizer pad with `!` (id 0):
    /// `special_tokens_map.json` says which.
    pub fn load(folder: &Path, max_len: usize) -> Result<Self, EngineLoadError> {
        let file = folder.join("tokenizer.json");
        let inner = if file.exists() {
            tokenizers::Tokenizer::from_file(&file)
                .map_err(|e| EngineLoadError::Tokenizer(format!("{}: {e}", file.display())))?
        } else {
            from_vocab_and_merges(folder)?
        };
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

    /// A T5 `tokenizer_2/` folder (`tokenizer.json`, as the FLUX and SD3
    /// repos ship it): `</s>` appended, padded with `<pad>`.
    pub fn load_t5(folder: &Path, max_len: usize) -> Result<Self, EngineLoadError> {
        let file = folder.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| EngineLoadError::Tokenizer(format!("{}: {e}", file.display())))?;
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                EngineLoadError::Tokenizer(format!("{}: no {token} token", file.display()))
            })
        };
        Ok(Self {
            max_len,
            pad_id: id("<pad>")?,
            eos_id: id("</s>")?,
            inner,
        })
    }

    /// `model_max_length` from `tokenizer_config.json`, if it says.
    pub fn configured_max_length(folder: &Path) -> Option<usize> {
        let text = std::fs::read_to_string(folder.join("tokenizer_config.json")).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value["model_max_length"]
            .as_u64()
            .map(|v| v.min(1 << 20) as usize)
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

/// CLIP's fast tokenizer built from the slow tokenizer's `vocab.json` and
/// `merges.txt`.
fn from_vocab_and_merges(folder: &Path) -> Result<tokenizers::Tokenizer, EngineLoadError> {
    let read = |name: &str| {
        let path = folder.join(name);
        std::fs::read_to_string(&path).map_err(|source| EngineLoadError::Io { path, source })
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&read("vocab.json")?).map_err(|e| {
            EngineLoadError::Tokenizer(format!("{}/vocab.json: {e}", folder.display()))
        })?;
    let merges_text = read("merges.txt")?;
    let merges: Vec<[&str; 2]> = merges_text
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .filter_map(|l| l.split_once(' ').map(|(a, b)| [a, b]))
        .collect();
    let id_of = |token: &str| {
        vocab.get(token).cloned().ok_or_else(|| {
            EngineLoadError::Tokenizer(format!("{}: no {token} in vocab.json", folder.display()))
        })
    };
    let (bos, eos) = ("<|startoftext|>", "<|endoftext|>");
    let special = |token: &str| -> Result<serde_json::Value, EngineLoadError> {
        Ok(serde_json::json!({
            "id": id_of(token)?, "content": token, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }))
    };
    let definition = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(bos)?, special(eos)?],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "behavior": "Removed", "invert": true, "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"}},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [eos, id_of(eos)?],
            "cls": [bos, id_of(bos)?], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": eos, "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    definition
        .to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| EngineLoadError::Tokenizer(format!("{}: {e}", folder.display())))
}
