//! Tiny preview decoders on the machine: a folder (the data dir's
//! `vae_approx/`, then ComfyUI's `models/vae_approx` or A1111's
//! `models/VAE-approx` found by `[model_scan]`) holding madebyollin's
//! files under their usual names, `taesd_decoder`, `taesdxl_decoder`,
//! `taesd3_decoder`, `taef1_decoder` (`.safetensors` or `.pth`), or a
//! diffusers `AutoencoderTiny` folder of that name. The family picks the
//! name; the last one loaded stays (keyed by path, size and mtime). None
//! present, or one that cannot be read: previews are the projection's,
//! and the job goes on (a warning says why once per file).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use candle_core::Device;
use cyberimage_core::ModelFamily;

use crate::models::taesd::TinyDecoder;
use crate::pipelines::preview::PreviewDecoder;

type FileKey = (PathBuf, u64, Option<SystemTime>);

#[derive(Default)]
pub(super) struct PreviewDecoders {
    pub(super) dirs: Vec<PathBuf>,
    loaded: Mutex<Option<(FileKey, Option<Arc<PreviewDecoder>>)>>,
}

/// The file name a family's decoder goes by.
fn family_decoder(family: ModelFamily) -> &'static str {
    match family {
        ModelFamily::Sd15 | ModelFamily::Sd21 | ModelFamily::SdTurbo => "taesd",
        ModelFamily::Sdxl => "taesdxl",
        ModelFamily::Sd3 => "taesd3",
        ModelFamily::FluxDev | ModelFamily::FluxSchnell => "taef1",
    }
}

/// The tiny decoders read the latents the denoiser works on, unscaled, in
/// every family: ComfyUI keeps a VAE-space scale and shift beside them
/// only to undo its own VAE convention (`(x − shift) · scale` back to the
/// denoiser's space), and its previewer feeds them the sampler's latents
/// as they are. A diffusers folder's config may still say otherwise.
const DENOISER_SPACE: (f64, f64) = (1.0, 0.0);

fn key_of(path: &Path) -> Option<FileKey> {
    let weights = if path.is_dir() {
        path.join("diffusion_pytorch_model.safetensors")
    } else {
        path.to_path_buf()
    };
    let meta = std::fs::metadata(&weights).ok()?;
    Some((path.to_path_buf(), meta.len(), meta.modified().ok()))
}

impl PreviewDecoders {
    /// The decoder for `family`'s previews, if one is on the machine.
    pub(super) fn for_family(
        &self,
        family: ModelFamily,
        device: &Device,
    ) -> Option<Arc<PreviewDecoder>> {
        let name = family_decoder(family);
        let path = self.dirs.iter().find_map(|dir| {
            [
                dir.join(format!("{name}_decoder.safetensors")),
                dir.join(format!("{name}_decoder.pth")),
                dir.join(name),
            ]
            .into_iter()
            .find(|p| p.is_file() || p.join("diffusion_pytorch_model.safetensors").is_file())
        })?;
        let key = key_of(&path)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, decoder)) = loaded.as_ref() {
            if *k == key {
                return decoder.clone();
            }
        }
        let (scale, shift) = configured_factors(&path).unwrap_or(DENOISER_SPACE);
        let decoder = match TinyDecoder::read(&path, device) {
            Ok(decoder) => Some(Arc::new(PreviewDecoder {
                decoder,
                scale,
                shift,
            })),
            Err(e) => {
                warn_unusable(&path, &e.to_string());
                None
            }
        };
        *loaded = Some((key, decoder.clone()));
        decoder
    }
}

/// `scaling_factor` and `shift_factor` of a diffusers folder's config.
fn configured_factors(path: &Path) -> Option<(f64, f64)> {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("config.json")).ok()?).ok()?;
    Some((
        config.get("scaling_factor")?.as_f64()?,
        config
            .get("shift_factor")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0),
    ))
}

/// The engine has no logger of its own: a decoder that cannot be read is
/// said on stderr once (its key is then cached), and previews go on.
fn warn_unusable(path: &Path, why: &str) {
    eprintln!(
        "preview decoder {} cannot be used, previews stay the latent projection: {why}",
        path.display()
    );
}
