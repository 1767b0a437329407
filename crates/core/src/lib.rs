//! Domain types shared by every CyberImage crate.
//!
//! Nothing here knows about HTTP, SQL or tensors: this crate is the common
//! language of the request adapters, the jobs service, the engine and the
//! stores. Keeping it dependency-light keeps every other crate honest.

#![forbid(unsafe_code)]

pub mod engine;
pub mod hires;
pub mod ids;
pub mod job;
pub mod lora;
pub mod model;
mod resolve;
pub mod spec;
pub mod time;
pub mod upscale;

pub use engine::{
    panic_message, CancelToken, EngineError, GeneratedImage, Generator, InputImage, PreviewImage,
    ProgressObserver, ProgressUpdate, UpscaleRequest, UpscalerInfo,
};
pub use hires::{HiresRequest, HiresSpec};
pub use ids::{IdError, ImageId, JobId};
pub use job::{ImageRecord, Job, JobStatus, Progress, Stage};
pub use lora::LoraRequest;
pub use model::{Catalogue, ModelDefaults, ModelEntry, ModelFamily};
pub use spec::{GenerationSpec, InitImage, Limits, Outpaint, SpecRequest, ValidationError};
