//! The generator this binary uses until a real inference engine is built in.
//! It never produces pixels: every job fails with a message saying why, so
//! no user ever receives a fake image.

use cyberimage_core::{
    CancelToken, EngineError, GeneratedImage, GenerationSpec, Generator, ModelEntry,
    ProgressObserver, ProgressUpdate,
};

pub struct NoEngine;

impl Generator for NoEngine {
    fn generate(
        &self,
        model: &ModelEntry,
        _spec: &GenerationSpec,
        observer: &dyn ProgressObserver,
        _cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        observer.on_progress(ProgressUpdate::LoadingModel);
        Err(EngineError::Unsupported(format!(
            "this build of cyberimage has no inference engine for {} models yet, so model {:?} ({}) cannot run; \
             the job is failed rather than answered with a placeholder image",
            model.family.as_str(),
            model.key,
            model.source
        )))
    }
}
