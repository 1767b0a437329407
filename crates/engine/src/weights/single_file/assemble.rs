//! Puts a single-file model together as a diffusers-layout folder: which
//! file provides each component (`plan`), then the folder itself
//! (`write`): the configs and tokenizers of a diffusers folder or repo,
//! and a pointer in each component folder instead of its weights.

use std::path::{Path, PathBuf};

use cyberimage_core::ModelFamily;

use super::detect::{compatible, detect, Contents, SD3_CLIP_G, SD3_CLIP_L, SD3_T5, UNET_PREFIX};
use super::{ComponentFile, Layout, POINTER_FILE};
use crate::error::EngineLoadError;

/// Which file provides each component folder of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub family: ModelFamily,
    /// (component folder, where its tensors are), in a stable order.
    pub components: Vec<(&'static str, ComponentFile)>,
}

fn unsupported(what: String) -> EngineLoadError {
    EngineLoadError::Unsupported(what)
}

fn detect_file(path: &Path) -> Result<Contents, EngineLoadError> {
    detect(path).map_err(|source| EngineLoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn part(file: &Path, prefix: &str, layout: Layout) -> ComponentFile {
    ComponentFile {
        file: file.canonicalize().unwrap_or_else(|_| file.to_path_buf()),
        prefix: prefix.into(),
        layout,
    }
}

/// The VAE in a separate file, checked to fit the family's latents.
fn vae_part(file: &Path, family: ModelFamily) -> Result<ComponentFile, EngineLoadError> {
    let wanted = match family {
        ModelFamily::FluxDev | ModelFamily::FluxSchnell | ModelFamily::Sd3 => 16,
        _ => 4,
    };
    match detect_file(file)? {
        Contents::Vae {
            latent_channels,
            prefix,
            layout,
        } if latent_channels == wanted => Ok(part(file, &prefix, layout)),
        Contents::Vae {
            latent_channels, ..
        } => Err(unsupported(format!(
            "{}: a VAE with {latent_channels} latent channels; {} needs {wanted}",
            file.display(),
            family.as_str()
        ))),
        other => Err(unsupported(format!(
            "{} is not a VAE ({})",
            file.display(),
            describe(&other)
        ))),
    }
}

/// A short name for what a file holds, for messages.
pub fn describe(contents: &Contents) -> String {
    match contents {
        Contents::StableDiffusion { family, .. } => format!("a {} checkpoint", family.as_str()),
        Contents::Sd3 { .. } => "an SD 3.x checkpoint".into(),
        Contents::FluxTransformer { family, .. } => format!("a {} transformer", family.as_str()),
        Contents::FluxGguf { family } => format!("a GGUF {} transformer", family.as_str()),
        Contents::Vae {
            latent_channels, ..
        } => format!("a VAE with {latent_channels} latent channels"),
        Contents::ClipText { .. } => "a CLIP text encoder".into(),
        Contents::T5 => "a T5 text encoder".into(),
        Contents::Unsupported(why) => why.clone(),
    }
}

/// Which file provides each component of a `family` model whose main file
/// is `source`, with the separate `vae` and `text_encoders` files given.
pub fn plan(
    family: ModelFamily,
    source: &Path,
    vae: Option<&Path>,
    text_encoders: &[PathBuf],
) -> Result<Plan, EngineLoadError> {
    let contents = detect_file(source)?;
    let mismatch = |detected: ModelFamily| {
        unsupported(format!(
            "{} holds a {} model, but the catalogue says {}",
            source.display(),
            detected.as_str(),
            family.as_str()
        ))
    };
    let mut components = Vec::new();
    match contents {
        Contents::StableDiffusion {
            family: detected,
            has_vae,
            has_text_encoders,
        } => {
            if !compatible(detected, family) {
                return Err(mismatch(detected));
            }
            components.push(("unet", part(source, UNET_PREFIX, Layout::LdmUnet)));
            components.push(match vae {
                Some(file) => ("vae", vae_part(file, family)?),
                None if has_vae => ("vae", part(source, "first_stage_model.", Layout::LdmVae)),
                None => {
                    return Err(unsupported(format!(
                        "{} has no VAE inside: configure `vae` with a VAE file",
                        source.display()
                    )))
                }
            });
            if !has_text_encoders {
                return Err(unsupported(format!(
                    "{} has no text encoders inside",
                    source.display()
                )));
            }
            components.extend(match detected {
                ModelFamily::Sdxl => vec![
                    (
                        "text_encoder",
                        part(source, "conditioner.embedders.0.transformer.", Layout::AsIs),
                    ),
                    (
                        "text_encoder_2",
                        part(source, "conditioner.embedders.1.model.", Layout::OpenClip),
                    ),
                ],
                ModelFamily::Sd21 => vec![(
                    "text_encoder",
                    part(source, "cond_stage_model.model.", Layout::OpenClip),
                )],
                _ => vec![(
                    "text_encoder",
                    part(source, "cond_stage_model.transformer.", Layout::AsIs),
                )],
            });
        }
        Contents::Sd3 {
            prefix,
            has_vae,
            has_text_encoders,
        } => {
            if family != ModelFamily::Sd3 {
                return Err(mismatch(ModelFamily::Sd3));
            }
            components.push(("transformer", part(source, &prefix, Layout::Sd3Mmdit)));
            components.push(match vae {
                Some(file) => ("vae", vae_part(file, family)?),
                None if has_vae => ("vae", part(source, "first_stage_model.", Layout::LdmVae)),
                None => {
                    return Err(unsupported(format!(
                        "{} has no VAE inside: configure `vae` with a VAE file",
                        source.display()
                    )))
                }
            });
            if has_text_encoders && text_encoders.is_empty() {
                components.extend([
                    ("text_encoder", part(source, SD3_CLIP_L, Layout::Sd3ClipL)),
                    ("text_encoder_2", part(source, SD3_CLIP_G, Layout::AsIs)),
                    ("text_encoder_3", part(source, SD3_T5, Layout::AsIs)),
                ]);
            } else {
                sd3_encoders(source, text_encoders, &mut components)?;
            }
        }
        Contents::FluxTransformer {
            family: detected,
            prefix,
        } => {
            if detected != family {
                return Err(mismatch(detected));
            }
            components.push(("transformer", part(source, &prefix, Layout::AsIs)));
            flux_parts(source, family, vae, text_encoders, &mut components)?;
        }
        Contents::FluxGguf { family: detected } => {
            if detected != family {
                return Err(mismatch(detected));
            }
            components.push(("transformer", part(source, "", Layout::AsIs)));
            flux_parts(source, family, vae, text_encoders, &mut components)?;
        }
        other => {
            return Err(unsupported(format!(
                "{} is not a model to run by itself: {}",
                source.display(),
                describe(&other)
            )))
        }
    }
    Ok(Plan { family, components })
}

/// SD 3's CLIP-L (no projection), CLIP-G (with one) and T5 from their own
/// files, as ComfyUI keeps them beside `sd3.5_large.safetensors`.
fn sd3_encoders(
    source: &Path,
    text_encoders: &[PathBuf],
    components: &mut Vec<(&'static str, ComponentFile)>,
) -> Result<(), EngineLoadError> {
    let (mut clip_l, mut clip_g, mut t5) = (None, None, None);
    for file in text_encoders {
        match detect_file(file)? {
            Contents::ClipText { projection: false } => {
                clip_l = Some(part(file, "", Layout::Sd3ClipL))
            }
            Contents::ClipText { projection: true } => clip_g = Some(part(file, "", Layout::AsIs)),
            Contents::T5 => t5 = Some(part(file, "", Layout::AsIs)),
            other => {
                return Err(unsupported(format!(
                    "{} is not a text encoder ({})",
                    file.display(),
                    describe(&other)
                )))
            }
        }
    }
    match (clip_l, clip_g, t5) {
        (Some(l), Some(g), Some(t5)) => {
            components.extend([
                ("text_encoder", l),
                ("text_encoder_2", g),
                ("text_encoder_3", t5),
            ]);
            Ok(())
        }
        _ => Err(unsupported(format!(
            "{} is an SD 3.x transformer without its text encoders: configure \
             `text_encoders` with its clip_l, clip_g (the one with a projection) and t5xxl files",
            source.display()
        ))),
    }
}

/// FLUX's CLIP, T5 and VAE, from their own files.
fn flux_parts(
    source: &Path,
    family: ModelFamily,
    vae: Option<&Path>,
    text_encoders: &[PathBuf],
    components: &mut Vec<(&'static str, ComponentFile)>,
) -> Result<(), EngineLoadError> {
    let (mut clip, mut t5) = (None, None);
    for file in text_encoders {
        match detect_file(file)? {
            Contents::ClipText { .. } => clip = Some(part(file, "", Layout::AsIs)),
            Contents::T5 => t5 = Some(part(file, "", Layout::AsIs)),
            other => {
                return Err(unsupported(format!(
                    "{} is not a text encoder ({})",
                    file.display(),
                    describe(&other)
                )))
            }
        }
    }
    let missing: Vec<&str> = [
        (clip.is_none(), "a CLIP-L text encoder (clip_l)"),
        (t5.is_none(), "a T5 text encoder (t5xxl)"),
        (vae.is_none(), "the autoencoder (ae)"),
    ]
    .into_iter()
    .filter_map(|(absent, what)| absent.then_some(what))
    .collect();
    if !missing.is_empty() {
        return Err(unsupported(format!(
            "{} is a FLUX transformer alone; it also needs {}: configure `text_encoders` and `vae`",
            source.display(),
            missing.join(", ")
        )));
    }
    components.push(("text_encoder", clip.expect("checked")));
    components.push(("text_encoder_2", t5.expect("checked")));
    components.push(("vae", vae_part(vae.expect("checked"), family)?));
    Ok(())
}

/// Files of a diffusers folder that are configs or tokenizers (no weights,
/// no shard indexes, which would name weights this folder lacks).
fn is_config_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext_ok = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "json" | "txt" | "model"));
    ext_ok && !name.ends_with(".index.json") && name != POINTER_FILE
}

/// Writes `out`: `config_dir`'s configs and tokenizers, and each planned
/// component's pointer. Files already as they should be are left alone.
pub fn write(plan: &Plan, config_dir: &Path, out: &Path) -> Result<(), EngineLoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineLoadError::Io { path, source }
    };
    if !config_dir.join("model_index.json").is_file() {
        return Err(unsupported(format!(
            "{} is not a diffusers folder (no model_index.json) to take configs and tokenizers from",
            config_dir.display()
        )));
    }
    let mut copies = Vec::new();
    for entry in std::fs::read_dir(config_dir).map_err(io(config_dir))? {
        let path = entry.map_err(io(config_dir))?.path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).map_err(io(&path))? {
                let file = inner.map_err(io(&path))?.path();
                if file.is_file() && is_config_file(&file) {
                    copies.push(file);
                }
            }
        } else if is_config_file(&path) {
            copies.push(path);
        }
    }
    for file in copies {
        let relative = file.strip_prefix(config_dir).expect("listed under it");
        let mut bytes = std::fs::read(&file).map_err(io(&file))?;
        let unet = plan.components.iter().find(|(folder, c)| {
            c.layout == Layout::LdmUnet && relative == Path::new(folder).join("config.json")
        });
        if let Some((_, unet)) = unet {
            bytes = with_input_channels(bytes, unet)?;
        }
        write_if_changed(&out.join(relative), &bytes)?;
    }
    for (folder, component) in &plan.components {
        let text = serde_json::to_vec_pretty(component).expect("serialisable");
        write_if_changed(&out.join(folder).join(POINTER_FILE), &text)?;

        if !out.join(folder).join("config.json").exists() && *folder != "transformer" {
            return Err(unsupported(format!(
                "{} has no {folder}/config.json for this model's {folder}",
                config_dir.display()
            )));
        }
    }
    Ok(())
}

/// An inpainting checkpoint (`sd-v1-5-inpainting`, SDXL inpainting) is
/// its base model's UNet with 9 input channels (latents, mask, masked
/// image): the borrowed `config` says 4, the file's first convolution says
/// how many it has, and that is what the config is given.
fn with_input_channels(config: Vec<u8>, unet: &ComponentFile) -> Result<Vec<u8>, EngineLoadError> {
    let Ok(header) = crate::weights::safetensors::read_header(&unet.file) else {
        return Ok(config); // not a safetensors file: read as configured
    };
    let channels = header
        .get(&format!("{}input_blocks.0.0.weight", unet.prefix))
        .and_then(|conv_in| conv_in.shape.get(1).copied());
    let Some(channels) = channels else {
        return Ok(config);
    };
    let mut json: serde_json::Value = serde_json::from_slice(&config)
        .map_err(|e| unsupported(format!("the UNet config: {e}")))?;
    if json.get("in_channels").and_then(|v| v.as_u64()) == Some(channels as u64) {
        return Ok(config);
    }
    json["in_channels"] = channels.into();
    Ok(serde_json::to_vec_pretty(&json).expect("serialisable"))
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), EngineLoadError> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let io = |source| EngineLoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    // Per-process temporary name: workers may share the models folder.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
