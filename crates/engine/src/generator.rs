//! The engine behind `cyberimage_core::Generator`: resolves a model's
//! weights, keeps the last-used model loaded, and runs its family's
//! pipeline (SD 1.x/2.x/XL, SD 3.x, FLUX.1). Weights that are not on the
//! machine fail the job with a message naming what is missing.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

mod families;
mod loras;
mod previews;
mod run;
mod upscaling;

use candle_core::Device;
use cyberimage_core::{
    CancelToken, EngineError, GeneratedImage, GenerationSpec, Generator, InputImage, ModelEntry,
    ProgressObserver, ProgressUpdate, UpscaleRequest, UpscalerInfo,
};

use crate::error::EngineLoadError;
use crate::weights::builtin;
use crate::weights::memory::{EngineOptions, ModelFootprint, Precision};
use crate::weights::single_file::assemble;
use families::{family, LoadedPipeline};
use loras::LoraFiles;
use run::{failed, Run};

pub struct CandleGenerator {
    /// Where built-in models are written out.
    models_dir: PathBuf,
    device: Device,
    options: EngineOptions,
    /// The last model used stays loaded; another model replaces it (the old
    /// one is dropped first, so two never share memory).
    loaded: Mutex<Option<LoadedModel>>,
    loras: LoraFiles,
    upscalers: upscaling::Upscalers,
    previews: previews::PreviewDecoders,
}

struct LoadedModel {
    key: String,
    pipeline: Box<dyn LoadedPipeline>,
    weights_sha256: String,
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
        if options.precision == Precision::Bf16 {
            cyberimage_kernels::bf16_gemm::prefer(options.bf16_kernel.preference())
                .map_err(|e| format!("[engine] {e}"))?;
        }
        cyberimage_kernels::priority::lower_pool_priority(options.thread_priority());
        Ok(Self {
            models_dir,
            device: options.device()?,
            options,
            loaded: Mutex::new(None),
            loras: LoraFiles::default(),
            upscalers: upscaling::Upscalers::default(),
            previews: previews::PreviewDecoders::default(),
        })
    }

    /// Where the LoRAs jobs name are (`NAME.safetensors`): the data dir's
    /// `loras/`, then (called again) other programs' LoRA folders, searched
    /// in that order. Without one, a job with LoRAs fails saying so.
    pub fn with_loras_dir(mut self, dir: PathBuf) -> Self {
        if !self.loras.dirs.contains(&dir) {
            self.loras.dirs.push(dir);
        }
        self
    }

    /// Where tiny preview decoders may be (`taesd_decoder.safetensors`,
    /// …, see `generator/previews.rs`): the data dir's `vae_approx/`, then
    /// (called again) other programs' folders, in that order.
    pub fn with_preview_decoders_dir(mut self, dir: PathBuf) -> Self {
        if !self.previews.dirs.contains(&dir) {
            self.previews.dirs.push(dir);
        }
        self
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
    /// a single checkpoint file (assembled into a folder, see
    /// `weights::single_file`), or a Hugging Face repo in the local HF cache.
    fn resolve(&self, model: &ModelEntry) -> Result<PathBuf, EngineError> {
        if let Some(name) = model.source.strip_prefix("builtin:") {
            return builtin::materialize(name, &self.models_dir)
                .map_err(|e| EngineError::ModelUnavailable(e.to_string()));
        }
        let local = Path::new(&model.source);
        if local.is_dir() {
            return Ok(local.to_path_buf());
        }
        if local.is_file() {
            return self.assemble_single_file(model, local);
        }
        if let Some(dir) = hf_cached_pipeline(&model.source).filter(|d| has_weights(d)) {
            return Ok(dir);
        }
        Err(EngineError::ModelUnavailable(format!(
            "the weights of model {:?} ({}) are not on this machine: looked for a local folder \
             or file and in the Hugging Face cache{}. Download them (`cyberimage models pull {}`, \
             with HF_TOKEN for gated repos) or point the model's `source` at a local diffusers \
             folder or checkpoint file",
            model.key,
            model.source,
            hf_cache_dir()
                .map(|h| format!(" at {}", h.display()))
                .unwrap_or_default(),
            model.key
        )))
    }

    /// A diffusers-layout folder for a model whose weights are one file
    /// (plus its `vae` and `text_encoders` files), under `models_dir`.
    fn assemble_single_file(
        &self,
        model: &ModelEntry,
        file: &Path,
    ) -> Result<PathBuf, EngineError> {
        let unavailable = |e: EngineLoadError| {
            EngineError::ModelUnavailable(format!("model {:?}: {e}", model.key))
        };
        let text_encoders: Vec<PathBuf> = model.text_encoders.iter().map(PathBuf::from).collect();
        let plan = assemble::plan(
            model.family,
            file,
            model.vae.as_deref().map(Path::new),
            &text_encoders,
        )
        .map_err(unavailable)?;
        let config = model
            .config
            .clone()
            .unwrap_or_else(|| model.family.reference_repo().to_string());
        let config_dir = if Path::new(&config).is_dir() {
            PathBuf::from(&config)
        } else {
            hf_cached_pipeline(&config).ok_or_else(|| {
                EngineError::ModelUnavailable(format!(
                    "model {:?} is a single checkpoint file and needs the configs and tokenizers \
                     of {config} (a few MB, no weights), which are not in the Hugging Face cache: \
                     run `cyberimage models pull {}`, or set the model's `config` to a local \
                     diffusers folder",
                    model.key, model.key
                ))
            })?
        };
        let out = self.models_dir.join("single-file").join(&model.key);
        assemble::write(&plan, &config_dir, &out).map_err(unavailable)?;
        Ok(out)
    }
}

/// Whether a pipeline folder holds weights: a snapshot pulled for its
/// configs alone (to go with a checkpoint file) does not.
fn has_weights(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|component| {
        std::fs::read_dir(component.path()).is_ok_and(|files| {
            files.filter_map(Result::ok).any(|f| {
                f.path()
                    .extension()
                    .is_some_and(|e| e == "safetensors" || e == "gguf")
            })
        })
    })
}

/// A pipeline snapshot of `repo` in the Hugging Face cache (a snapshot
/// with `model_index.json`), if there is one.
fn hf_cached_pipeline(repo: &str) -> Option<PathBuf> {
    let snapshots = hf_repo_dir(&hf_cache_dir()?, repo).join("snapshots");
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("model_index.json").exists())
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

#[cfg(test)]
mod tests;

impl Generator for CandleGenerator {
    fn can_run(&self, model: &ModelEntry) -> Result<(), EngineError> {
        if let Some(name) = model.source.strip_prefix("builtin:") {
            // Built in: present by definition, written out on first use.
            return if builtin::is_builtin(name) {
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

    fn generate(
        &self,
        model: &ModelEntry,
        spec: &GenerationSpec,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        self.generate_from(model, spec, None, observer, cancel)
    }

    /// A panic inside the pipeline fails this job with its message; the
    /// loaded model, whose state is then unknown, is dropped, so the next
    /// job loads it afresh.
    fn generate_from(
        &self,
        model: &ModelEntry,
        spec: &GenerationSpec,
        input: Option<&InputImage>,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_job(model, spec, input, observer, cancel)
        }))
        .unwrap_or_else(|panic| {
            *self.lock_loaded() = None;
            cyberimage_kernels::alloc::release_freed_memory();
            Err(EngineError::from_panic(&*panic))
        })
    }

    fn upscale(
        &self,
        request: &UpscaleRequest,
        input: &InputImage,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<GeneratedImage, EngineError> {
        cyberimage_kernels::priority::lower_current_thread_priority(self.options.thread_priority());
        let bf16 = self.options.precision == Precision::Bf16;
        cyberimage_kernels::bf16_gemm::scoped(bf16, || {
            self.upscalers
                .run(request, input, &self.device, observer, cancel)
        })
    }

    fn inspect_upscaler(&self, weights: &Path) -> Result<UpscalerInfo, EngineError> {
        self.upscalers.inspect(weights, &self.device)
    }

    fn check_loras(&self, model: &ModelEntry, spec: &GenerationSpec) -> Result<(), EngineError> {
        if spec.loras.is_empty() {
            return Ok(());
        }
        // Weights elsewhere (another worker's machine): the job finds out.
        let Ok(dir) = self.resolve(model) else {
            return Ok(());
        };
        let loras = self.loras.uses(spec)?;
        family(model.family)
            .check_loras(&dir, &loras)
            .map_err(|e| EngineError::Unsupported(e.to_string()))
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
        input: Option<&InputImage>,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        // Every family's VAE downsamples by 8 (the masks' latent size).
        let init = run::InitInput::of(spec, input, 8, &self.device)?;
        let loras = self.loras.uses(spec)?;
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
            // The freed weights go back to the system now, not after the
            // allocator's purge delay; likewise the encoders'.
            cyberimage_kernels::alloc::release_freed_memory();
            encoded = Some(
                family(model.family)
                    .encode_alone(&dir, &self.device, spec, &loras)
                    .map_err(failed)?,
            );
            cyberimage_kernels::alloc::release_freed_memory();
            cancel.check()?;
        }
        if loaded.as_ref().is_none_or(|m| m.key != model.key) {
            *loaded = None;
            cyberimage_kernels::alloc::release_freed_memory();
            let keep = !self.options.drop_text_encoders;
            // Hashing gigabytes takes seconds: done on a second thread
            // while this one reads the same files (from the page cache,
            // for whichever comes second).
            let (pipeline, hashed) = std::thread::scope(|scope| {
                let hashing =
                    scope.spawn(|| crate::weights::digest::weights_sha256(&dir, &self.models_dir));
                // In bf16 on AMX, the layers pack their weights as they
                // load (bf16_gemm::packing_at_load), not in the first job.
                let bf16 = self.options.precision == Precision::Bf16;
                let loading = || family(model.family).load(&dir, &self.device, keep);
                let pipeline = cyberimage_kernels::bf16_gemm::packing_at_load(bf16, loading)
                    .map_err(|e| {
                        EngineError::ModelUnavailable(format!("cannot load {}: {e}", dir.display()))
                    });
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
        let loaded_model = loaded.as_mut().expect("just loaded");
        loaded_model
            .pipeline
            .set_loras(&loras)
            .map_err(|e| EngineError::Unsupported(e.to_string()))?;
        let loaded_model = &*loaded_model;
        cancel.check()?;
        let encoded = match encoded {
            Some(encoded) => encoded,
            None => loaded_model.pipeline.encode(spec).map_err(failed)?,
        };
        let preview_decoder = self.previews.for_family(model.family, &self.device);
        let run = Run {
            spec,
            observer,
            cancel,
            device: &self.device,
            init: init.as_ref(),
            preview_decoder: preview_decoder.as_deref(),
            masked_posterior: Default::default(),
        };
        let bf16 = self.options.precision == Precision::Bf16;
        let (images, mut metadata) = cyberimage_kernels::bf16_gemm::scoped(bf16, || {
            fault_point();
            loaded_model.pipeline.run(&run, &encoded)
        })?;
        if let (Some(init), Some(spec_init)) = (&init, &spec.init_image) {
            metadata.extend([
                ("init_image_sha256".into(), spec_init.sha256.clone()),
                ("denoising_strength".into(), init.strength.to_string()),
            ]);
            if let Some(mask) = &spec_init.mask_sha256 {
                metadata.push(("mask_sha256".into(), mask.clone()));
                metadata.push(("mask_blur".into(), spec_init.mask_blur.to_string()));
                if spec_init.keep_unmasked {
                    metadata.push(("keep_unmasked".into(), "true".into()));
                }
            }
        }
        if !spec.loras.is_empty() {
            let join = |f: &dyn Fn(&cyberimage_core::spec::LoraRef) -> String| {
                spec.loras.iter().map(f).collect::<Vec<_>>().join(", ")
            };
            metadata.push((
                "loras".into(),
                join(&|l| format!("{}:{}", l.name, l.weight)),
            ));
            // As A1111 writes them: the first 12 hex digits of each digest.
            metadata.push((
                "lora_hashes".into(),
                join(&|l| format!("{}: {}", l.name, l.sha256.get(..12).unwrap_or(&l.sha256))),
            ));
        }
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
