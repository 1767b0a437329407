//! Job events pushed to live listeners (web UI streams, MCP progress).
//! Losing one is harmless: the database still has the state.

use cyberimage_core::{JobId, JobStatus, Progress};
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
