//! Runs a [`Generator`] on a dedicated OS thread, behind an async handle.
//!
//! Tensor work would starve the async runtime's few threads (this machine
//! has two cores), so the engine never runs on tokio: requests cross a
//! channel, and the result comes back through a oneshot.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use cyberimage_core::{
    CancelToken, EngineError, GeneratedImage, GenerationSpec, Generator, InputImage, ModelEntry,
    ProgressObserver, UpscaleRequest,
};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Vec<GeneratedImage>, EngineError>>;

/// What a job asks of the engine.
pub enum EngineTask {
    /// Text-to-image, or image-to-image from the job's input.
    Generate(ModelEntry),
    /// The job's input upscaled.
    Upscale(UpscaleRequest),
    /// Text-to-image with a hires pass, by the upscaler network given
    /// (`None`: Lanczos).
    Hires(ModelEntry, Option<UpscaleRequest>),
}

struct Work {
    task: EngineTask,
    spec: GenerationSpec,
    input: Option<InputImage>,
    observer: Box<dyn ProgressObserver>,
    cancel: CancelToken,
    reply: Reply,
}

#[derive(Clone)]
pub struct EngineThread {
    tx: mpsc::Sender<Work>,
}

impl EngineThread {
    pub fn spawn(generator: Arc<dyn Generator>, name: &str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Work>();
        thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || {
                for work in rx {
                    // A panicking generator fails this job only: the thread
                    // goes on to the next one.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        match &work.task {
                            EngineTask::Generate(model) => generator.generate_from(
                                model,
                                &work.spec,
                                work.input.as_ref(),
                                &*work.observer,
                                &work.cancel,
                            ),
                            EngineTask::Upscale(request) => match &work.input {
                                Some(input) => generator
                                    .upscale(request, input, &*work.observer, &work.cancel)
                                    .map(|image| vec![image]),
                                None => Err(EngineError::Failed(
                                    "an upscaling job without its picture".into(),
                                )),
                            },
                            EngineTask::Hires(model, upscaler) => crate::hires::run(
                                &*generator,
                                model,
                                &work.spec,
                                upscaler.as_ref(),
                                &*work.observer,
                                &work.cancel,
                            ),
                        }
                    }))
                    .unwrap_or_else(|panic| Err(EngineError::from_panic(&*panic)));
                    let _ = work.reply.send(result);
                }
            })?;
        Ok(Self { tx })
    }

    pub async fn run(
        &self,
        task: EngineTask,
        spec: GenerationSpec,
        input: Option<InputImage>,
        observer: Box<dyn ProgressObserver>,
        cancel: CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Work {
                task,
                spec,
                input,
                observer,
                cancel,
                reply,
            })
            .map_err(|_| EngineError::Failed("engine thread is gone".into()))?;
        rx.await
            .map_err(|_| EngineError::Failed("engine thread dropped the request".into()))?
    }
}
