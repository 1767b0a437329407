//! The engine behind `cyberimage_core::Generator`: resolves a model's
//! weights, keeps the last-used model loaded, and runs its pipeline.
//! Families without a pipeline yet fail with a clear message.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use cyberimage_core::{
    CancelToken, EngineError, GeneratedImage, GenerationSpec, Generator, ModelEntry, ModelFamily,
    ProgressObserver, ProgressUpdate,
};

use crate::builtin;
use crate::noise::{gaussian, step_gaussian};
use crate::sd::StableDiffusion;

pub struct CandleGenerator {
    /// Where built-in models are written out.
    models_dir: PathBuf,
    device: Device,
    /// The last model used stays loaded; another model replaces it (the old
    /// one is dropped first, so two never share memory).
    loaded: Mutex<Option<LoadedModel>>,
}

struct LoadedModel {
    key: String,
    pipeline: StableDiffusion,
    weights_sha256: String,
}

impl CandleGenerator {
    pub fn new(models_dir: PathBuf) -> Self {
        Self {
            models_dir,
            device: Device::Cpu,
            loaded: Mutex::new(None),
        }
    }

    /// The folder holding `model`'s weights: a local path, a built-in model,
    /// or a Hugging Face repo in the local HF cache.
    fn resolve(&self, model: &ModelEntry) -> Result<PathBuf, EngineError> {
        if let Some(name) = model.source.strip_prefix("builtin:") {
            return builtin::materialize(name, &self.models_dir)
                .map_err(|e| EngineError::ModelUnavailable(e.to_string()));
        }
        let local = Path::new(&model.source);
        if local.is_dir() {
            return Ok(local.to_path_buf());
        }
        let hub = hf_cache_dir();
        if let Some(hub) = &hub {
            let snapshots = hf_repo_dir(hub, &model.source).join("snapshots");
            if let Ok(entries) = std::fs::read_dir(&snapshots) {
                if let Some(dir) = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.join("model_index.json").exists())
                {
                    return Ok(dir);
                }
            }
        }
        Err(EngineError::ModelUnavailable(format!(
            "the weights of model {:?} ({}) are not on this machine: looked for a local folder \
             and in the Hugging Face cache{}. Download them (`cyberimage models pull {}`, \
             with HF_TOKEN for gated repos) or point the model's `source` at a local diffusers folder",
            model.key,
            model.source,
            hub.map(|h| format!(" at {}", h.display())).unwrap_or_default(),
            model.key
        )))
    }
}

/// The Hugging Face hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`, as the Hugging Face tools use it.
pub fn hf_cache_dir() -> Option<PathBuf> {
    std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        })
}

/// A repo's folder in the cache: `models--org--name`.
pub fn hf_repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

fn check_family(model: &ModelEntry) -> Result<(), EngineError> {
    if matches!(
        model.family,
        ModelFamily::Sd15 | ModelFamily::Sd21 | ModelFamily::SdTurbo | ModelFamily::Sdxl
    ) {
        Ok(())
    } else {
        Err(EngineError::Unsupported(format!(
            "the {} pipeline is not implemented yet, so model {:?} cannot run; \
             SD 1.x/2.x/XL models can",
            model.family.as_str(),
            model.key
        )))
    }
}

fn failed(e: impl std::fmt::Display) -> EngineError {
    EngineError::Failed(e.to_string())
}

impl Generator for CandleGenerator {
    fn can_run(&self, model: &ModelEntry) -> Result<(), EngineError> {
        check_family(model)?;
        if let Some(name) = model.source.strip_prefix("builtin:") {
            // Built in: present by definition, written out on first use.
            return if builtin::BUILTIN_MODELS.contains(&name) {
                Ok(())
            } else {
                Err(EngineError::ModelUnavailable(format!(
                    "no built-in model {name:?}"
                )))
            };
        }
        self.resolve(model).map(|_| ())
    }

    fn generate(
        &self,
        model: &ModelEntry,
        spec: &GenerationSpec,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        check_family(model)?;
        observer.on_progress(ProgressUpdate::LoadingModel);
        let dir = self.resolve(model)?;
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| failed("model cache poisoned"))?;
        if loaded.as_ref().is_none_or(|m| m.key != model.key) {
            *loaded = None;
            let pipeline = StableDiffusion::load(&dir, &self.device).map_err(|e| {
                EngineError::ModelUnavailable(format!("cannot load {}: {e}", dir.display()))
            })?;
            let weights_sha256 =
                crate::digest::weights_sha256(&dir, &self.models_dir).map_err(|e| {
                    failed(format!("cannot hash the weights in {}: {e}", dir.display()))
                })?;
            *loaded = Some(LoadedModel {
                key: model.key.clone(),
                pipeline,
                weights_sha256,
            });
        }
        let loaded_model = loaded.as_ref().expect("just loaded");
        let sd = &loaded_model.pipeline;
        cancel.check()?;

        let context = sd
            .encode_prompts(&spec.prompt, spec.negative_prompt.as_deref())
            .map_err(failed)?;
        let factor = sd.latent_factor();
        let shape = (
            1,
            sd.latent_channels(),
            spec.height as usize / factor,
            spec.width as usize / factor,
        );
        let count = shape.1 * shape.2 * shape.3;
        let steps = spec.steps as usize;
        let sampler = sd.scheduler(steps).map_err(failed)?.name();
        let total = spec.total_steps();
        let mut images = Vec::new();
        for index in 0..spec.num_images {
            let seed = spec.image_seed(index);
            let latents =
                Tensor::from_vec(gaussian(seed, count), shape, &self.device).map_err(failed)?;
            let done_before = index * spec.steps;
            let result = sd
                .denoise(
                    &context,
                    latents,
                    steps,
                    f64::from(spec.guidance_scale),
                    &mut |step| {
                        Tensor::from_vec(step_gaussian(seed, step, count), shape, &self.device)
                    },
                    &mut |step, _| {
                        observer.on_progress(ProgressUpdate::Step {
                            done: done_before + step as u32,
                            total,
                        });
                        !cancel.is_cancelled()
                    },
                )
                .map_err(failed)?;
            let Some(latents) = result else {
                return Err(EngineError::Cancelled);
            };
            observer.on_progress(ProgressUpdate::Decoding);
            let (width, height, rgb) = sd.decode_rgb8(&latents).map_err(failed)?;
            images.push(GeneratedImage {
                width: width as u32,
                height: height as u32,
                rgb,
                seed,
                extra_metadata: vec![
                    ("sampler".into(), sampler.into()),
                    ("dtype".into(), "f32".into()),
                    ("noise".into(), "chacha8-box-muller".into()),
                    ("weights_sha256".into(), loaded_model.weights_sha256.clone()),
                    (
                        "engine".into(),
                        format!(
                            "cyberimage-engine {} on candle 0.11",
                            env!("CARGO_PKG_VERSION")
                        ),
                    ),
                ],
            });
        }
        Ok(images)
    }
}
