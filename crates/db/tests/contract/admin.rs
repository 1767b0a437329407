//! The queue-administration part of the contract: retrying, deleting and
//! clearing, the same on SQLite and PostgreSQL.

use cyberimage_core::{JobId, JobStatus};
use cyberimage_db::{ClearReport, Database, DeleteOutcome, RetryOutcome, RetryReport};

use super::{complete, insert};

/// Claims the oldest pending job (which must be `id`) and fails it.
async fn run_and_fail(db: &dyn Database, id: JobId) {
    let claimed = db.claim_next("w", None, None).await.unwrap().unwrap();
    assert_eq!(claimed.id, id);
    assert!(db.fail_job(id, "boom").await.unwrap());
}

pub async fn retry_one_and_delete_one(db: &dyn Database) {
    let job = insert(db, "flaky", "m").await;
    run_and_fail(db, job.id).await;
    assert_eq!(
        db.retry_job(job.id, 3, 1000, false).await.unwrap(),
        RetryOutcome::Retried
    );
    let j = db.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Pending);
    assert_eq!(j.error, None, "the old error is gone");
    assert_eq!(j.attempts, 1, "a plain retry keeps the attempts used");
    assert_eq!(
        (j.progress.step, j.started_at, j.completed_at),
        (0, None, None)
    );

    // Two more failed runs use the budget of 3; then only force retries.
    run_and_fail(db, job.id).await;
    db.retry_job(job.id, 3, 1000, false).await.unwrap();
    run_and_fail(db, job.id).await;
    assert_eq!(
        db.retry_job(job.id, 3, 1000, false).await.unwrap(),
        RetryOutcome::AttemptsExhausted { attempts: 3 }
    );
    assert_eq!(
        db.get_job(job.id).await.unwrap().unwrap().status,
        JobStatus::Failed,
        "a refused retry changes nothing"
    );
    // The queue bound holds for retries too.
    let waiting = insert(db, "waiting", "m").await;
    assert_eq!(
        db.retry_job(job.id, 3, 1, true).await.unwrap(),
        RetryOutcome::QueueFull
    );
    assert_eq!(
        db.retry_job(job.id, 3, 1000, true).await.unwrap(),
        RetryOutcome::Retried
    );
    assert_eq!(db.get_job(job.id).await.unwrap().unwrap().attempts, 0);
    assert_eq!(
        db.retry_job(waiting.id, 3, 1000, true).await.unwrap(),
        RetryOutcome::NotFailed(JobStatus::Pending)
    );
    assert_eq!(
        db.retry_job(JobId::new(), 3, 1000, true).await.unwrap(),
        RetryOutcome::NotFound
    );

    // Deleting: never a running job, never one whose images are kept.
    let running = db.claim_next("w", None, None).await.unwrap().unwrap();
    assert_eq!(
        db.delete_job(running.id).await.unwrap(),
        DeleteOutcome::Running
    );
    assert!(db.fail_job(running.id, "x").await.unwrap());
    assert_eq!(
        db.delete_job(running.id).await.unwrap(),
        DeleteOutcome::Deleted
    );
    assert!(db.get_job(running.id).await.unwrap().is_none());
    assert_eq!(
        db.delete_job(running.id).await.unwrap(),
        DeleteOutcome::NotFound
    );
    db.cancel_job(waiting.id, "x").await.unwrap();
    let images = complete(db, "kept", "m").await;
    assert_eq!(
        db.delete_job(images[0].job_id).await.unwrap(),
        DeleteOutcome::HasImages(2)
    );
    for image in &images {
        db.delete_image(image.id).await.unwrap();
    }
    assert_eq!(
        db.delete_job(images[0].job_id).await.unwrap(),
        DeleteOutcome::Deleted,
        "once its pictures are gone the record can go"
    );
}

pub async fn retry_all_and_clear(db: &dyn Database) {
    let images = complete(db, "kept", "m").await;
    let spent = insert(db, "spent", "m").await;
    for _ in 0..2 {
        run_and_fail(db, spent.id).await;
        db.retry_job(spent.id, 3, 1000, false).await.unwrap();
    }
    run_and_fail(db, spent.id).await;
    let mut fresh = Vec::new();
    for i in 0..3 {
        let job = insert(db, &format!("fresh {i}"), "m").await;
        run_and_fail(db, job.id).await;
        fresh.push(job.id);
    }
    // Room for two in the queue: the two oldest retryable ones go.
    let report = db.retry_failed(3, 2, false).await.unwrap();
    assert_eq!(
        report,
        RetryReport {
            retried: 2,
            exhausted: 1,
            over_queue_bound: 1
        }
    );
    let status = |id| async move { db.get_job(id).await.unwrap().unwrap().status };
    assert_eq!(status(fresh[0]).await, JobStatus::Pending);
    assert_eq!(status(fresh[1]).await, JobStatus::Pending);
    assert_eq!(status(fresh[2]).await, JobStatus::Failed);
    assert_eq!(status(spent.id).await, JobStatus::Failed);
    let forced = db.retry_failed(3, 1000, true).await.unwrap();
    assert_eq!((forced.retried, forced.exhausted), (2, 0));

    // Clear: pending records go; a running one and kept pictures stay.
    let running = db.claim_next("w", None, None).await.unwrap().unwrap();
    let cleared = db.clear_jobs(&[JobStatus::Pending]).await.unwrap();
    assert_eq!(cleared.deleted, 3);
    assert!(db.get_job(running.id).await.unwrap().is_some());
    assert!(db.fail_job(running.id, "x").await.unwrap());
    let done = insert(db, "done, no images", "m").await;
    db.cancel_job(done.id, "x").await.unwrap();
    let everything = db.clear_jobs(&JobStatus::ALL).await.unwrap();
    assert_eq!(
        everything,
        ClearReport {
            deleted: 2,
            kept_with_images: 1
        }
    );
    assert!(db.get_job(images[0].job_id).await.unwrap().is_some());
    assert_eq!(db.queue_counts().await.unwrap().pending, 0);
}
