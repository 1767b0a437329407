//! Job and image records behind repository traits.
//!
//! The database holds the truth about every job: the queue *is* the `jobs`
//! table, and every state change is a guarded `UPDATE … WHERE status = …` so
//! that two workers, a cancel and a crash-recovery pass can race without a
//! job ever being run twice or resurrected. SQLite is the default backend;
//! other backends implement the same traits and pass the same contract tests
//! (`tests/contract.rs`).

#![forbid(unsafe_code)]

mod admin;
pub mod postgres;
mod rows;
pub mod sqlite;

use async_trait::async_trait;
use cyberimage_core::{ImageId, ImageRecord, Job, JobId, JobStatus, Progress};

pub use admin::{AdminRepo, ClearReport, DeleteOutcome, RetryOutcome, RetryReport};
pub use postgres::PgDb;
pub use sqlite::SqliteDb;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the queue is full")]
    QueueFull,
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// How long a pending job may be passed over for jobs of a worker's loaded
/// model (switching models costs a load; starving a job costs more).
pub const AFFINITY_PATIENCE_MS: i64 = 60_000;

/// What a cancel request found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    NotFound,
    /// The job had already finished; nothing changed.
    AlreadyFinished(JobStatus),
    /// The job is now `cancelled`; `was` tells whether a worker may still be
    /// running it and has to be told.
    Cancelled {
        was: JobStatus,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub requeued: u64,
    pub failed: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    pub pending: u64,
    pub processing: u64,
}

/// Jobs by status, all of them (the queue page's totals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatusCounts {
    pub pending: u64,
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl StatusCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.processing + self.completed + self.failed + self.cancelled
    }
}

/// The queue's recent history: per model, the jobs created since a time
/// by status, and the mean run time of those that completed.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct QueueStats {
    /// (model key, its jobs by status), by model key.
    pub per_model: Vec<(String, StatusCounts)>,
    /// Mean milliseconds from start to completion; `None` with none done.
    pub mean_run_ms: Option<f64>,
}

impl QueueStats {
    /// Every model's counts together.
    pub fn all_models(&self) -> StatusCounts {
        self.per_model
            .iter()
            .fold(StatusCounts::default(), |sum, (_, c)| StatusCounts {
                pending: sum.pending + c.pending,
                processing: sum.processing + c.processing,
                completed: sum.completed + c.completed,
                failed: sum.failed + c.failed,
                cancelled: sum.cancelled + c.cancelled,
            })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GalleryQuery {
    /// 1-based.
    pub page: u32,
    pub per_page: u32,
    pub model: Option<String>,
    /// Case-insensitive substring of the prompt.
    pub search: Option<String>,
    /// Case-insensitive words that must each appear in the prompt or the
    /// model key (CyberImage's `search`): all of them, in any order.
    pub keywords: Vec<String>,
    /// Only images marked as favourites.
    pub favorites_only: bool,
}

/// Most keywords one gallery query takes (each is a pair of LIKE tests).
pub const MAX_KEYWORDS: usize = 16;

#[derive(Clone, Debug, PartialEq)]
pub struct GalleryPage {
    pub images: Vec<ImageRecord>,
    pub total: u64,
}

#[async_trait]
pub trait JobRepo: Send + Sync {
    /// Inserts a `pending` job unless `max_pending` jobs already wait; the
    /// count and the insert are one atomic statement.
    async fn insert_job(&self, job: &Job, max_pending: u32) -> Result<(), DbError>;

    /// The job with its images (if completed).
    async fn get_job(&self, id: JobId) -> Result<Option<Job>, DbError>;

    /// Atomically moves the oldest `pending` job to `processing` for `worker`
    /// and counts the attempt. Two workers never get the same job. Model
    /// affinity: jobs for `preferred_model` (the one the worker has loaded)
    /// go first, unless an older job has waited `AFFINITY_PATIENCE_MS`.
    /// With `only_models`, jobs for other models are left to other workers.
    async fn claim_next(
        &self,
        worker: &str,
        preferred_model: Option<&str>,
        only_models: Option<&[String]>,
    ) -> Result<Option<Job>, DbError>;

    /// Persists progress of a `processing` job. Returns `false` when the job
    /// is no longer processing (cancelled elsewhere): the worker must stop.
    async fn update_progress(&self, id: JobId, progress: Progress) -> Result<bool, DbError>;

    /// `processing → completed` together with its image rows, in one
    /// transaction. Returns `false` (and stores nothing) if the job was no
    /// longer processing.
    async fn complete_job(&self, id: JobId, images: &[ImageRecord]) -> Result<bool, DbError>;

    /// `pending|processing → failed` with a reason. `false` if already final.
    async fn fail_job(&self, id: JobId, reason: &str) -> Result<bool, DbError>;

    /// `pending|processing → cancelled`.
    async fn cancel_job(&self, id: JobId, reason: &str) -> Result<CancelOutcome, DbError>;

    /// `processing → pending`, giving the attempt back: for a graceful
    /// shutdown that interrupts a job through no fault of the job.
    async fn requeue_job(&self, id: JobId) -> Result<bool, DbError>;

    /// Marks a `processing` job as alive. `false` when it is no longer
    /// processing (cancelled elsewhere): the worker must stop.
    async fn heartbeat(&self, id: JobId) -> Result<bool, DbError>;

    /// Recovery pass over `processing` jobs whose worker has not shown life
    /// since `stale_before` (it crashed or was killed): back to `pending`
    /// while they have attempts left, otherwise `failed` with a reason.
    /// Jobs with a fresh heartbeat belong to a live worker, perhaps in
    /// another process, and are left alone.
    async fn recover_interrupted(
        &self,
        max_attempts: u32,
        stale_before: cyberimage_core::time::Timestamp,
    ) -> Result<RecoveryReport, DbError>;

    async fn queue_counts(&self) -> Result<QueueCounts, DbError>;

    /// Every job counted by status (a full count: for the queue page, not
    /// for probes, which use `queue_counts`).
    async fn status_counts(&self) -> Result<StatusCounts, DbError>;

    /// The jobs created at or after `since`: by model and status, and the
    /// mean run time of the completed ones.
    async fn queue_stats(
        &self,
        since: cyberimage_core::time::Timestamp,
    ) -> Result<QueueStats, DbError>;

    /// The backend's own consistency check: `"ok"` when sound.
    async fn integrity_check(&self) -> Result<String, DbError>;

    /// Jobs in any of `statuses`: oldest first for active states, newest
    /// first for finished ones. Images are not loaded.
    async fn list_jobs(&self, statuses: &[JobStatus], limit: u32) -> Result<Vec<Job>, DbError>;
}

#[async_trait]
pub trait ImageRepo: Send + Sync {
    async fn get_image(&self, id: ImageId) -> Result<Option<ImageRecord>, DbError>;

    /// Newest first.
    async fn list_images(&self, query: &GalleryQuery) -> Result<GalleryPage, DbError>;

    async fn delete_image(&self, id: ImageId) -> Result<bool, DbError>;

    /// Marks or unmarks an image as a favourite; `false` when it is gone.
    async fn set_favorite(&self, id: ImageId, favorite: bool) -> Result<bool, DbError>;

    /// Every image id with a row, for reconciling rows against files.
    async fn all_image_ids(&self) -> Result<Vec<ImageId>, DbError>;

    /// The digests of the input pictures (and masks) that jobs name, for
    /// reconciling the store's `inputs/` against them.
    async fn referenced_inputs(&self) -> Result<Vec<String>, DbError>;
}

/// Everything the jobs service needs from a backend.
pub trait Database: JobRepo + ImageRepo + AdminRepo {}

impl<T: JobRepo + ImageRepo + AdminRepo> Database for T {}
