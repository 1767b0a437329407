//! A panic while saving a job's images fails that job and keeps the worker
//! alive: the next job completes. (The injection point exists only in this
//! crate's unit tests, hence a unit test rather than one in `tests/`.)

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cyberimage_core::{Catalogue, Job, JobId, JobStatus, SpecRequest};
use cyberimage_db::{Database, SqliteDb};
use cyberimage_store::ImageStore;
use cyberimage_testkit::ScriptedGenerator;

use super::PANIC_WHILE_SAVING;
use crate::{JobService, JobsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_saving_fails_the_job_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(SqliteDb::open(&dir.path().join("jobs.db")).await.unwrap());
    let store = ImageStore::open(dir.path()).unwrap();
    let config = JobsConfig {
        poll_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let catalogue = Arc::new(Catalogue::new(Catalogue::builtin_test_models()).unwrap());
    let service = JobService::new(db as Arc<dyn Database>, store, catalogue, config);
    let request = |prompt: &str| SpecRequest {
        prompt: Some(prompt.into()),
        steps: Some(1),
        width: Some(64),
        height: Some(64),
        ..Default::default()
    };

    PANIC_WHILE_SAVING.store(true, Ordering::SeqCst);
    service
        .spawn_worker(Arc::new(ScriptedGenerator::default()), "w")
        .unwrap();
    let first = service.submit(request("saved badly")).await.unwrap();
    let end = wait_terminal(&service, first.id).await;
    assert_eq!(end.status, JobStatus::Failed);
    assert_eq!(
        end.error.as_deref(),
        Some("generation failed: saving the images panicked: injected fault while saving")
    );
    assert!(end.images.is_empty());

    let second = service.submit(request("saved well")).await.unwrap();
    let done = wait_terminal(&service, second.id).await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(done.images.len(), 1);
}

async fn wait_terminal(service: &JobService, id: JobId) -> Job {
    for _ in 0..1000 {
        let job = service.job(id).await.unwrap();
        if job.status.is_terminal() {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never finished");
}
