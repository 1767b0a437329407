//! Job events pushed to live listeners (web UI streams, MCP progress).
//! Losing one is harmless: the database still has the state.

use cyberimage_core::{ImageId, JobId, JobStatus, Progress};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub status: JobStatus,
    pub progress: Progress,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set on the event announcing a live preview: the step it shows
    /// (fetch it from `/api/preview/{job_id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_step: Option<u32>,
}

/// A gallery image changed (for MCP resource subscriptions): made (its job
/// completed), marked or unmarked a favourite, or deleted. Only changes
/// made in this process are seen.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageEvent {
    pub image_id: ImageId,
    pub change: ImageChange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageChange {
    Created,
    Favorite,
    Deleted,
}
