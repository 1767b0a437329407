//! The engine behind `cyberimage_core::Generator`: resolves a model's
//! weights, keeps the last-used model loaded, and runs its family's
//! pipeline (SD 1.x/2.x/XL, SD 3.x, FLUX.1). Weights that are not on the
//! machine fail the job with a message naming what is missing.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use candle_core::{Device, Tensor};
use cyberimage_core::{
    CancelToken, EngineError, GeneratedImage, GenerationSpec, Generator, ModelEntry, ModelFamily,
    ProgressObserver, ProgressUpdate,
};

use crate::pipelines::flux::{Flux, FluxConditioning};
use crate::pipelines::sd::{Conditioning, StableDiffusion};
use crate::pipelines::sd3::{Sd3, Sd3Conditioning};
use crate::pipelines::StepCallback;
use crate::schedulers::noise::{gaussian, step_gaussian};
use crate::weights::builtin;
use crate::weights::memory::{EngineOptions, ModelFootprint, Precision};

pub struct CandleGenerator {
    /// Where built-in models are written out.
    models_dir: PathBuf,
    device: Device,
    options: EngineOptions,
    /// The last model used stays loaded; another model replaces it (the old
    /// one is dropped first, so two never share memory).
    loaded: Mutex<Option<LoadedModel>>,
}

struct LoadedModel {
    key: String,
    pipeline: Pipeline,
    weights_sha256: String,
}

enum Pipeline {
    StableDiffusion(Box<StableDiffusion>),
    Sd3(Box<Sd3>),
    Flux(Box<Flux>),
}

/// A job's prompt, encoded for its pipeline.
enum Encoded {
    StableDiffusion(Conditioning),
    Sd3(Sd3Conditioning),
    Flux(FluxConditioning),
}

impl Encoded {
    /// With only the text encoders resident (`drop_text_encoders`).
    fn alone(
        family: ModelFamily,
        dir: &Path,
        device: &Device,
        spec: &GenerationSpec,
    ) -> Result<Self, EngineError> {
        let negative = spec.negative_prompt.as_deref();
        match family {
            ModelFamily::FluxDev | ModelFamily::FluxSchnell => {
                Flux::encode_alone(dir, device, &spec.prompt).map(Self::Flux)
            }
            ModelFamily::Sd3 => {
                Sd3::encode_alone(dir, device, &spec.prompt, negative).map(Self::Sd3)
            }
            _ => StableDiffusion::encode_alone(
                dir,
                device,
                &spec.prompt,
                negative,
                f64::from(spec.guidance_scale),
            )
            .map(Self::StableDiffusion),
        }
        .map_err(failed)
    }
}

impl Pipeline {
    /// With the pipeline's own (kept or per-use) encoders.
    fn encode(&self, spec: &GenerationSpec) -> Result<Encoded, EngineError> {
        let negative = spec.negative_prompt.as_deref();
        match self {
            Self::StableDiffusion(sd) => sd
                .encode_for_guidance(&spec.prompt, negative, f64::from(spec.guidance_scale))
                .map(Encoded::StableDiffusion),
            Self::Sd3(sd3) => sd3.encode_prompts(&spec.prompt, negative).map(Encoded::Sd3),
            Self::Flux(flux) => flux.encode_prompt(&spec.prompt).map(Encoded::Flux),
        }
        .map_err(failed)
    }

    fn load(
        family: ModelFamily,
        dir: &Path,
        device: &Device,
        keep: bool,
    ) -> Result<Self, EngineError> {
        let loaded = match family {
            ModelFamily::FluxDev | ModelFamily::FluxSchnell => {
                Flux::load_with(dir, device, keep).map(|f| Self::Flux(Box::new(f)))
            }
            ModelFamily::Sd3 => Sd3::load_with(dir, device, keep).map(|s| Self::Sd3(Box::new(s))),
            _ => StableDiffusion::load_with(dir, device, keep)
                .map(|s| Self::StableDiffusion(Box::new(s))),
        };
        loaded.map_err(|e| {
            EngineError::ModelUnavailable(format!("cannot load {}: {e}", dir.display()))
        })
    }
}

impl CandleGenerator {
    /// Fails when the configured device cannot be opened.
    pub fn new(models_dir: PathBuf, options: EngineOptions) -> Result<Self, String> {
        if !(0..=19).contains(&options.nice) {
            return Err(format!(
                "[engine] nice = {}: expected 0 to 19",
                options.nice
            ));
        }
        if options.precision == Precision::Bf16 && !cyberimage_kernels::bf16_gemm::available() {
            return Err(
                "[engine] precision = \"bf16\" needs a CPU with AVX-512 BF16, which this \
                        one lacks; use \"f32\""
                    .into(),
            );
        }
        cyberimage_kernels::priority::lower_pool_priority(options.thread_priority());
        Ok(Self {
            models_dir,
            device: options.device()?,
            options,
            loaded: Mutex::new(None),
        })
    }

    /// Refuses a model whose loaded size would exceed the memory budget.
    fn check_budget(&self, model: &ModelEntry, dir: &Path) -> Result<(), EngineError> {
        if self.options.memory_budget_gib.is_none() {
            return Ok(());
        }
        let footprint = ModelFootprint::of(dir)
            .map_err(|e| failed(format!("cannot measure {}: {e}", dir.display())))?;
        footprint
            .check(&self.options, &model.key)
            .map_err(EngineError::ModelUnavailable)
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

fn failed(e: impl std::fmt::Display) -> EngineError {
    EngineError::Failed(e.to_string())
}

#[cfg(test)]
mod tests;

impl Generator for CandleGenerator {
    fn can_run(&self, model: &ModelEntry) -> Result<(), EngineError> {
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
        let dir = self.resolve(model)?;
        self.check_budget(model, &dir)
    }

    /// A panic inside the pipeline fails this job with its message; the
    /// loaded model, whose state is then unknown, is dropped, so the next
    /// job loads it afresh.
    fn generate(
        &self,
        model: &ModelEntry,
        spec: &GenerationSpec,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_job(model, spec, observer, cancel)
        }))
        .unwrap_or_else(|panic| {
            *self.lock_loaded() = None;
            cyberimage_kernels::block_cache_alloc::release_parked();
            Err(EngineError::from_panic(&*panic))
        })
    }
}

#[cfg(test)]
thread_local! {
    /// Fault injection for the tests: the next job on this thread panics
    /// with this message once its model is loaded.
    static PANIC_IN_NEXT_JOB: std::cell::Cell<Option<&'static str>> =
        const { std::cell::Cell::new(None) };
}

/// Where a test's injected panic goes off (nothing outside tests).
fn fault_point() {
    #[cfg(test)]
    if let Some(message) = PANIC_IN_NEXT_JOB.with(|cell| cell.take()) {
        panic!("{message}");
    }
}

impl CandleGenerator {
    /// The loaded model, recovered if a panic poisoned its lock: then it
    /// is dropped, its state being unknown.
    fn lock_loaded(&self) -> MutexGuard<'_, Option<LoadedModel>> {
        self.loaded.lock().unwrap_or_else(|poisoned| {
            let mut loaded = poisoned.into_inner();
            *loaded = None;
            self.loaded.clear_poison();
            loaded
        })
    }

    fn run_job(
        &self,
        model: &ModelEntry,
        spec: &GenerationSpec,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        cyberimage_kernels::priority::lower_current_thread_priority(self.options.thread_priority());
        observer.on_progress(ProgressUpdate::LoadingModel);
        let dir = self.resolve(model)?;
        let mut loaded = self.lock_loaded();
        let needs_load = loaded.as_ref().is_none_or(|m| m.key != model.key);
        if needs_load || self.options.drop_text_encoders {
            self.check_budget(model, &dir)?;
        }
        let mut encoded = None;
        if self.options.drop_text_encoders {
            // The denoiser is freed while the encoders run, so the peak is
            // the larger of the two, not their sum; it is loaded again
            // below (each job pays that load).
            *loaded = None;
            // The freed weights go back to the system, not into the
            // allocator's cache of reusable blocks; likewise the encoders'.
            cyberimage_kernels::block_cache_alloc::release_parked();
            encoded = Some(Encoded::alone(model.family, &dir, &self.device, spec)?);
            cyberimage_kernels::block_cache_alloc::release_parked();
            cancel.check()?;
        }
        if loaded.as_ref().is_none_or(|m| m.key != model.key) {
            *loaded = None;
            cyberimage_kernels::block_cache_alloc::release_parked();
            let keep = !self.options.drop_text_encoders;
            // Hashing gigabytes takes seconds: done on a second thread
            // while this one reads the same files (from the page cache,
            // for whichever comes second).
            let (pipeline, hashed) = std::thread::scope(|scope| {
                let hashing =
                    scope.spawn(|| crate::weights::digest::weights_sha256(&dir, &self.models_dir));
                let pipeline = Pipeline::load(model.family, &dir, &self.device, keep);
                (pipeline, hashing.join())
            });
            let pipeline = pipeline?;
            let weights_sha256 = hashed
                .map_err(|_| failed("the weights hashing thread panicked"))?
                .map_err(|e| {
                    failed(format!("cannot hash the weights in {}: {e}", dir.display()))
                })?;
            *loaded = Some(LoadedModel {
                key: model.key.clone(),
                pipeline,
                weights_sha256,
            });
        }
        let loaded_model = loaded.as_ref().expect("just loaded");
        cancel.check()?;
        let encoded = match encoded {
            Some(encoded) => encoded,
            None => loaded_model.pipeline.encode(spec)?,
        };
        let run = Run {
            spec,
            observer,
            cancel,
            device: &self.device,
        };
        let bf16 = self.options.precision == Precision::Bf16;
        let (images, mut metadata) = cyberimage_kernels::bf16_gemm::scoped(bf16, || {
            fault_point();
            match (&loaded_model.pipeline, encoded) {
                (Pipeline::StableDiffusion(sd), Encoded::StableDiffusion(cond)) => {
                    run.stable_diffusion(sd, &cond)
                }
                (Pipeline::Sd3(sd3), Encoded::Sd3(cond)) => run.sd3(sd3, &cond),
                (Pipeline::Flux(flux), Encoded::Flux(cond)) => run.flux(flux, &cond),
                _ => Err(failed("the prompt was encoded for another pipeline")),
            }
        })?;
        metadata.extend([
            ("dtype".into(), self.options.precision.describe().into()),
            ("noise".into(), "chacha8-box-muller".into()),
            ("weights_sha256".into(), loaded_model.weights_sha256.clone()),
            (
                "engine".into(),
                format!(
                    "cyberimage-engine {} on candle 0.11",
                    env!("CARGO_PKG_VERSION")
                ),
            ),
        ]);
        Ok(images
            .into_iter()
            .map(|(seed, width, height, rgb)| GeneratedImage {
                width: width as u32,
                height: height as u32,
                rgb,
                seed,
                extra_metadata: metadata.clone(),
            })
            .collect())
    }
}

/// One job's images through a loaded pipeline.
struct Run<'a> {
    spec: &'a GenerationSpec,
    observer: &'a dyn ProgressObserver,
    cancel: &'a CancelToken,
    device: &'a Device,
}

/// Per image: (seed, width, height, RGB8 pixels).
type Images = Vec<(u64, usize, usize, Vec<u8>)>;
type Metadata = Vec<(String, String)>;

impl Run<'_> {
    /// The initial noise of image `index`: (seed, tensor of `shape`).
    fn noise(
        &self,
        index: u32,
        shape: (usize, usize, usize, usize),
    ) -> Result<(u64, Tensor), EngineError> {
        let seed = self.spec.image_seed(index);
        let count = shape.0 * shape.1 * shape.2 * shape.3;
        let noise = Tensor::from_vec(gaussian(seed, count), shape, self.device).map_err(failed)?;
        Ok((seed, noise))
    }

    /// Reports step progress across all images; false once cancelled.
    fn step_reporter(&self, index: u32) -> impl FnMut(usize, &Tensor) -> bool + '_ {
        let done_before = index * self.spec.steps;
        let total = self.spec.total_steps();
        move |step, _| {
            self.observer.on_progress(ProgressUpdate::Step {
                done: done_before + step as u32,
                total,
            });
            !self.cancel.is_cancelled()
        }
    }

    /// Every image of the job: seeded noise of (channels, h/factor,
    /// w/factor) → `denoise` (given the seed, the noise and the step
    /// reporter; `None` when cancelled) → `decode` to (h, w, 3) in [0, 1].
    fn images(
        &self,
        channels: usize,
        factor: usize,
        mut denoise: impl FnMut(
            u64,
            Tensor,
            &mut StepCallback,
        ) -> Result<Option<Tensor>, crate::error::EngineLoadError>,
        decode: impl Fn(&Tensor) -> Result<Tensor, crate::error::EngineLoadError>,
    ) -> Result<Images, EngineError> {
        let spec = self.spec;
        let shape = (
            1,
            channels,
            spec.height as usize / factor,
            spec.width as usize / factor,
        );
        let mut images = Vec::new();
        for index in 0..spec.num_images {
            let (seed, noise) = self.noise(index, shape)?;
            let result = denoise(seed, noise, &mut self.step_reporter(index)).map_err(failed)?;
            let Some(latents) = result else {
                return Err(EngineError::Cancelled);
            };
            self.observer.on_progress(ProgressUpdate::Decoding);
            let image = decode(&latents).map_err(failed)?;
            let (width, height, rgb) = crate::models::vae::unit_to_rgb8(&image).map_err(failed)?;
            images.push((seed, width, height, rgb));
        }
        Ok(images)
    }

    fn stable_diffusion(
        &self,
        sd: &StableDiffusion,
        cond: &Conditioning,
    ) -> Result<(Images, Metadata), EngineError> {
        let steps = self.spec.steps as usize;
        let guidance = f64::from(self.spec.guidance_scale);
        let sampler = sd.scheduler(steps).map_err(failed)?.name();
        let images = self.images(
            sd.latent_channels(),
            sd.latent_factor(),
            |seed, latents, on_step| {
                let shape = latents.dims4()?;
                let count = shape.1 * shape.2 * shape.3;
                sd.denoise(
                    cond,
                    latents,
                    steps,
                    guidance,
                    &mut |step| {
                        Tensor::from_vec(step_gaussian(seed, step, count), shape, self.device)
                    },
                    on_step,
                )
            },
            |latents| sd.decode_unit(latents),
        )?;
        Ok((images, vec![("sampler".into(), sampler.into())]))
    }

    fn sd3(&self, sd3: &Sd3, cond: &Sd3Conditioning) -> Result<(Images, Metadata), EngineError> {
        let steps = self.spec.steps as usize;
        let guidance = f64::from(self.spec.guidance_scale);
        let images = self.images(
            sd3.latent_channels(),
            sd3.latent_factor(),
            |_, noise, on_step| sd3.denoise(cond, noise, steps, guidance, on_step),
            |latents| sd3.decode_unit(latents),
        )?;
        Ok((images, vec![("sampler".into(), "Flow-match Euler".into())]))
    }

    fn flux(
        &self,
        flux: &Flux,
        cond: &FluxConditioning,
    ) -> Result<(Images, Metadata), EngineError> {
        let steps = self.spec.steps as usize;
        let guidance = f64::from(self.spec.guidance_scale);
        let images = self.images(
            flux.latent_channels(),
            flux.latent_factor(),
            |_, noise, on_step| flux.denoise(cond, &noise, steps, guidance, on_step),
            |latents| flux.decode_unit(latents),
        )?;
        let mut metadata = vec![("sampler".into(), "Flow-match Euler".into())];
        if !flux.uses_guidance() {
            metadata.push((
                "guidance".into(),
                "none (schnell: not guidance-distilled)".into(),
            ));
        }
        metadata.push(("transformer_weights".into(), flux.transformer_format.into()));
        Ok((images, metadata))
    }
}
