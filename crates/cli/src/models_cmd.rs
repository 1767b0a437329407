//! `cyberimage models …`: the catalogue as configured and scanned, and its
//! downloads in the Hugging Face cache.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use cyberimage_core::{Generator as _, ModelEntry};

use crate::config::Config;
use crate::{hub, wiring};

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// List configured and scanned models; the default is marked with `*`;
    /// scanned files that cannot be used are listed after, with the reason.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download a model's weights from the Hugging Face hub into the HF
    /// cache (resumable; HF_TOKEN for gated repos; HF_ENDPOINT for mirrors).
    /// For a model whose weights are a local checkpoint file, downloads only
    /// the configs and tokenizers that go with it.
    Pull {
        key: String,
        #[arg(long, default_value = "main")]
        revision: String,
        /// Hub address (default: $HF_ENDPOINT, then https://huggingface.co).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Check the downloaded files of a model against their SHA-256.
    Verify { key: String },
    /// Delete a model's downloaded files from the HF cache.
    Remove {
        key: String,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

pub fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let engine = wiring::engine(config)?;
    let (catalogue, skipped) = wiring::catalogue(config, Some(&engine))?;
    if json {
        let models: Vec<serde_json::Value> = catalogue
            .models()
            .iter()
            .map(|m| {
                let state = engine.can_run(m);
                let mut v = serde_json::to_value(m).expect("serialisable");
                v["available"] = serde_json::json!(state.is_ok());
                v["unavailable_reason"] = serde_json::json!(state.err().map(|e| e.to_string()));
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&models)?);
        // The array keeps its shape; what a scan could not use goes to
        // stderr, one line each.
        for file in &skipped {
            eprintln!(
                "not a usable model: {}: {}",
                file.path.display(),
                file.reason
            );
        }
        return Ok(());
    }
    for m in catalogue.models() {
        let mark = if m.key == catalogue.default_key() {
            "*"
        } else {
            " "
        };
        let state = if engine.can_run(m).is_ok() {
            "ready"
        } else {
            "missing"
        };
        println!(
            "{mark} {:<20} {:<14} {:<8} {:<45} {}",
            m.key,
            m.family.as_str(),
            state,
            m.source,
            m.description
        );
    }
    if !skipped.is_empty() {
        println!("\nfiles in [model_scan] folders that are not usable models:");
        for file in &skipped {
            println!("  {}: {}", file.path.display(), file.reason);
        }
    }
    Ok(())
}

/// What `models pull KEY` downloads: a repo, its cache folder, and whether
/// only its configs and tokenizers are wanted.
struct HubSource {
    repo: String,
    dir: PathBuf,
    configs_only: bool,
}

fn is_repo_id(source: &str) -> bool {
    !source.starts_with("builtin:")
        && !std::path::Path::new(source).is_absolute()
        && source.split('/').count() == 2
}

/// The Hugging Face repo a model key downloads from, and its cache folder.
fn hub_source(config: &Config, key: &str) -> anyhow::Result<HubSource> {
    // Only the entry is needed, not which default can run here.
    let (catalogue, _) = wiring::catalogue(config, None)?;
    let Some(model) = catalogue.get(key) else {
        anyhow::bail!("no model {key:?} is configured (see `cyberimage models list`)");
    };
    let (repo, configs_only) = repo_of(model).ok_or_else(|| {
        anyhow::anyhow!(
            "model {key:?} comes from {:?}, not a Hugging Face repo: nothing to download",
            model.source
        )
    })?;
    let cache = cyberimage_engine::hf_cache_dir()
        .context("no Hugging Face cache folder: set HF_HUB_CACHE or HF_HOME")?;
    let dir = cyberimage_engine::hf_repo_dir(&cache, &repo);
    Ok(HubSource {
        repo,
        dir,
        configs_only,
    })
}

/// A repo source downloads whole; a checkpoint file needs its config repo.
fn repo_of(model: &ModelEntry) -> Option<(String, bool)> {
    if is_repo_id(&model.source) {
        return Some((model.source.clone(), false));
    }
    if std::path::Path::new(&model.source).is_file() {
        let config = model
            .config
            .clone()
            .unwrap_or_else(|| model.family.reference_repo().to_string());
        return is_repo_id(&config).then_some((config, true));
    }
    None
}

pub async fn files(config: Config, cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::Pull {
            key,
            revision,
            endpoint,
        } => {
            let source = hub_source(&config, &key)?;
            let cache = source.dir.parent().expect("repo dir in the cache");
            let snapshot = hub::Hub::new(endpoint)?
                .pull(&source.repo, &revision, cache, source.configs_only)
                .await?;
            let what = if source.configs_only {
                "configs and tokenizers of "
            } else {
                ""
            };
            println!("{key}: {what}{} is in {}", source.repo, snapshot.display());
        }
        ModelsCommand::Verify { key } => {
            let HubSource { repo, dir, .. } = hub_source(&config, &key)?;
            let (checked, corrupt) = hub::verify(&dir)?;
            if corrupt.is_empty() {
                println!("{key}: {repo}: {checked} files match their SHA-256");
            } else {
                anyhow::bail!(
                    "{key}: {} of {checked} files do not match their SHA-256 ({}); run `cyberimage models pull {key}` after removing them",
                    corrupt.len(),
                    corrupt.join(", ")
                );
            }
        }
        ModelsCommand::Remove { key, yes } => {
            let HubSource { repo, dir, .. } = hub_source(&config, &key)?;
            anyhow::ensure!(
                dir.exists(),
                "{key}: nothing downloaded for {repo} in {}",
                dir.display()
            );
            anyhow::ensure!(yes, "this deletes {}; run again with --yes", dir.display());
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot delete {}", dir.display()))?;
            println!("{key}: removed {}", dir.display());
        }
        ModelsCommand::List { .. } => unreachable!("listed by `list`"),
    }
    Ok(())
}
