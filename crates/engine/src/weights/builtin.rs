//! Models compiled into the binary, so a fresh install draws offline:
//! `shapes-64`, trained on synthetic shapes (`fixtures/trained/`, made by
//! `training/train_shapes.py`), and the tiny random-weight test models with
//! the SD 1.5 (4.5 MB), SDXL (2.3 MB), SD 3.5 (2.7 MB) and FLUX.1-dev
//! (2 MB) architectures from `fixtures/tiny/`, whose pictures mean nothing;
//! and one trained upscaler, UpscalerJS's esrgan-medium ×4 (an RDN, 2.8
//! MB, `fixtures/trained/upscalers/`).
//! Their files are written out to a folder on first use and loaded like any
//! diffusers folder.

use std::path::{Path, PathBuf};

use crate::error::EngineLoadError;

/// A model's files: path inside its folder, and the bytes.
type Files = &'static [(&'static str, &'static [u8])];

macro_rules! fixture_files {
    ($folder:literal: $($path:literal),* $(,)?) => {
        &[$((
            $path,
            include_bytes!(concat!("../../../../fixtures/", $folder, "/", $path)) as &[u8],
        )),*]
    };
}

const SHAPES_64: &[(&str, &[u8])] = fixture_files!("trained/shapes-64":
    "README.md",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
);

const TINY_SD15: &[(&str, &[u8])] = fixture_files!("tiny/tiny-sd15":
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
);

/// Ships without `tokenizer.json`, as the released SDXL repo does, so the
/// tokenizer is built from `vocab.json` + `merges.txt`.
const TINY_SDXL: &[(&str, &[u8])] = fixture_files!("tiny/tiny-sdxl":
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
);

const TINY_FLUX: &[(&str, &[u8])] = fixture_files!("tiny/tiny-flux":
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer_2/tokenizer.json",
    "tokenizer_2/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
);

const TINY_SD3: &[(&str, &[u8])] = fixture_files!("tiny/tiny-sd3":
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "text_encoder_3/config.json",
    "text_encoder_3/model.safetensors",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_3/tokenizer.json",
    "tokenizer_3/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
);

const UPSCALERJS_MEDIUM_X4: &[(&str, &[u8])] = fixture_files!("trained/upscalers":
    "README.md",
    "upscalerjs-esrgan-medium-x4.safetensors",
);

/// The upscalers compiled in: name, and the weights file in its folder.
pub const BUILT_IN_UPSCALERS: &[(&str, &str)] = &[(
    "upscalerjs-esrgan-medium-x4",
    "upscalerjs-esrgan-medium-x4.safetensors",
)];

/// The names `builtin:NAME` sources may use, and their files.
const BUILT_IN: &[(&str, Files)] = &[
    ("shapes-64", SHAPES_64),
    ("tiny-sd15", TINY_SD15),
    ("tiny-sdxl", TINY_SDXL),
    ("tiny-sd3", TINY_SD3),
    ("tiny-flux", TINY_FLUX),
    ("upscalerjs-esrgan-medium-x4", UPSCALERJS_MEDIUM_X4),
];

/// Writes the built-in upscalers out under `root` (once) and returns each
/// one's name and weights file, for the upscaler library.
pub fn materialize_upscalers(root: &Path) -> Result<Vec<(String, PathBuf)>, EngineLoadError> {
    BUILT_IN_UPSCALERS
        .iter()
        .map(|(name, file)| Ok((name.to_string(), materialize(name, root)?.join(file))))
        .collect()
}

/// Whether `builtin:NAME` names a model compiled in.
pub fn is_builtin(name: &str) -> bool {
    BUILT_IN.iter().any(|(n, _)| *n == name)
}

/// Writes built-in model `name` under `root/name` (once) and returns that
/// folder. Files are compared by size, so a damaged copy is rewritten.
/// Several processes may share `root` (workers on one data dir): each
/// writes its own temp file and renames it into place, so a reader only
/// ever sees a complete file.
pub fn materialize(name: &str, root: &Path) -> Result<PathBuf, EngineLoadError> {
    let Some((_, files)) = BUILT_IN.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
        return Err(EngineLoadError::Unsupported(format!(
            "no built-in model {name:?}; built in: {}",
            names.join(", ")
        )));
    };
    let dir = root.join(name);
    for (rel, bytes) in files.iter() {
        let path = dir.join(rel);
        let current = std::fs::metadata(&path).map(|m| m.len()).ok();
        if current == Some(bytes.len() as u64) {
            continue;
        }
        let io = |source| EngineLoadError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(path.parent().expect("file has a folder")).map_err(io)?;
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let tmp = path.with_extension(format!("{}.{unique}.part", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(io)?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
    }
    Ok(dir)
}
