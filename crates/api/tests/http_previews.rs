//! Live previews over HTTP: while a job runs, its status has a
//! `preview_url`, the URL serves the latest preview PNG, and the event
//! stream announces each one; once the job is done the preview is gone.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_are_served_and_announced_while_a_job_runs() {
    let s = start(10, Some(Duration::from_millis(40))).await;
    let r: Value = s
        .post(
            "/api/generate",
            json!({"model": "tiny", "prompt": "slowly", "steps": 30}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = r["job_id"].as_str().unwrap().to_owned();
    let events = s
        .http
        .get(format!("{}/api/events?job_id={id}", s.base))
        .send()
        .await
        .unwrap();
    let mut stream = events.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: preview") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("a preview event within 20 s")
            .expect("the stream stays open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains(&format!("/api/preview/{id}?step=")), "{seen}");
    let status: Value = s
        .get(&format!("/api/status/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let url = status["preview_url"]
        .as_str()
        .expect("a preview_url while running")
        .to_owned();
    let png = s.get(&url).await;
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert!(png.headers().contains_key("x-preview-step"));
    let bytes = png.bytes().await.unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");

    let done = s.wait_status(&id, &["completed"]).await;
    assert!(
        done.get("preview_url").is_none(),
        "no preview once finished: {done}"
    );
    // A page told of the last preview by an event may fetch it after the
    // job ended: it is still there (for 30 s), not a 404.
    let late = s.get(&url).await;
    assert_eq!(
        late.status(),
        200,
        "the last preview outlives its job briefly"
    );
    assert_eq!(&late.bytes().await.unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    assert_error(s.get("/api/preview/not-a-job").await, 404, "job_not_found").await;
    let never: Value = s
        .post(
            "/api/generate",
            json!({"prompt": "p", "model": "tiny", "steps": 1}),
        )
        .await
        .json()
        .await
        .unwrap();
    let never = never["job_id"].as_str().unwrap();
    s.wait_status(never, &["completed"]).await;
    assert_error(
        s.get(&format!("/api/preview/{never}")).await,
        404,
        "not_found",
    )
    .await;
}
