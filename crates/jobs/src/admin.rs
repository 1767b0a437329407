//! Queue administration on the jobs service: retry one failed job or all
//! of them (`force` ignores the attempt budget, as the CyberImage app's
//! force-retry does), delete job records, clear the queue by status. The
//! database decides each case with guarded statements; this turns its
//! outcomes into errors a user can act on, wakes the workers and tells
//! the event stream.

use cyberimage_core::{ImageId, Job, JobId, JobStatus};
use cyberimage_db::{ClearReport, DeleteOutcome, RetryOutcome, RetryReport};

use crate::{JobService, JobsError};

/// What `clear_jobs` may be asked to clear, by the names the app uses.
pub fn clear_scope(name: &str) -> Option<&'static [JobStatus]> {
    match name {
        "pending" => Some(&[JobStatus::Pending]),
        "failed" => Some(&[JobStatus::Failed]),
        "cancelled" => Some(&[JobStatus::Cancelled]),
        "completed" => Some(&[JobStatus::Completed]),
        // Everything finished or waiting; a running job is never cleared.
        "all" => Some(&JobStatus::ALL),
        _ => None,
    }
}

pub const CLEAR_SCOPES: [&str; 5] = ["pending", "failed", "cancelled", "completed", "all"];

fn refused(code: &'static str, message: impl Into<String>) -> JobsError {
    JobsError::Refused {
        code,
        message: message.into(),
    }
}

impl JobService {
    /// Puts a failed job back in the queue. Without `force` only while it
    /// has attempts left; with it, with a fresh attempt budget.
    pub async fn retry_job(&self, id: JobId, force: bool) -> Result<Job, JobsError> {
        let max_attempts = self.config.max_attempts;
        match self
            .db
            .retry_job(id, max_attempts, self.config.max_queue, force)
            .await?
        {
            RetryOutcome::NotFound => Err(JobsError::JobNotFound),
            RetryOutcome::NotFailed(status) => Err(refused(
                "job_not_failed",
                format!(
                    "only failed jobs are retried; this one is {}",
                    status.as_str()
                ),
            )),
            RetryOutcome::AttemptsExhausted { attempts } => Err(refused(
                "attempts_exhausted",
                format!(
                    "this job has used {attempts} of {max_attempts} attempts; retry it with \
                     force=true to start it again anyway"
                ),
            )),
            RetryOutcome::QueueFull => Err(JobsError::QueueFull {
                pending: u64::from(self.config.max_queue),
                retry_after_secs: 5,
            }),
            RetryOutcome::Retried => {
                self.wake.notify_one();
                let job = self.job(id).await?;
                self.publish(id, job.status, job.progress, None);
                Ok(job)
            }
        }
    }

    /// Retries every failed job that may be, oldest first, while the queue
    /// has room.
    pub async fn retry_failed(&self, force: bool) -> Result<RetryReport, JobsError> {
        let report = self
            .db
            .retry_failed(self.config.max_attempts, self.config.max_queue, force)
            .await?;
        if report.retried > 0 {
            // Every idle worker may take one, and a permit stays for the next.
            self.wake.notify_waiters();
            self.wake.notify_one();
        }
        Ok(report)
    }

    /// Deletes a job record that is not running. A job whose pictures are
    /// in the gallery keeps its record unless `with_images`, which deletes
    /// the pictures (rows and files) first. Returns the images deleted.
    pub async fn delete_job(&self, id: JobId, with_images: bool) -> Result<u64, JobsError> {
        let mut deleted_images = 0;
        loop {
            match self.db.delete_job(id).await? {
                DeleteOutcome::NotFound => return Err(JobsError::JobNotFound),
                DeleteOutcome::Running => {
                    return Err(refused(
                        "job_running",
                        "a worker is running this job: cancel it first",
                    ))
                }
                DeleteOutcome::HasImages(n) if !with_images || deleted_images > 0 => {
                    return Err(refused(
                        "job_has_images",
                        format!(
                            "this job's {n} image(s) are in the gallery; delete them first, or \
                             delete the job with images=true"
                        ),
                    ))
                }
                DeleteOutcome::HasImages(_) => {
                    let ids: Vec<ImageId> =
                        self.job(id).await?.images.iter().map(|i| i.id).collect();
                    for image in ids {
                        match self.delete_image(image).await {
                            Ok(()) | Err(JobsError::ImageNotFound) => deleted_images += 1,
                            Err(e) => return Err(e),
                        }
                    }
                }
                DeleteOutcome::Deleted => return Ok(deleted_images),
            }
        }
    }

    /// Jobs in `statuses` (newest first when any is finished), for the
    /// admin page's table. Images are not loaded.
    pub async fn list_jobs(
        &self,
        statuses: &[JobStatus],
        limit: u32,
    ) -> Result<Vec<Job>, JobsError> {
        Ok(self.db.list_jobs(statuses, limit).await?)
    }

    /// Deletes the records of jobs in `statuses`, except running ones and
    /// those whose images are in the gallery.
    pub async fn clear_jobs(&self, statuses: &[JobStatus]) -> Result<ClearReport, JobsError> {
        Ok(self.db.clear_jobs(statuses).await?)
    }
}
