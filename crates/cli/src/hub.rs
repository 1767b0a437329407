//! Downloading models from a Hugging Face hub into the standard HF cache
//! (`models--org--name/{blobs,snapshots,refs}`), where the engine, the
//! `huggingface_hub` tools and other apps all find them.
//!
//! Only what a diffusers pipeline loads is fetched: `model_index.json` and,
//! in the component folders, configs, tokenizer files and the default
//! (non-variant) `.safetensors` weights. Downloads resume from the partial
//! file (`Range`), large files are checked against the SHA-256 the hub
//! publishes, and answers that mean "you need a token" or "accept the
//! license first" become messages that say so. A crash between the last
//! byte and the rename leaves a complete partial file, which the next pull
//! finishes without asking past its end (a 416); where the filesystem has
//! no symlinks the snapshot holds copies. `configs_only` fetches just the
//! configs and tokenizers a single checkpoint file needs.
//!
//! Why our own client and not the `hf-hub` crate (evaluated on its
//! documented API, 0.4/0.5): it fetches one named file at a time into the
//! same cache layout, with an indicatif bar; a pipeline pull would still
//! need our repo listing and file selection, and it has no SHA-256 check
//! of the LFS blobs, no configs-only pull, and no place for our errors
//! (gated repos, untrusted certificates). Its 1.0 is a whole Hub API
//! client, far more than this needs. Both would add an HTTP stack beside
//! the reqwest + rustls one the MCP proxy already uses.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

pub struct Hub {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
}

/// Whether a repo file holds weights (the rest are configs and tokenizers).
pub fn is_weights(path: &str) -> bool {
    path.ends_with(".safetensors")
        || path.ends_with(".safetensors.index.json")
        || path.ends_with(".gguf")
}

/// Whether a repo file belongs to what a diffusers pipeline loads.
pub fn wanted(path: &str) -> bool {
    if path == "model_index.json" {
        return true;
    }
    let Some((folder, file)) = path.split_once('/') else {
        return false;
    };
    if folder.starts_with('.') || file.contains('/') {
        return false;
    }
    // Variants (fp16, ema…) duplicate the default weights.
    let weights = (file.ends_with(".safetensors") && file.split('.').count() == 2)
        || file.ends_with(".safetensors.index.json");
    weights || file.ends_with(".json") || file.ends_with(".txt") || file.ends_with(".model")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// A request that got no answer, with what to do when the reason is the
/// server's TLS certificate (the first thing a corporate proxy breaks).
pub(crate) fn request_failed(what: String, e: reqwest::Error) -> anyhow::Error {
    let chain: Vec<String> =
        std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect();
    if chain.iter().any(|m| m.contains("certificate")) {
        return anyhow::anyhow!(
            "{what}: its TLS certificate is not trusted ({}). If this network uses its own \
             certificate authority, point SSL_CERT_FILE (a PEM file) or SSL_CERT_DIR at it",
            chain.last().map(String::as_str).unwrap_or_default()
        );
    }
    anyhow::Error::new(e).context(what)
}

/// How long connecting to the hub may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the hub may go silent in the middle of an answer.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl Hub {
    pub fn new(endpoint: Option<String>) -> anyhow::Result<Self> {
        let endpoint = endpoint
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_else(|| "https://huggingface.co".to_owned());
        let token = std::env::var("HF_TOKEN")
            .or_else(|_| std::env::var("HUGGING_FACE_HUB_TOKEN"))
            .ok()
            .filter(|t| !t.is_empty());
        Ok(Self {
            // HTTPS through rustls with the system's CA store, or the one
            // SSL_CERT_FILE / SSL_CERT_DIR name (corporate proxies' CAs).
            // No overall timeout: a weight file takes as long as it takes;
            // but a hub that stops answering fails instead of hanging.
            http: reqwest::Client::builder()
                .user_agent(concat!("cyberimage/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .build()?,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.get(url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn explain(&self, repo: &str, status: reqwest::StatusCode) -> anyhow::Error {
        match status.as_u16() {
            401 if self.token.is_none() => anyhow::anyhow!(
                "{repo} needs a Hugging Face token: create one at {}/settings/tokens and set HF_TOKEN",
                self.endpoint
            ),
            401 => anyhow::anyhow!("the token in HF_TOKEN was refused for {repo}"),
            403 => anyhow::anyhow!(
                "{repo} is gated: accept its license at {}/{repo} with your account, then set HF_TOKEN to a token of that account",
                self.endpoint
            ),
            404 => anyhow::anyhow!("{repo} was not found on {}", self.endpoint),
            _ => anyhow::anyhow!("{} answered {status} for {repo}", self.endpoint),
        }
    }

    /// Downloads `repo` at `revision` into `cache` (only its configs and
    /// tokenizers with `configs_only`); returns the snapshot folder.
    pub async fn pull(
        &self,
        repo: &str,
        revision: &str,
        cache: &Path,
        configs_only: bool,
    ) -> anyhow::Result<PathBuf> {
        let url = format!(
            "{}/api/models/{repo}/revision/{revision}?blobs=true",
            self.endpoint
        );
        let resp = self
            .get(&url)
            .send()
            .await
            .map_err(|e| request_failed(format!("cannot reach {}", self.endpoint), e))?;
        if !resp.status().is_success() {
            return Err(self.explain(repo, resp.status()));
        }
        let info: RepoInfo = resp
            .json()
            .await
            .context("the hub's repo listing is not what we expect")?;
        let files: Vec<&Sibling> = info
            .siblings
            .iter()
            .filter(|s| wanted(&s.rfilename) && !(configs_only && is_weights(&s.rfilename)))
            .collect();
        if !files.iter().any(|s| s.rfilename == "model_index.json") {
            bail!("{repo} has no model_index.json: it is not a diffusers pipeline");
        }
        let repo_dir = cyberimage_engine::hf_repo_dir(cache, repo);
        let blobs = repo_dir.join("blobs");
        let snapshot = repo_dir.join("snapshots").join(&info.sha);
        std::fs::create_dir_all(&blobs)?;
        let total: u64 = files
            .iter()
            .map(|s| s.lfs.as_ref().map(|l| l.size).or(s.size).unwrap_or(0))
            .sum();
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:30!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        for file in files {
            bar.set_message(file.rfilename.clone());
            let blob = self.fetch(repo, &info.sha, file, &blobs, &bar).await?;
            let link = snapshot.join(&file.rfilename);
            std::fs::create_dir_all(link.parent().expect("file in a folder"))?;
            let depth = file.rfilename.matches('/').count() + 2;
            let target = PathBuf::from("../".repeat(depth)).join("blobs").join(&blob);
            let _ = std::fs::remove_file(&link);
            if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
                // Some filesystems (exFAT, some network mounts) have no
                // symlinks: the snapshot then holds a copy, as
                // huggingface_hub does there.
                tracing::debug!(error = %e, "no symlinks here; copying {}", file.rfilename);
                std::fs::copy(blobs.join(&blob), &link).with_context(|| {
                    format!("cannot link or copy {} into {}", blob, link.display())
                })?;
            }
        }
        bar.finish_with_message("done");
        std::fs::create_dir_all(repo_dir.join("refs"))?;
        std::fs::write(repo_dir.join("refs").join(revision), &info.sha)?;
        Ok(snapshot)
    }

    /// Downloads one file into `blobs` (resuming a partial one) and returns
    /// its blob name: the SHA-256 the hub publishes for large files, our own
    /// for small ones.
    async fn fetch(
        &self,
        repo: &str,
        commit: &str,
        file: &Sibling,
        blobs: &Path,
        bar: &ProgressBar,
    ) -> anyhow::Result<String> {
        if let Some(lfs) = &file.lfs {
            if blobs.join(&lfs.sha256).exists() {
                bar.inc(lfs.size);
                return Ok(lfs.sha256.clone());
            }
        }
        let partial = blobs.join(format!(
            "{}.incomplete",
            file.lfs
                .as_ref()
                .map(|l| l.sha256.clone())
                .unwrap_or_else(|| hex(&Sha256::digest(file.rfilename.as_bytes())))
        ));
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let size = file.lfs.as_ref().map(|l| l.size).or(file.size);
        // A crash between the last byte and the rename leaves a complete
        // partial file; asking for the bytes after its end would get 416.
        if have > 0 && size.is_some_and(|size| have >= size) {
            bar.inc(have);
            return self.finish(file, &partial, blobs);
        }
        let url = format!(
            "{}/{repo}/resolve/{commit}/{}",
            self.endpoint, file.rfilename
        );
        let mut req = self.get(&url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| request_failed(format!("cannot download {}", file.rfilename), e))?;
        let resumed = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        if resp.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
            // The hub says nothing follows: the partial file is whole (its
            // digest decides below).
            bar.inc(have);
            return self.finish(file, &partial, blobs);
        }
        if !resp.status().is_success() {
            return Err(self.explain(repo, resp.status()));
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&partial)?;
        bar.inc(if resumed { have } else { 0 });
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.with_context(|| {
                format!(
                    "download of {} was interrupted; run the same command again to resume",
                    file.rfilename
                )
            })?;
            out.write_all(&chunk)?;
            bar.inc(chunk.len() as u64);
        }
        out.sync_all()?;
        drop(out);
        self.finish(file, &partial, blobs)
    }

    /// Checks a downloaded file against its published SHA-256 and moves it
    /// to its blob name.
    fn finish(&self, file: &Sibling, partial: &Path, blobs: &Path) -> anyhow::Result<String> {
        let digest = file_sha256(partial)?;
        let name = match &file.lfs {
            Some(lfs) if lfs.sha256 != digest => {
                std::fs::remove_file(partial)?;
                bail!("{} does not match its published SHA-256 (got {digest}); it was removed, run the command again", file.rfilename);
            }
            Some(lfs) => lfs.sha256.clone(),
            None => digest,
        };
        std::fs::rename(partial, blobs.join(&name))?;
        Ok(name)
    }
}

/// Checks every blob of `repo` whose name is a SHA-256 against its content;
/// returns (checked, corrupt file names).
pub fn verify(repo_dir: &Path) -> anyhow::Result<(usize, Vec<String>)> {
    let blobs = repo_dir.join("blobs");
    let mut checked = 0;
    let mut corrupt = Vec::new();
    for entry in std::fs::read_dir(&blobs)
        .with_context(|| format!("no downloaded files in {}", blobs.display()))?
    {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        checked += 1;
        if file_sha256(&path)? != name {
            corrupt.push(name.to_owned());
        }
    }
    Ok((checked, corrupt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pipeline_files_are_wanted() {
        for yes in [
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "text_encoder_2/model.safetensors",
            "unet/diffusion_pytorch_model.safetensors.index.json",
            "tokenizer_3/spiece.model",
        ] {
            assert!(wanted(yes), "{yes}");
        }
        for no in [
            "v1-5-pruned.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.bin",
            "README.md",
            ".gitattributes",
            "a/b/c.json",
            "vae/diffusion_pytorch_model.non_ema.safetensors",
        ] {
            assert!(!wanted(no), "{no}");
        }
    }
}
