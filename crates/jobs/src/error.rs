//! What the jobs service can refuse or fail with. Adapters map these to HTTP
//! statuses and JSON-RPC codes in one table (the api crate's `error_table`).

use cyberimage_core::{JobStatus, ValidationError};
use cyberimage_db::DbError;
use cyberimage_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("the queue is full ({pending} jobs waiting); retry in {retry_after_secs} s")]
    QueueFull { pending: u64, retry_after_secs: u64 },
    #[error("job not found")]
    JobNotFound,
    #[error("image not found")]
    ImageNotFound,
    #[error("job already {}", .0.as_str())]
    AlreadyFinished(JobStatus),
    /// A queue-administration action this job's state does not allow;
    /// `code` is the stable error code (`job_not_failed`, …).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Database(DbError),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl From<DbError> for JobsError {
    fn from(e: DbError) -> Self {
        match e {
            // The repository reports the bound; the service fills in the details.
            DbError::QueueFull => Self::QueueFull {
                pending: 0,
                retry_after_secs: 1,
            },
            other => Self::Database(other),
        }
    }
}
