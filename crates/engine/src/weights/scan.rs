//! Finds the checkpoints already on the machine: the `models` folders of
//! ComfyUI (`checkpoints/`, `unet/` or `diffusion_models/`, `clip/` or
//! `text_encoders/`, `vae/`) and AUTOMATIC1111 (`Stable-diffusion/`,
//! `VAE/`). Each file is recognised from its tensors (`detect`); a FLUX
//! transformer is paired with the CLIP, T5 and autoencoder files found
//! beside it. Every model gets a key made from its file name, stable from
//! one start to the next; files that cannot be used are reported with the
//! reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cyberimage_core::{ModelEntry, ModelFamily};

use super::single_file::assemble::describe;
use super::single_file::detect::{detect, Contents};

/// Folders holding models that run by themselves.
const DENOISER_FOLDERS: [&str; 4] = [
    "checkpoints",
    "Stable-diffusion",
    "unet",
    "diffusion_models",
];
const ENCODER_FOLDERS: [&str; 2] = ["clip", "text_encoders"];
const VAE_FOLDERS: [&str; 2] = ["vae", "VAE"];
/// How deep below those folders files are looked for (people sort
/// checkpoints into sub-folders: `checkpoints/SDXL/…`).
const MAX_DEPTH: usize = 4;
/// Files looked at per folder tree, so a huge tree cannot stall startup.
const MAX_FILES: usize = 10_000;

/// A file found in a scanned folder that is not offered as a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanReport {
    pub models: Vec<ModelEntry>,
    pub skipped: Vec<Skipped>,
}

/// Scans each of `roots`; `configs` names, per family, the diffusers
/// folder or repo whose configs and tokenizers go with its files (unset:
/// the family's reference repo). Keys in `taken` (the configured models)
/// are not reused.
pub fn scan(
    roots: &[PathBuf],
    configs: &BTreeMap<ModelFamily, String>,
    taken: &[String],
) -> ScanReport {
    let mut report = ScanReport::default();
    let mut keys: Vec<String> = taken.to_vec();
    for root in roots {
        if !root.is_dir() {
            report.skipped.push(Skipped {
                path: root.clone(),
                reason: "not a folder".into(),
            });
            continue;
        }
        scan_root(root, configs, &mut keys, &mut report);
    }
    report
}

/// The model files under `root`'s sub-folders named `folders`, sorted.
fn files_in(root: &Path, folders: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for folder in folders {
        let mut stack = vec![(root.join(folder), 0)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() && depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                } else if path.is_file() && is_model_file(&path) && out.len() < MAX_FILES {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn is_model_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "safetensors" | "gguf" | "ckpt" | "pt" | "pth" | "bin"))
}

/// A file of a scanned folder with what it holds.
struct Found {
    path: PathBuf,
    contents: Contents,
}

fn detect_all(files: Vec<PathBuf>, report: &mut ScanReport) -> Vec<Found> {
    files
        .into_iter()
        .filter_map(|path| match detect(&path) {
            Ok(contents) => Some(Found { path, contents }),
            Err(e) => {
                report.skipped.push(Skipped {
                    path,
                    reason: format!("cannot read it: {e}"),
                });
                None
            }
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

/// The preferred file of `candidates`: one whose name mentions a word of
/// `preferred` first, then higher precision (a file named fp8 last).
fn pick<'a>(candidates: &[&'a Found], preferred: &[&str]) -> Option<&'a Found> {
    let rank = |f: &Found| {
        let name = file_name(&f.path);
        (
            !preferred.iter().any(|p| name.contains(p)),
            name.contains("fp8"),
            f.path.clone(),
        )
    };
    candidates.iter().min_by_key(|f| rank(f)).copied()
}

fn scan_root(
    root: &Path,
    configs: &BTreeMap<ModelFamily, String>,
    keys: &mut Vec<String>,
    report: &mut ScanReport,
) {
    let encoders = detect_all(files_in(root, &ENCODER_FOLDERS), report);
    let vaes = detect_all(files_in(root, &VAE_FOLDERS), report);
    let denoisers = detect_all(files_in(root, &DENOISER_FOLDERS), report);
    let clip: Vec<&Found> = encoders
        .iter()
        .filter(|f| {
            matches!(
                f.contents,
                Contents::ClipText {
                    projection: false,
                    ..
                }
            )
        })
        .collect();
    let t5: Vec<&Found> = encoders
        .iter()
        .filter(|f| matches!(f.contents, Contents::T5))
        .collect();
    let vae_with = |channels: usize| -> Vec<&Found> {
        vaes.iter()
            .filter(|f| {
                matches!(f.contents, Contents::Vae { latent_channels, .. } if latent_channels == channels)
            })
            .collect()
    };
    for found in &denoisers {
        let skip = |reason: String| Skipped {
            path: found.path.clone(),
            reason,
        };
        let mut entry = match &found.contents {
            Contents::StableDiffusion {
                family, has_vae, ..
            } => {
                let mut entry = new_entry(root, &found.path, *family, configs, keys);
                if !has_vae {
                    match pick(&vae_with(4), &[]) {
                        Some(vae) => entry.vae = Some(vae.path.display().to_string()),
                        None => {
                            report.skipped.push(skip(
                                "a checkpoint without its VAE, and no 4-channel VAE in vae/ or VAE/"
                                    .into(),
                            ));
                            continue;
                        }
                    }
                }
                entry
            }
            Contents::Sd3 {
                has_vae,
                has_text_encoders,
                ..
            } => {
                let mut entry = new_entry(root, &found.path, ModelFamily::Sd3, configs, keys);
                if !has_vae {
                    match pick(&vae_with(16), &[]) {
                        Some(vae) => entry.vae = Some(vae.path.display().to_string()),
                        None => {
                            report.skipped.push(skip(
                                "an SD 3.x transformer without its VAE, and no 16-channel VAE in \
                                 vae/"
                                    .into(),
                            ));
                            continue;
                        }
                    }
                }
                if !has_text_encoders {
                    let with_projection: Vec<&Found> = encoders
                        .iter()
                        .filter(|f| {
                            matches!(
                                f.contents,
                                Contents::ClipText {
                                    projection: true,
                                    ..
                                }
                            )
                        })
                        .collect();
                    let parts = (
                        pick(&clip, &["clip_l"]),
                        pick(&with_projection, &["clip_g"]),
                        pick(&t5, &["t5xxl"]),
                    );
                    let (Some(l), Some(g), Some(t5)) = parts else {
                        report.skipped.push(skip(
                            "an SD 3.x transformer; clip_l, clip_g and t5xxl were not all found \
                             in clip/ or text_encoders/"
                                .into(),
                        ));
                        continue;
                    };
                    entry.text_encoders = [l, g, t5]
                        .iter()
                        .map(|f| f.path.display().to_string())
                        .collect();
                }
                entry
            }
            Contents::FluxTransformer { family, .. } | Contents::FluxGguf { family } => {
                let parts = (
                    pick(&clip, &["clip_l"]),
                    pick(&t5, &["t5xxl"]),
                    pick(&vae_with(16), &["ae"]),
                );
                let (Some(clip), Some(t5), Some(vae)) = parts else {
                    let missing: Vec<&str> = [
                        (parts.0.is_none(), "a CLIP-L text encoder"),
                        (parts.1.is_none(), "a T5 text encoder"),
                        (parts.2.is_none(), "a 16-channel VAE (ae)"),
                    ]
                    .into_iter()
                    .filter_map(|(absent, what)| absent.then_some(what))
                    .collect();
                    report.skipped.push(skip(format!(
                        "a FLUX transformer; no {} found in clip/, text_encoders/ or vae/",
                        missing.join(", ")
                    )));
                    continue;
                };
                let mut entry = new_entry(root, &found.path, *family, configs, keys);
                entry.text_encoders = vec![
                    clip.path.display().to_string(),
                    t5.path.display().to_string(),
                ];
                entry.vae = Some(vae.path.display().to_string());
                entry
            }
            other => {
                report.skipped.push(skip(match other {
                    Contents::Unsupported(why) => why.clone(),
                    part => format!("{}, not a model by itself", describe(part)),
                }));
                continue;
            }
        };
        entry
            .description
            .push_str(&format!(" ({})", describe(&found.contents)));
        keys.push(entry.key.clone());
        report.models.push(entry);
    }
}

fn new_entry(
    root: &Path,
    file: &Path,
    family: ModelFamily,
    configs: &BTreeMap<ModelFamily, String>,
    keys: &[String],
) -> ModelEntry {
    let relative = file.strip_prefix(root).unwrap_or(file);
    let mut entry = ModelEntry::new(
        unique_key(&key_of(file), keys),
        file.display().to_string(),
        family,
        format!("found in {}: {}", root.display(), relative.display()),
        family.scan_defaults(),
    );
    entry.config = configs.get(&family).cloned();
    entry
}

/// A model key from a file name: lower case, runs of other characters as
/// one `-`, at most 64 characters (`Juggernaut XL v9.safetensors` →
/// `juggernaut-xl-v9`).
pub fn key_of(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut key = String::new();
    for c in stem.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_') {
            key.push(c);
        } else if !key.ends_with('-') {
            key.push('-');
        }
    }
    let key: String = key.trim_matches('-').chars().take(56).collect();
    if key.is_empty() {
        "model".into()
    } else {
        key
    }
}

/// `key`, or `key-2`, `key-3`… when taken.
fn unique_key(key: &str, taken: &[String]) -> String {
    if !taken.iter().any(|k| k == key) {
        return key.to_string();
    }
    (2..)
        .map(|n| format!("{key}-{n}"))
        .find(|k| !taken.contains(k))
        .expect("some suffix is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_file_names_and_stay_unique() {
        assert_eq!(
            key_of(Path::new("/m/Juggernaut XL v9 (RunDiffusion).safetensors")),
            "juggernaut-xl-v9-rundiffusion"
        );
        assert_eq!(
            key_of(Path::new("flux1-dev-fp8.safetensors")),
            "flux1-dev-fp8"
        );
        assert_eq!(key_of(Path::new("()).safetensors")), "model");
        let taken = vec!["a".to_string(), "a-2".to_string()];
        assert_eq!(unique_key("a", &taken), "a-3");
        assert_eq!(unique_key("b", &taken), "b");
    }
}
