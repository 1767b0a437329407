//! The one jobs service every protocol adapter calls.
//!
//! REST, the seed's JSON-RPC methods, MCP and the CLI all build a
//! [`SpecRequest`](cyberimage_core::SpecRequest) and call [`JobService`];
//! none of them touches the engine. Workers claim jobs from the database,
//! run the engine on its own OS thread ([`EngineThread`]), save images and
//! record the outcome. The database holds the truth; the event bus and the
//! wake-up signal only make things faster.

#![forbid(unsafe_code)]

mod admin;
mod engine_thread;
mod error;
mod events;
mod hires;
mod inputs;
mod loras;
mod metadata;
pub mod metrics;
mod png_info;
mod service;
mod upscale;
mod worker;

pub use admin::{clear_scope, CLEAR_SCOPES};
pub use cyberimage_db::{ClearReport, RetryReport};
pub use cyberimage_store::loras::LoraInfo;
pub use engine_thread::{EngineTask, EngineThread};
pub use error::JobsError;
pub use events::{ImageChange, ImageEvent, JobEvent};
pub use loras::{family_of, LoraFamily};
pub use metadata::png_text_chunks;
pub use png_info::{parse_a1111, parse_png_info, png_info_from_bytes, PngInfo};
pub use service::{JobService, JobsConfig, QueueView, ReconcileReport};
pub use upscale::{UpscaleSubmit, UpscalerListing, DEFAULT_UPSCALER};
pub use worker::WorkerHandle;

pub use cyberimage_db::{
    GalleryPage, GalleryQuery, QueueCounts, QueueStats, RecoveryReport, StatusCounts, MAX_KEYWORDS,
};
pub use cyberimage_store::Variant as ImageVariant;
