//! Operations surface over a real server: readiness, Prometheus metrics,
//! request ids, and the Origin policy on state-changing routes.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn ready_and_metrics_reflect_real_work() {
    let s = start(10, Some(Duration::from_millis(2))).await;
    let r = s.get("/ready").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["workers"], json!({"spawned": 1, "alive": 1}));
    assert_eq!(v["database"], "ok");

    let job: Value = s
        .post(
            "/api/generate",
            json!({"prompt": "p", "model": "tiny", "steps": 3}),
        )
        .await
        .json()
        .await
        .unwrap();
    s.wait_status(job["job_id"].as_str().unwrap(), &["completed"])
        .await;
    assert_eq!(s.get("/api/status/not-an-id").await.status(), 404);

    let r = s.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    for needle in [
        "cyberimage_queue_jobs{state=\"pending\"} 0",
        "cyberimage_database_up 1",
        "cyberimage_jobs_finished_total{model=\"tiny\",outcome=\"completed\"} 1",
        "cyberimage_generation_seconds_count{model=\"tiny\"} 1",
        // 3 steps: two step-to-step intervals.
        "cyberimage_step_seconds_count{model=\"tiny\"} 2",
        "cyberimage_workers{state=\"alive\"} 1",
        "cyberimage_http_requests_total{method=\"POST\",route=\"/api/generate\",status=\"202\"} 1",
        "cyberimage_http_requests_total{method=\"GET\",route=\"/api/status/{job_id}\",status=\"404\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let s = start(10, None).await;
    let r = s
        .http
        .get(format!("{}/health", s.base))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    let r = s.get("/health").await;
    let made = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 36, "a UUID: {made}");
    // Without keys configured, CyberImage's health fields are all there.
    let health: Value = r.json().await.unwrap();
    assert_eq!(
        (
            health["status"].clone(),
            health["queue"]["queue_size"].clone()
        ),
        (json!("healthy"), json!(0)),
        "{health}"
    );
    assert!(health["device"].is_string(), "{health}");
}

#[tokio::test]
async fn cross_site_writes_are_refused_and_reads_are_not() {
    let s = start(10, None).await;
    // A cross-site form can post text/plain without a CORS preflight.
    let r = s
        .http
        .post(format!("{}/api/generate", s.base))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"prompt":"x","model":"tiny"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "origin_not_allowed");
    let queue: Value = s.get("/api/queue").await.json().await.unwrap();
    assert_eq!(queue["pending"], 0, "nothing was queued: {queue}");
    // Reads of public data and same-machine pages are fine.
    let r = s
        .http
        .get(format!("{}/api/models", s.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .http
        .post(format!("{}/api/generate", s.base))
        .header("origin", "http://localhost:5173")
        .json(&json!({"prompt": "x", "model": "tiny"}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 202, "{}", r.text().await.unwrap());
}

async fn start_with(config: cyberimage_api::ApiConfig) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path(), 10, None).await;
    (serve_on_port_0(service, &config).await, dir)
}

#[tokio::test]
async fn clients_over_their_rate_get_429_with_retry_after() {
    let (base, _dir) = start_with(cyberimage_api::ApiConfig {
        rate_limit: cyberimage_api::RateLimitConfig {
            per_minute: 60,
            burst: 5,
            // The test client is on loopback, which is exempt by default.
            exempt_loopback: false,
        },
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = http.get(format!("{base}/api/models")).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(
                r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
}

#[tokio::test]
async fn a_client_that_stalls_its_body_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (base, _dir) = start_with(cyberimage_api::ApiConfig {
        request_body_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    conn.write_all(
        b"POST /api/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"prompt\":",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the server answers instead of waiting forever")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}
