//! The repository contract: every backend must pass these checks. They run
//! against a real SQLite file, and against a real PostgreSQL server when
//! `POSTGRES_TEST_URL` names one (`scripts/with-postgres.sh`
//! starts a throwaway server; CI always does, and there a missing server
//! fails the tests instead of skipping them).

use std::collections::HashSet;
use std::sync::Arc;

use cyberimage_core::time::now;
use cyberimage_core::{
    GenerationSpec, ImageId, ImageRecord, Job, JobId, JobStatus, Progress, Stage,
};
use cyberimage_db::{
    CancelOutcome, Database, GalleryPage, GalleryQuery, JobRepo, PgDb, QueueStats, RecoveryReport,
    SqliteDb, StatusCounts,
};

#[path = "contract/counts.rs"]
mod counts;
#[path = "contract/gallery.rs"]
mod gallery;
use counts::{
    list_jobs_by_state, queue_stats_count_recent_jobs_by_model,
    referenced_inputs_are_the_specs_digests, status_counts_count_every_job,
};
use gallery::{favorites_filter_the_gallery, gallery_pagination_search_and_delete};

#[path = "contract/admin.rs"]
mod admin;
use admin::{retry_all_and_clear, retry_one_and_delete_one};

struct Backend {
    db: Arc<dyn Database>,
    _dir: tempfile::TempDir,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("contract.db"))
        .await
        .unwrap();
    Backend {
        db: Arc::new(db),
        _dir: dir,
    }
}

/// A fresh database on the test server, or `None` (skip) when there is no
/// server and this is not CI.
async fn postgres() -> Option<Backend> {
    let Ok(admin_url) = std::env::var("POSTGRES_TEST_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the contract on PostgreSQL: set POSTGRES_TEST_URL"
        );
        cyberimage_testkit::skipped(
            "no PostgreSQL: POSTGRES_TEST_URL is not set (scripts/with-postgres.sh starts one)",
        );
        return None;
    };
    let name = format!("contract_{}", JobId::new().to_string().replace('-', ""));
    let admin = PgDb::open_url(&admin_url).await.unwrap();
    admin
        .execute_admin(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    admin.close().await;
    // The same server and options (sslmode), another database.
    let (url, query) = admin_url.split_once('?').unwrap_or((&admin_url, ""));
    let (base, _) = url.rsplit_once('/').unwrap();
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    let db = PgDb::open_url(&format!("{base}/{name}{query}"))
        .await
        .unwrap();
    Some(Backend {
        db: Arc::new(db),
        _dir: tempfile::tempdir().unwrap(),
    })
}

fn spec(prompt: &str, model: &str) -> GenerationSpec {
    GenerationSpec {
        prompt: prompt.into(),
        negative_prompt: Some("blurry".into()),
        model: model.into(),
        width: 512,
        height: 512,
        steps: 4,
        guidance_scale: 7.5,
        num_images: 2,
        seed: 1234,
        init_image: None,
        loras: Vec::new(),
        upscale: None,
        hires: None,
    }
}

fn new_job(prompt: &str, model: &str) -> Job {
    Job::pending(spec(prompt, model))
}

fn images_for(job: &Job) -> Vec<ImageRecord> {
    (0..job.spec.num_images)
        .map(|i| ImageRecord {
            id: ImageId::new(),
            job_id: job.id,
            index: i,
            model: job.spec.model.clone(),
            prompt: job.spec.prompt.clone(),
            negative_prompt: job.spec.negative_prompt.clone(),
            width: job.spec.width,
            height: job.spec.height,
            steps: job.spec.steps,
            guidance_scale: job.spec.guidance_scale,
            seed: job.spec.image_seed(i),
            created_at: now(),
            favorite: false,
        })
        .collect()
}

async fn insert(db: &dyn Database, prompt: &str, model: &str) -> Job {
    let job = new_job(prompt, model);
    db.insert_job(&job, 1000).await.unwrap();
    job
}

/// Runs a job through claim → complete and returns its images.
async fn complete(db: &dyn Database, prompt: &str, model: &str) -> Vec<ImageRecord> {
    let job = insert(db, prompt, model).await;
    let claimed = db.claim_next("w", None, None).await.unwrap().unwrap();
    assert_eq!(claimed.id, job.id);
    let images = images_for(&job);
    assert!(db.complete_job(job.id, &images).await.unwrap());
    images
}

async fn round_trip_and_state_machine(db: &dyn Database) {
    let job = insert(db, "a red fox", "m1").await;
    let stored = db.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(stored, job, "a job reads back exactly as written");
    assert_eq!(db.get_job(JobId::new()).await.unwrap(), None);

    let claimed = db
        .claim_next("worker-a", None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.status, JobStatus::Processing);
    assert_eq!(claimed.attempts, 1);
    assert!(claimed.started_at.is_some());
    assert!(
        db.claim_next("worker-b", None, None)
            .await
            .unwrap()
            .is_none(),
        "queue is empty"
    );

    let p = Progress {
        stage: Stage::Generating,
        step: 3,
        total_steps: 8,
    };
    assert!(db.update_progress(job.id, p).await.unwrap());
    assert_eq!(db.get_job(job.id).await.unwrap().unwrap().progress, p);

    let images = images_for(&job);
    assert!(db.complete_job(job.id, &images).await.unwrap());
    let done = db.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.progress.stage, Stage::Completed);
    assert_eq!(done.progress.step, 8);
    assert!(done.completed_at.is_some());
    assert_eq!(done.images, images);

    // Finished is final.
    assert!(!db.complete_job(job.id, &images_for(&job)).await.unwrap());
    assert!(!db.fail_job(job.id, "late").await.unwrap());
    assert!(!db.update_progress(job.id, p).await.unwrap());
    assert!(!db.requeue_job(job.id).await.unwrap());
    assert_eq!(
        db.cancel_job(job.id, "x").await.unwrap(),
        CancelOutcome::AlreadyFinished(JobStatus::Completed)
    );
}

async fn fifo_and_queue_bound(db: &dyn Database) {
    let a = new_job("first", "m");
    let b = new_job("second", "m");
    db.insert_job(&a, 2).await.unwrap();
    db.insert_job(&b, 2).await.unwrap();
    let c = new_job("third", "m");
    assert!(matches!(
        db.insert_job(&c, 2).await,
        Err(cyberimage_db::DbError::QueueFull)
    ));
    assert_eq!(
        db.get_job(c.id).await.unwrap(),
        None,
        "a refused job is not stored"
    );
    assert_eq!(db.queue_counts().await.unwrap().pending, 2);
    assert_eq!(
        db.claim_next("w", None, None).await.unwrap().unwrap().id,
        a.id
    );
    // A running job no longer counts against the pending bound.
    db.insert_job(&c, 2).await.unwrap();
    let counts = db.queue_counts().await.unwrap();
    assert_eq!((counts.pending, counts.processing), (2, 1));
    assert_eq!(
        db.claim_next("w", None, None).await.unwrap().unwrap().id,
        b.id
    );
    assert_eq!(
        db.claim_next("w", None, None).await.unwrap().unwrap().id,
        c.id
    );
}

async fn concurrent_claims_never_share_a_job(db: Arc<dyn Database>) {
    let mut ids = HashSet::new();
    for i in 0..40 {
        ids.insert(insert(&*db, &format!("job {i}"), "m").await.id);
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(job) = db
                .claim_next(&format!("worker-{w}"), None, None)
                .await
                .unwrap()
            {
                mine.push(job.id);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    assert_eq!(claimed.len(), 40, "every job claimed exactly once");
    assert_eq!(claimed.iter().copied().collect::<HashSet<_>>(), ids);
}

async fn cancel_pending_and_running(db: &dyn Database) {
    let pending = insert(db, "p", "m").await;
    assert_eq!(
        db.cancel_job(pending.id, "user asked").await.unwrap(),
        CancelOutcome::Cancelled {
            was: JobStatus::Pending
        }
    );
    let j = db.get_job(pending.id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Cancelled);
    assert_eq!(j.error.as_deref(), Some("user asked"));
    assert!(
        db.claim_next("w", None, None).await.unwrap().is_none(),
        "a cancelled job is never claimed"
    );

    let running = insert(db, "r", "m").await;
    db.claim_next("w", None, None).await.unwrap().unwrap();
    assert_eq!(
        db.cancel_job(running.id, "stop").await.unwrap(),
        CancelOutcome::Cancelled {
            was: JobStatus::Processing
        }
    );
    // The worker finds out through its next progress write, and cannot
    // complete the job any more.
    assert!(!db
        .update_progress(running.id, Progress::queued(8))
        .await
        .unwrap());
    assert!(!db
        .complete_job(running.id, &images_for(&running))
        .await
        .unwrap());
    let j = db.get_job(running.id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Cancelled);
    assert!(j.images.is_empty());
    let gallery = db
        .list_images(&GalleryQuery {
            page: 1,
            per_page: 10,
            model: None,
            search: None,
            keywords: Vec::new(),
            favorites_only: false,
        })
        .await
        .unwrap();
    assert_eq!(gallery.total, 0, "no image rows from a cancelled job");
    assert_eq!(
        db.cancel_job(JobId::new(), "x").await.unwrap(),
        CancelOutcome::NotFound
    );
}

/// A moment after now: every heartbeat so far counts as stale.
fn later() -> cyberimage_core::time::Timestamp {
    now() + chrono::Duration::seconds(1)
}

async fn restart_recovery(db: &dyn Database) {
    // A job whose worker is alive (fresh heartbeat) is not touched.
    let alive = insert(db, "alive elsewhere", "m").await;
    db.claim_next("live-worker", None, None)
        .await
        .unwrap()
        .unwrap();
    assert!(db.heartbeat(alive.id).await.unwrap());
    let long_ago = now() - chrono::Duration::seconds(60);
    assert_eq!(
        db.recover_interrupted(2, long_ago).await.unwrap(),
        RecoveryReport::default()
    );
    assert_eq!(
        db.get_job(alive.id).await.unwrap().unwrap().status,
        JobStatus::Processing
    );
    db.fail_job(alive.id, "test cleanup").await.unwrap();
    assert!(
        !db.heartbeat(alive.id).await.unwrap(),
        "no heartbeat for a finished job"
    );

    let job = insert(db, "interrupted", "m").await;
    db.claim_next("crashed-worker", None, None)
        .await
        .unwrap()
        .unwrap();
    // Simulated restart: the job was left processing.
    assert_eq!(
        db.recover_interrupted(2, later()).await.unwrap(),
        RecoveryReport {
            requeued: 1,
            failed: 0
        }
    );
    let j = db.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Pending);
    assert_eq!(j.started_at, None);
    let again = db.claim_next("w", None, None).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (job.id, 2));
    // Second crash: the attempt budget (2) is spent.
    assert_eq!(
        db.recover_interrupted(2, later()).await.unwrap(),
        RecoveryReport {
            requeued: 0,
            failed: 1
        }
    );
    let j = db.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert!(j.error.unwrap().contains("interrupted 2 times"));

    // A graceful shutdown gives the attempt back.
    let polite = insert(db, "shutdown", "m").await;
    db.claim_next("w", None, None).await.unwrap().unwrap();
    assert!(db.requeue_job(polite.id).await.unwrap());
    let j = db.get_job(polite.id).await.unwrap().unwrap();
    assert_eq!((j.status, j.attempts), (JobStatus::Pending, 0));
}

macro_rules! contract {
    ($backend:ident: $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(backend) = Some($backend().await).flatten_backend() else { return };
                super::$name(&*backend.db).await;
            }
        )*

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_claims_never_share_a_job() {
            let Some(backend) = Some($backend().await).flatten_backend() else { return };
            super::concurrent_claims_never_share_a_job(backend.db.clone()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn claims_skip_models_the_worker_cannot_run() {
            let Some(backend) = Some($backend().await).flatten_backend() else { return };
            super::claims_skip_models_the_worker_cannot_run(&*backend.db).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn claims_prefer_the_loaded_model_but_not_forever() {
            let Some(backend) = Some($backend().await).flatten_backend() else { return };
            super::claims_prefer_the_loaded_model_but_not_forever(&*backend.db).await;
        }
    };
}

/// Lets one macro take backends that always exist and ones that may not.
trait FlattenBackend {
    fn flatten_backend(self) -> Option<Backend>;
}

impl FlattenBackend for Option<Backend> {
    fn flatten_backend(self) -> Option<Backend> {
        self
    }
}

impl FlattenBackend for Option<Option<Backend>> {
    fn flatten_backend(self) -> Option<Backend> {
        self.flatten()
    }
}

async fn claims_prefer_the_loaded_model_but_not_forever(db: &dyn Database) {
    let a = insert(db, "first, model a", "a").await;
    let b = insert(db, "second, model b", "b").await;
    // A worker with model b loaded takes b's job first…
    assert_eq!(
        db.claim_next("w", Some("b"), None)
            .await
            .unwrap()
            .unwrap()
            .id,
        b.id
    );
    assert_eq!(
        db.claim_next("w", Some("b"), None)
            .await
            .unwrap()
            .unwrap()
            .id,
        a.id
    );
    // …but not over a job that has waited past the patience window.
    let mut old = new_job("old, model a", "a");
    old.created_at =
        now() - chrono::Duration::milliseconds(cyberimage_db::AFFINITY_PATIENCE_MS + 1000);
    db.insert_job(&old, 10).await.unwrap();
    let fresh = insert(db, "fresh, model b", "b").await;
    assert_eq!(
        db.claim_next("w", Some("b"), None)
            .await
            .unwrap()
            .unwrap()
            .id,
        old.id
    );
    assert_eq!(
        db.claim_next("w", None, None).await.unwrap().unwrap().id,
        fresh.id
    );
}

async fn claims_skip_models_the_worker_cannot_run(db: &dyn Database) {
    let flux = insert(db, "needs flux", "flux").await;
    let sd = insert(db, "needs sd", "sd").await;
    let only_sd = ["sd".to_owned()];
    let claimed = db
        .claim_next("w", None, Some(&only_sd))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        claimed.id, sd.id,
        "the older flux job is left for another worker"
    );
    assert!(db
        .claim_next("w", None, Some(&only_sd))
        .await
        .unwrap()
        .is_none());
    assert!(db.claim_next("w", None, Some(&[])).await.unwrap().is_none());
    assert_eq!(
        db.claim_next("w2", None, None).await.unwrap().unwrap().id,
        flux.id
    );
}

mod on_postgres {
    use super::*;

    contract!(
        postgres:
        round_trip_and_state_machine,
        fifo_and_queue_bound,
        cancel_pending_and_running,
        restart_recovery,
        gallery_pagination_search_and_delete,
        status_counts_count_every_job,
        queue_stats_count_recent_jobs_by_model,
        referenced_inputs_are_the_specs_digests,
        list_jobs_by_state,
        retry_one_and_delete_one,
        retry_all_and_clear,
        favorites_filter_the_gallery,
    );
}

mod on_sqlite {
    use super::*;

    contract!(
        sqlite:
        round_trip_and_state_machine,
        fifo_and_queue_bound,
        cancel_pending_and_running,
        restart_recovery,
        gallery_pagination_search_and_delete,
        status_counts_count_every_job,
        queue_stats_count_recent_jobs_by_model,
        referenced_inputs_are_the_specs_digests,
        list_jobs_by_state,
        retry_one_and_delete_one,
        retry_all_and_clear,
        favorites_filter_the_gallery,
    );

    #[tokio::test]
    async fn data_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reopen.db");
        let db = SqliteDb::open(&path).await.unwrap();
        let job = insert(&db, "persist me", "m").await;
        db.close().await;
        let db = SqliteDb::open(&path).await.unwrap();
        assert_eq!(db.get_job(job.id).await.unwrap().unwrap(), job);
        assert_eq!(db.integrity_check().await.unwrap(), "ok");
    }
}
