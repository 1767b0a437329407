//! A model's weights digest: SHA-256 over every weight, config and
//! tokenizer file of its folder (and the checkpoint files its single-file
//! pointers name), recorded in each image's metadata so an
//! image names exactly the weights that made it. Hashing gigabytes takes
//! seconds, so per-file digests are cached in `models_dir` by path, size
//! and modification time, and a model is hashed once per process load.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::weights::single_file::{ComponentFile, POINTER_FILE};

const CACHE_FILE: &str = ".weights-sha256.json";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The files that decide what a model computes, relative to `root`, sorted.
fn model_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "safetensors" | "json" | "txt" | "gguf"))
                && path.file_name() != Some(CACHE_FILE.as_ref())
            {
                out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Each file as (name in the digest, path), with the checkpoint file each
/// single-file pointer names after the pointer: the weights it reads.
fn with_pointed_files(root: &Path, files: Vec<PathBuf>) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for rel in files {
        let path = root.join(&rel);
        let name = rel.to_string_lossy().into_owned();
        let pointed = (rel.file_name() == Some(POINTER_FILE.as_ref()))
            .then(|| std::fs::read(&path).ok())
            .flatten()
            .and_then(|bytes| serde_json::from_slice::<ComponentFile>(&bytes).ok());
        out.push((name.clone(), path));
        if let Some(part) = pointed {
            out.push((format!("{name} -> weights"), part.file));
        }
    }
    out
}

fn cache_key(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!(
        "{}|{}|{}",
        path.canonicalize().ok()?.display(),
        meta.len(),
        mtime.as_nanos()
    ))
}

/// SHA-256 over `relative path NUL file digest LF` for each model file.
pub fn weights_sha256(model_dir: &Path, cache_dir: &Path) -> std::io::Result<String> {
    let cache_path = cache_dir.join(CACHE_FILE);
    let mut cache: BTreeMap<String, String> = std::fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut changed = false;
    let mut whole = Sha256::new();
    for (rel, path) in with_pointed_files(model_dir, model_files(model_dir)?) {
        let key = cache_key(&path);
        let digest = match key.as_ref().and_then(|k| cache.get(k)) {
            Some(d) => d.clone(),
            None => {
                let d = file_sha256(&path)?;
                if let Some(k) = key {
                    cache.insert(k, d.clone());
                    changed = true;
                }
                d
            }
        };
        whole.update(rel.as_bytes());
        whole.update([0]);
        whole.update(digest.as_bytes());
        whole.update(b"\n");
    }
    if changed && std::fs::create_dir_all(cache_dir).is_ok() {
        // A lost cache only costs time; a failed write is not an error.
        if let Ok(text) = serde_json::to_vec_pretty(&cache) {
            // Per-process temp name: workers may share the models dir.
            let tmp = cache_path.with_extension(format!("{}.tmp", std::process::id()));
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, &cache_path);
            }
        }
    }
    Ok(hex(&whole.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_follows_content_and_uses_the_cache() {
        let model = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        std::fs::create_dir(model.path().join("unet")).unwrap();
        std::fs::write(model.path().join("unet/config.json"), b"{}").unwrap();
        std::fs::write(model.path().join("unet/w.safetensors"), b"weights").unwrap();
        std::fs::write(model.path().join("README.md"), b"ignored").unwrap();
        let a = weights_sha256(model.path(), cache.path()).unwrap();
        assert_eq!(a.len(), 64);
        assert!(cache.path().join(CACHE_FILE).exists());
        assert_eq!(weights_sha256(model.path(), cache.path()).unwrap(), a);
        std::fs::write(model.path().join("README.md"), b"still ignored").unwrap();
        assert_eq!(weights_sha256(model.path(), cache.path()).unwrap(), a);
        std::fs::write(model.path().join("unet/w.safetensors"), b"other weights").unwrap();
        assert_ne!(weights_sha256(model.path(), cache.path()).unwrap(), a);
    }
}
