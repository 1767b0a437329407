//! The jobs service end to end on a real SQLite file and image folder, with
//! the engine replaced by the testkit's `ScriptedGenerator` double.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cyberimage_core::{
    Catalogue, Job, JobId, JobStatus, ModelDefaults, ModelEntry, ModelFamily, SpecRequest, Stage,
};
use cyberimage_db::{Database, JobRepo, SqliteDb};
use cyberimage_jobs::{ImageVariant, JobService, JobsConfig, JobsError};
use cyberimage_store::{read_png_text, ImageStore};
use cyberimage_testkit::ScriptedGenerator;

struct Harness {
    service: Arc<JobService>,
    db: Arc<SqliteDb>,
    dir: tempfile::TempDir,
}

fn catalogue() -> Arc<Catalogue> {
    Arc::new(
        Catalogue::new(vec![ModelEntry {
            key: "tiny".into(),
            source: "test/tiny".into(),
            family: ModelFamily::Sd15,
            description: "test".into(),
            defaults: ModelDefaults {
                steps: 4,
                guidance_scale: 7.5,
                width: 64,
                height: 64,
            },
            config: None,
            vae: None,
            text_encoders: Vec::new(),
            steps_range: None,
            fixed_steps: None,
        }])
        .unwrap(),
    )
}

async fn harness_in(dir: tempfile::TempDir, max_queue: u32, stale_after: Duration) -> Harness {
    let db = Arc::new(SqliteDb::open(&dir.path().join("jobs.db")).await.unwrap());
    let store = ImageStore::open(dir.path()).unwrap();
    let config = JobsConfig {
        max_queue,
        max_attempts: 2,
        poll_interval: Duration::from_millis(50),
        stale_after,
        ..Default::default()
    };
    let service = JobService::new(db.clone() as Arc<dyn Database>, store, catalogue(), config);
    Harness { service, db, dir }
}

async fn harness(max_queue: u32) -> Harness {
    harness_in(
        tempfile::tempdir().unwrap(),
        max_queue,
        Duration::from_secs(30),
    )
    .await
}

fn request(prompt: &str) -> SpecRequest {
    SpecRequest {
        prompt: Some(prompt.into()),
        ..Default::default()
    }
}

/// Polls the database (the source of truth) until `pred` holds.
async fn wait_for(service: &JobService, id: JobId, pred: impl Fn(&Job) -> bool) -> Job {
    for _ in 0..2000 {
        let job = service.job(id).await.unwrap();
        if pred(&job) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "job {id} never reached the expected state: {:?}",
        service.job(id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_to_completion_with_images_and_metadata() {
    let h = harness(10).await;
    let mut events = h.service.subscribe();
    h.service
        .spawn_worker(Arc::new(ScriptedGenerator::default()), "w")
        .unwrap();
    let job = h
        .service
        .submit(SpecRequest {
            num_images: Some(2),
            seed: Some(99),
            negative_prompt: Some("fog".into()),
            ..request("a lighthouse")
        })
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Pending);
    let done = wait_for(&h.service, job.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(done.progress.stage, Stage::Completed);
    assert_eq!((done.progress.step, done.progress.total_steps), (8, 8));
    assert!(done.started_at.is_some() && done.completed_at.is_some());
    assert_eq!(done.images.len(), 2);
    assert_eq!(
        done.images.iter().map(|i| i.seed).collect::<Vec<_>>(),
        vec![99, 100]
    );

    let png = h
        .service
        .image_bytes(done.images[0].id, ImageVariant::Full)
        .await
        .unwrap();
    let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(decoded.into_raw(), ScriptedGenerator::paint(64, 64, 99));
    let text = read_png_text(&png).unwrap();
    let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(
        params.starts_with("a lighthouse\nNegative prompt: fog\nSteps: 4,"),
        "{params}"
    );
    assert!(
        params.contains("Seed: 99, Size: 64x64, Model: tiny"),
        "{params}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&text.iter().find(|(k, _)| k == "cyberimage").unwrap().1).unwrap();
    assert_eq!(json["seed"], 99);
    assert_eq!(json["job_id"], job.id.to_string());
    assert!(h
        .service
        .image_bytes(done.images[1].id, ImageVariant::Thumbnail)
        .await
        .is_ok());

    // Progress events rose step by step and ended in `completed`.
    let mut steps = Vec::new();
    let mut previews = 0;
    let mut last_status = JobStatus::Pending;
    // The database may say `completed` a moment before the event is sent.
    while last_status != JobStatus::Completed {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("events keep coming until completion")
            .unwrap();
        if ev.job_id == job.id {
            if ev.preview_step.is_some() {
                previews += 1;
                continue;
            }
            if ev.progress.stage == Stage::Generating {
                steps.push(ev.progress.step);
            }
            last_status = ev.status;
        }
    }
    // With no delay between steps the worker may coalesce steps into one
    // write, but the last step is always recorded. Step-by-step delivery is
    // checked with a slower engine in the API's event-stream test.
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    assert_eq!(steps.last(), Some(&8), "{steps:?}");
    assert_eq!(last_status, JobStatus::Completed);
    // The engine double sends a preview after each step but an image's
    // last: 3 per image; they are announced apart from progress.
    assert_eq!(previews, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_pending_job_and_a_running_one() {
    let h = harness(10).await;
    let generator = Arc::new(ScriptedGenerator::new(Duration::from_millis(40)));
    let running = h
        .service
        .submit(SpecRequest {
            steps: Some(100),
            ..request("long")
        })
        .await
        .unwrap();
    let pending = h.service.submit(request("waiting")).await.unwrap();

    // Pending: cancelled before any worker exists.
    let cancelled = h.service.cancel(pending.id).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(matches!(
        h.service.cancel(pending.id).await,
        Err(JobsError::AlreadyFinished(JobStatus::Cancelled))
    ));

    h.service.spawn_worker(generator.clone(), "w").unwrap();
    wait_for(&h.service, running.id, |j| {
        j.status == JobStatus::Processing && j.progress.step >= 2
    })
    .await;
    h.service.cancel(running.id).await.unwrap();
    // The engine thread stops at its next step; nothing is stored.
    let end = wait_for(&h.service, running.id, |j| j.status.is_terminal()).await;
    assert_eq!(end.status, JobStatus::Cancelled);
    for _ in 0..500 {
        if h.service.queue(5).await.unwrap().counts.processing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let step_at_end = h.service.job(running.id).await.unwrap().progress.step;
    assert!(step_at_end < 100, "stopped early, at step {step_at_end}");
    assert!(end.images.is_empty());
    assert_eq!(
        generator.calls.load(Ordering::SeqCst),
        1,
        "the cancelled pending job never ran"
    );
    assert!(std::fs::read_dir(h.dir.path().join("images"))
        .unwrap()
        .next()
        .is_none());
    assert!(matches!(
        h.service.cancel(JobId::new()).await,
        Err(JobsError::JobNotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_a_retry_hint_and_stores_nothing() {
    let h = harness(2).await;
    h.service.submit(request("one")).await.unwrap();
    h.service.submit(request("two")).await.unwrap();
    match h.service.submit(request("three")).await {
        Err(JobsError::QueueFull {
            pending,
            retry_after_secs,
        }) => {
            assert_eq!(pending, 2);
            assert!(retry_after_secs >= 1);
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert_eq!(h.service.queue(5).await.unwrap().active.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_before_storage() {
    let h = harness(10).await;
    let err = h
        .service
        .submit(SpecRequest {
            width: Some(65),
            ..request("x")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, JobsError::Invalid(ref v) if v.field == "width"),
        "{err}"
    );
    assert_eq!(h.service.queue(5).await.unwrap().counts.pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_interrupted_by_a_crash_is_requeued_then_completed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let id = {
        let h = harness_in(dir, 10, Duration::ZERO).await;
        let job = h.service.submit(request("survivor")).await.unwrap();
        // A worker claims it, then the process "dies" without finishing.
        h.db.claim_next("doomed", None, None)
            .await
            .unwrap()
            .unwrap();
        h.db.close().await;
        std::mem::forget(h.dir); // keep the files for the restart
        job.id
    };
    let dir = tempfile::TempDir::with_prefix_in("restart", path.parent().unwrap()).unwrap();
    std::fs::remove_dir(dir.path()).unwrap();
    std::fs::rename(&path, dir.path()).unwrap();
    let h = harness_in(dir, 10, Duration::ZERO).await;
    assert_eq!(
        h.service.job(id).await.unwrap().status,
        JobStatus::Processing
    );
    let report = h.service.recover().await.unwrap();
    assert_eq!((report.requeued, report.failed), (1, 0));
    h.service
        .spawn_worker(Arc::new(ScriptedGenerator::default()), "w")
        .unwrap();
    let done = wait_for(&h.service, id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_failures_and_panics_fail_the_job_with_the_reason() {
    let h = harness(10).await;
    h.service
        .spawn_worker(
            Arc::new(ScriptedGenerator::failing(
                "weights missing: run `cyberimage models pull tiny`",
            )),
            "w",
        )
        .unwrap();
    let job = h.service.submit(request("doomed")).await.unwrap();
    let end = wait_for(&h.service, job.id, |j| j.status.is_terminal()).await;
    assert_eq!(end.status, JobStatus::Failed);
    assert_eq!(end.progress.stage, Stage::Failed);
    assert!(end.error.unwrap().contains("models pull tiny"));
}

/// Fault injection through the real service: the engine panics on one
/// job; that job fails with the panic's message and the same worker runs
/// the next job to completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_engine_fails_that_job_and_the_next_one_completes() {
    let h = harness(10).await;
    let generator = Arc::new(ScriptedGenerator {
        panic_on_prompt: Some("boom".into()),
        ..Default::default()
    });
    h.service.spawn_worker(generator.clone(), "w").unwrap();
    let doomed = h.service.submit(request("boom")).await.unwrap();
    let end = wait_for(&h.service, doomed.id, |j| j.status.is_terminal()).await;
    assert_eq!(end.status, JobStatus::Failed);
    assert_eq!(
        end.error.as_deref(),
        Some("generation failed: engine panicked: scripted panic for prompt \"boom\"")
    );
    let next = h.service.submit(request("calm")).await.unwrap();
    let done = wait_for(&h.service, next.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.images.len(), 1);
    assert_eq!(generator.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_puts_the_running_job_back_in_the_queue() {
    let h = harness(10).await;
    let worker = h
        .service
        .spawn_worker(
            Arc::new(ScriptedGenerator::new(Duration::from_millis(30))),
            "w",
        )
        .unwrap();
    let job = h
        .service
        .submit(SpecRequest {
            steps: Some(100),
            ..request("interrupted politely")
        })
        .await
        .unwrap();
    wait_for(&h.service, job.id, |j| j.progress.step >= 1).await;
    h.service.begin_shutdown();
    worker.join().await;
    let j = h.service.job(job.id).await.unwrap();
    assert_eq!((j.status, j.attempts), (JobStatus::Pending, 0));
    assert!(matches!(
        h.service.submit(request("late")).await,
        Err(JobsError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_image_removes_row_and_files() {
    let h = harness(10).await;
    h.service
        .spawn_worker(Arc::new(ScriptedGenerator::default()), "w")
        .unwrap();
    let job = h.service.submit(request("ephemeral")).await.unwrap();
    let done = wait_for(&h.service, job.id, |j| j.status.is_terminal()).await;
    let img = done.images[0].id;
    h.service.delete_image(img).await.unwrap();
    assert!(matches!(
        h.service.image(img).await,
        Err(JobsError::ImageNotFound)
    ));
    assert!(matches!(
        h.service.image_bytes(img, ImageVariant::Full).await,
        Err(JobsError::ImageNotFound)
    ));
    assert!(!h
        .dir
        .path()
        .join("images")
        .join(format!("{img}.png"))
        .exists());
    assert!(matches!(
        h.service.delete_image(img).await,
        Err(JobsError::ImageNotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_reconciles_orphan_files_and_dangling_rows() {
    // A long stale_after keeps the worker's own periodic pass (recovery
    // and this same reconcile) from racing the test's call: with ZERO it
    // ran on every loop and now and then removed the planted orphan first
    // (seen once in eight runs on a loaded 2-core machine). The orphan is
    // dated two hours back instead, older than stale_after.
    let h = harness_in(tempfile::tempdir().unwrap(), 10, Duration::from_secs(3600)).await;
    h.service
        .spawn_worker(Arc::new(ScriptedGenerator::default()), "w")
        .unwrap();
    let job = h
        .service
        .submit(SpecRequest {
            num_images: Some(2),
            ..request("kept")
        })
        .await
        .unwrap();
    let done = wait_for(&h.service, job.id, |j| j.status.is_terminal()).await;
    let (kept, lost) = (done.images[0].id, done.images[1].id);
    // A crash between file and row leaves an orphan; a lost file leaves a
    // dangling row.
    let store = ImageStore::open(h.dir.path()).unwrap();
    let orphan = cyberimage_core::ImageId::new();
    store.save(orphan, b"png", b"thumb").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(h.dir.path().join("images").join(format!("{orphan}.png")))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    std::fs::remove_file(h.dir.path().join("images").join(format!("{lost}.png"))).unwrap();

    let report = h.service.reconcile_files().await.unwrap();
    assert_eq!(
        (report.orphan_files_removed, report.dangling_rows_removed),
        (1, 1)
    );
    assert!(!h
        .dir
        .path()
        .join("images")
        .join(format!("{orphan}.png"))
        .exists());
    assert!(matches!(
        h.service.image(lost).await,
        Err(JobsError::ImageNotFound)
    ));
    assert!(h
        .service
        .image_bytes(kept, ImageVariant::Full)
        .await
        .is_ok());
    let again = h.service.reconcile_files().await.unwrap();
    assert_eq!(again, Default::default(), "a second pass finds nothing");
}

/// An unwritable image folder (here: `images` replaced by a plain file, so
/// every write fails with "not a directory", as it would on a full or
/// read-only disk; a real full disk cannot be made without privileges)
/// fails the job with the reason and leaves the service working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_image_folder_fails_the_job_and_the_service_goes_on() {
    let h = harness(10).await;
    h.service
        .spawn_worker(Arc::new(ScriptedGenerator::new(Duration::ZERO)), "w")
        .unwrap();
    let images = h.dir.path().join("images");
    std::fs::remove_dir_all(&images).unwrap();
    std::fs::write(&images, b"not a folder").unwrap();
    let job = h.service.submit(request("doomed to fail")).await.unwrap();
    let failed = wait_for(&h.service, job.id, |j| j.status.is_terminal()).await;
    assert_eq!(failed.status, JobStatus::Failed);
    let reason = failed.error.unwrap();
    assert!(reason.contains("could not save image"), "{reason}");
    let rows = cyberimage_db::ImageRepo::all_image_ids(&*h.db)
        .await
        .unwrap();
    assert!(rows.is_empty(), "no row for an image that was not written");

    std::fs::remove_file(&images).unwrap();
    std::fs::create_dir(&images).unwrap();
    let job = h
        .service
        .submit(request("after the disk is fixed"))
        .await
        .unwrap();
    let done = wait_for(&h.service, job.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Completed);
}

/// An input kept for a submission the queue then refused names no job: the
/// reconcile pass removes it (once older than `stale_after`, as a younger
/// one may belong to a submission in flight), and keeps the inputs jobs
/// name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_no_job_names_are_reconciled_away() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    let h = harness_in(dir, 1, Duration::from_millis(0)).await;
    let picture = |shade: u8| {
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            64,
            64,
            image::Rgb([shade, 0, 0]),
        ))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
        base64::engine::general_purpose::STANDARD.encode(png)
    };
    let edit = |shade| SpecRequest {
        init_image: Some(picture(shade)),
        ..request("an edit")
    };
    h.service.submit(edit(10)).await.unwrap();
    let refused = h.service.submit(edit(200)).await.unwrap_err();
    assert!(
        matches!(refused, JobsError::QueueFull { .. }),
        "{refused:?}"
    );
    let count = || std::fs::read_dir(&inputs).unwrap().count();
    assert_eq!(
        count(),
        2,
        "both pictures were kept before the queue said no"
    );
    let report = h.service.reconcile_files().await.unwrap();
    assert_eq!(report.orphan_inputs_removed, 1);
    assert_eq!(count(), 1, "the queued job's input stays");
    assert_eq!(
        h.service
            .reconcile_files()
            .await
            .unwrap()
            .orphan_inputs_removed,
        0
    );
}
