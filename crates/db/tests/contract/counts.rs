//! The contract's counting part: jobs listed by state, counted by status
//! and by model over a window, and the input digests jobs name.

use super::*;

pub async fn list_jobs_by_state(db: &dyn Database) {
    let a = insert(db, "a", "m").await;
    let b = insert(db, "b", "m").await;
    db.claim_next("w", None, None).await.unwrap();
    let f = insert(db, "f", "m").await;
    db.fail_job(f.id, "boom").await.unwrap();
    let active = db
        .list_jobs(&[JobStatus::Pending, JobStatus::Processing], 10)
        .await
        .unwrap();
    assert_eq!(
        active.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a.id, b.id]
    );
    let failed = db.list_jobs(&[JobStatus::Failed], 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_deref(), Some("boom"));
}

pub async fn queue_stats_count_recent_jobs_by_model(db: &dyn Database) {
    let start = now();
    complete(db, "done", "m2").await;
    complete(db, "done too", "m1").await;
    let failed = insert(db, "failed", "m1").await;
    db.fail_job(failed.id, "boom").await.unwrap();
    insert(db, "waiting", "m2").await;
    let mut old = new_job("yesterday", "m1");
    old.created_at = start - chrono::Duration::hours(30);
    db.insert_job(&old, 1000).await.unwrap();
    let stats = db
        .queue_stats(start - chrono::Duration::hours(24))
        .await
        .unwrap();
    let m1 = StatusCounts {
        completed: 1,
        failed: 1,
        ..Default::default()
    };
    let m2 = StatusCounts {
        completed: 1,
        pending: 1,
        ..Default::default()
    };
    assert_eq!(
        stats.per_model,
        vec![("m1".to_string(), m1), ("m2".to_string(), m2)],
        "the 30-hour-old job is outside the window"
    );
    assert_eq!(stats.all_models().total(), 4);
    let mean = stats.mean_run_ms.expect("two jobs completed");
    assert!((0.0..60_000.0).contains(&mean), "{mean}");
    let later = db
        .queue_stats(now() + chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(later, QueueStats::default());
}

pub async fn referenced_inputs_are_the_specs_digests(db: &dyn Database) {
    assert!(db.referenced_inputs().await.unwrap().is_empty());
    insert(db, "plain", "m").await;
    let mut edit = new_job("an edit", "m");
    edit.spec.init_image = Some(cyberimage_core::InitImage {
        sha256: "a".repeat(64),
        strength: 0.5,
        mask_sha256: Some("b".repeat(64)),
        mask_blur: 0,
        keep_unmasked: false,
    });
    db.insert_job(&edit, 1000).await.unwrap();
    let mut again = new_job("the same input", "m");
    again.spec.init_image = Some(cyberimage_core::InitImage {
        sha256: "a".repeat(64),
        strength: 0.9,
        mask_sha256: None,
        mask_blur: 0,
        keep_unmasked: false,
    });
    db.insert_job(&again, 1000).await.unwrap();
    assert_eq!(
        db.referenced_inputs().await.unwrap(),
        vec!["a".repeat(64), "b".repeat(64)]
    );
}

pub async fn status_counts_count_every_job(db: &dyn Database) {
    assert_eq!(db.status_counts().await.unwrap(), StatusCounts::default());
    complete(db, "done", "m").await;
    let running = insert(db, "running", "m").await;
    let claimed = db.claim_next("w", None, None).await.unwrap().unwrap();
    assert_eq!(claimed.id, running.id);
    let failed = insert(db, "failed", "m").await;
    db.fail_job(failed.id, "boom").await.unwrap();
    let cancelled = insert(db, "cancelled", "m").await;
    db.cancel_job(cancelled.id, "x").await.unwrap();
    insert(db, "waiting", "m").await;
    let counts = db.status_counts().await.unwrap();
    let one_each = StatusCounts {
        pending: 1,
        processing: 1,
        completed: 1,
        failed: 1,
        cancelled: 1,
    };
    assert_eq!(counts, one_each);
    assert_eq!(counts.total(), 5);
}
