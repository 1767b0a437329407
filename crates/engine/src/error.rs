//! Errors raised while loading or running models.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineLoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid config: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("LoRA: {0}")]
    Lora(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}
