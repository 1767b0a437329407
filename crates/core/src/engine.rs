//! The boundary between the jobs service and inference.
//!
//! A [`Generator`] receives a resolved spec and its model entry, reports
//! progress through an observer and checks a cancel token between steps. It
//! knows nothing of HTTP, SQL or job ids: the same pipeline serves the
//! server, the CLI and the benchmarks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::model::ModelEntry;
use crate::spec::GenerationSpec;

/// Shared flag a caller trips to stop a generation at the next step.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// For the engine's step loop: `token.check()?` between steps.
    pub fn check(&self) -> Result<(), EngineError> {
        if self.is_cancelled() {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressUpdate {
    /// Weights are being read or moved to the device.
    LoadingModel,
    /// `done` of `total` denoising steps finished, counted over the whole
    /// request (all images).
    Step { done: u32, total: u32 },
    /// Latents are being decoded to pixels.
    Decoding,
}

/// A rough picture of an image being denoised, after `step` of its steps
/// (8-bit RGB, row-major; latent-sized, so small).
#[derive(Clone, Debug, PartialEq)]
pub struct PreviewImage {
    pub step: u32,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

pub trait ProgressObserver: Send + Sync {
    fn on_progress(&self, update: ProgressUpdate);

    /// A live preview; observers that show none ignore it.
    fn on_preview(&self, preview: PreviewImage) {
        let _ = preview;
    }
}

/// An observer that ignores everything, for callers that do not care.
pub struct NoProgress;

impl ProgressObserver for NoProgress {
    fn on_progress(&self, _: ProgressUpdate) {}
}

/// One finished image: 8-bit RGB pixels, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub seed: u64,
    /// Engine-specific facts worth keeping with the image (scheduler, dtype,
    /// engine version), written into the PNG metadata.
    pub extra_metadata: Vec<(String, String)>,
}

/// The input picture of an image-to-image job, already at the job's size:
/// 8-bit RGB, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct InputImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    /// Inpainting: the mask's luma at the same size (255 = repaint).
    pub mask: Option<Vec<u8>>,
}

/// An upscaling job as the engine sees it: the network's weights file and
/// the output size (the network's scale times the input's, or another
/// size, reached by resizing its result).
#[derive(Clone, Debug, PartialEq)]
pub struct UpscaleRequest {
    pub weights: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Input pixels per tile side (0: the engine's default).
    pub tile: u32,
}

/// What an upscaler file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpscalerInfo {
    /// `esrgan-rrdb`, `realesrgan-compact`, `rdn`.
    pub architecture: String,
    /// Output pixels per input pixel along each side.
    pub scale: u32,
    /// Input sides must be multiples of this (the engine pads to it).
    pub size_multiple: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("generation was cancelled")]
    Cancelled,
    /// The weights are not where we looked; the message says what is missing
    /// and how to get it.
    #[error("{0}")]
    ModelUnavailable(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("generation failed: {0}")]
    Failed(String),
}

impl EngineError {
    /// A job's failure from a panic's payload: "engine panicked: MESSAGE".
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        Self::Failed(format!("engine panicked: {}", panic_message(payload)))
    }
}

/// The message of a panic's payload (`panic!` with a string or a format),
/// or a placeholder for other payloads.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

pub trait Generator: Send + Sync {
    /// Runs on a dedicated OS thread, never on the async runtime.
    fn generate(
        &self,
        model: &ModelEntry,
        spec: &GenerationSpec,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError>;

    /// `generate` starting from `input` when the spec has an init image
    /// (image-to-image). Engines that cannot edit refuse such jobs.
    fn generate_from(
        &self,
        model: &ModelEntry,
        spec: &GenerationSpec,
        input: Option<&InputImage>,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        match input {
            None => self.generate(model, spec, observer, cancel),
            Some(_) => Err(EngineError::Unsupported(
                "this engine cannot start from an input image".into(),
            )),
        }
    }

    /// Upscales `input` with the super-resolution network in
    /// `request.weights` to `request.width × request.height`, reporting
    /// tiles as steps. Engines without upscalers refuse.
    fn upscale(
        &self,
        request: &UpscaleRequest,
        input: &InputImage,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<GeneratedImage, EngineError> {
        let _ = (request, input, observer, cancel);
        Err(EngineError::Unsupported(
            "this engine has no upscalers".into(),
        ))
    }

    /// What the upscaler file `weights` holds (architecture and scale),
    /// read from its weights without running it.
    fn inspect_upscaler(&self, weights: &Path) -> Result<UpscalerInfo, EngineError> {
        let _ = weights;
        Err(EngineError::Unsupported(
            "this engine has no upscalers".into(),
        ))
    }

    /// Whether the LoRAs of `spec` (their digests filled in) fit `model`:
    /// every layer one the model has, of its shapes. Cheap (file headers,
    /// nothing loaded), for refusing a job before it is queued; `Err`
    /// names the layer. Engines that cannot tell, or that do not have the
    /// model's weights here, answer `Ok` (the job then finds out).
    fn check_loras(&self, model: &ModelEntry, spec: &GenerationSpec) -> Result<(), EngineError> {
        let _ = (model, spec);
        Ok(())
    }

    /// Whether `model` can run here: its family has a pipeline and its
    /// weights are on this machine. Cheap (no loading); `Err` says what is
    /// missing. Engines that cannot tell answer `Ok`.
    fn can_run(&self, model: &ModelEntry) -> Result<(), EngineError> {
        let _ = model;
        Ok(())
    }
}
