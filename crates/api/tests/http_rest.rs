//! The REST API over real HTTP: errors, limits, images, gallery, cancel,
//! event streams and API keys.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cyberimage_api::ApiConfig;
use cyberimage_core::{Catalogue, ModelFamily};
use cyberimage_db::{Database, SqliteDb};
use cyberimage_jobs::{JobService, JobsConfig};
use cyberimage_store::ImageStore;
use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_are_json_with_the_right_status() {
    let s = start(1, None).await;
    assert_error(
        s.post("/api/generate", json!({"prompt": ""})).await,
        400,
        "invalid_parameter",
    )
    .await;
    assert_error(
        s.post("/api/generate", json!({"prompt": "x", "model": "zzz"}))
            .await,
        400,
        "unknown_model",
    )
    .await;
    let bad_json = s
        .http
        .post(format!("{}/api/generate", s.base))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_error(bad_json, 400, "invalid_json").await;
    let (status, body) = post_huge_body(&s.base, "/api/generate").await;
    assert_eq!(status, 413, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "body_too_large");

    // Queue bound of 1 and no worker: the second job is refused with 429.
    let ok = s
        .post("/api/generate", json!({"prompt": "first", "model": "tiny"}))
        .await;
    assert_eq!(ok.status(), 202);
    let first: Value = ok.json().await.unwrap();
    let full = s
        .post(
            "/api/generate",
            json!({"prompt": "second", "model": "tiny"}),
        )
        .await;
    let retry: u64 = full.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_error(full, 429, "queue_full").await;
    let rpc = s
        .rpc(rpc_call(
            "context.image_generation.generate",
            json!({"prompt": "third"}),
        ))
        .await;
    assert_eq!(rpc["error"]["code"], -32002);

    let id = first["job_id"].as_str().unwrap();
    let cancelled: Value = s
        .post(&format!("/api/cancel/{id}"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_error(
        s.post(&format!("/api/cancel/{id}"), json!({})).await,
        409,
        "job_finished",
    )
    .await;
    assert_error(
        s.get("/api/status/0c907066-985e-467b-8d11-07419060ef91")
            .await,
        404,
        "job_not_found",
    )
    .await;
    assert_error(s.get("/api/status/nonsense").await, 404, "job_not_found").await;
    assert_error(s.get("/api/nope").await, 404, "not_found").await;
    assert_error(s.get("/api/gallery?page=0").await, 400, "invalid_request").await;
    assert_error(
        s.get("/api/gallery?per_page=1000").await,
        400,
        "invalid_request",
    )
    .await;
}

/// What CyberImage's own REST clients and A1111 users send: the model as
/// `model_id`, and `seed: -1` for a random seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_id_and_seed_minus_one_are_understood() {
    let s = start(10, Some(Duration::from_millis(1))).await;
    let submitted = s
        .post(
            "/api/generate",
            json!({"prompt": "a fox", "model_id": "flux-1", "settings": {"seed": -1}}),
        )
        .await;
    assert_eq!(submitted.status(), 202);
    let job: Value = submitted.json().await.unwrap();
    let done = s
        .wait_status(job["job_id"].as_str().unwrap(), &["completed"])
        .await;
    assert_eq!(done["model"], "flux-1", "{done}");
    // CyberImage's REST status fields beside the seed's.
    assert_eq!(done["model_id"], "flux-1");
    assert_eq!(done["id"], job["job_id"]);
    assert_eq!(done["message"], "Generated 1 image");
    assert_eq!(done["settings"]["num_images"], 1);
    assert_eq!(
        done["settings"]["seed"],
        done["images"][0]["metadata"]["settings"]["seed"]
    );
    // And its image routes, the same records as ours.
    let image = done["images"][0]["id"].as_str().unwrap();
    let ours: Value = s
        .get(&format!("/api/images/{image}"))
        .await
        .json()
        .await
        .unwrap();
    for path in [
        format!("/api/image/{image}"),
        format!("/api/image/{image}/metadata"),
    ] {
        let theirs: Value = s.get(&path).await.json().await.unwrap();
        assert_eq!(theirs, ours, "{path}");
    }
    let deleted = s
        .http
        .delete(format!("{}/api/image/{image}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_error(
        s.get(&format!("/api/images/{image}")).await,
        404,
        "image_not_found",
    )
    .await;
    let seed = done["images"][0]["metadata"]["settings"]["seed"]
        .as_u64()
        .unwrap_or_else(|| panic!("a seed was chosen: {done}"));
    assert!(seed < 1 << 53);
    let clash = s
        .post(
            "/api/generate",
            json!({"prompt": "a fox", "model": "tiny", "model_id": "flux-1"}),
        )
        .await;
    assert_error(clash, 400, "invalid_request").await;
    let unknown = s
        .post(
            "/api/generate",
            json!({"prompt": "a fox", "settings": {"num_inference_step": 4}}),
        )
        .await;
    let message = assert_error(unknown, 400, "invalid_request").await;
    assert!(message.contains("settings.num_inference_step"), "{message}");
    let below = s
        .post(
            "/api/generate",
            json!({"prompt": "a fox", "settings": {"seed": -2}}),
        )
        .await;
    assert_error(below, 400, "invalid_parameter").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_ids_that_could_escape_are_404_without_touching_disk() {
    let s = start(10, None).await;
    for raw in [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "img_..%2F..%2Fcyberimage.db",
        "img_0123456789abcdef0123456789abcdef.png",
        "img_0123456789abcdef0123456789abcdef",
        "cyberimage.db",
    ] {
        assert_error(
            s.get(&format!("/api/get_image/{raw}")).await,
            404,
            "image_not_found",
        )
        .await;
        assert_error(
            s.get(&format!("/api/images/{raw}/thumbnail")).await,
            404,
            "image_not_found",
        )
        .await;
    }
    let del = s
        .http
        .delete(format!("{}/api/images/..%2Fcyberimage.db", s.base))
        .send()
        .await
        .unwrap();
    assert_error(del, 404, "image_not_found").await;
    assert_eq!(s.get("/health").await.status(), 200, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gallery_pages_searches_filters_and_deletes() {
    let s = start(50, Some(Duration::ZERO)).await;
    let mut last = String::new();
    for (i, prompt) in ["Neon alley", "quiet forest", "neon skyline", "desert"]
        .iter()
        .enumerate()
    {
        let model = if i % 2 == 0 { "tiny" } else { "flux-1" };
        let r: Value = s
            .post(
                "/api/generate",
                json!({"prompt": prompt, "model": model, "width": 64, "height": 64}),
            )
            .await
            .json()
            .await
            .unwrap();
        last = r["job_id"].as_str().unwrap().to_owned();
        s.wait_status(&last, &["completed"]).await;
    }
    let _ = last;
    let page: Value = s
        .get("/api/gallery?page=1&per_page=3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (page["total"].clone(), page["total_pages"].clone()),
        (json!(4), json!(2))
    );
    let prompts: Vec<_> = page["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["prompt"].clone())
        .collect();
    assert_eq!(
        prompts,
        vec![
            json!("desert"),
            json!("neon skyline"),
            json!("quiet forest")
        ],
        "newest first"
    );
    let page2: Value = s
        .get("/api/gallery?page=2&per_page=3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page2["images"][0]["metadata"]["prompt"], "Neon alley");
    assert_eq!(
        (page["has_more"].clone(), page2["has_more"].clone()),
        (json!(true), json!(false))
    );

    // CyberImage's names: `limit` for per_page, `search` as words that must
    // all appear in the prompt or the model.
    let limited: Value = s.get("/api/gallery?limit=1").await.json().await.unwrap();
    assert_eq!(
        (
            limited["per_page"].clone(),
            limited["images"].as_array().unwrap().len()
        ),
        (json!(1), 1)
    );
    let words: Value = s
        .get("/api/gallery?search=tiny%20NEON")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(words["total"], 2, "{words}");
    let all_words: Value = s
        .get("/api/gallery?search=neon%20forest")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all_words["total"], 0);
    assert_error(
        s.get("/api/gallery?limit=2&per_page=2").await,
        400,
        "invalid_request",
    )
    .await;

    let neon: Value = s.get("/api/gallery?q=NEON").await.json().await.unwrap();
    assert_eq!(neon["total"], 2);
    let tiny: Value = s
        .get("/api/gallery?model=tiny&q=neon")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tiny["total"], 2);
    let flux: Value = s
        .get("/api/gallery?model=flux-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(flux["total"], 2);

    let id = neon["images"][0]["id"].as_str().unwrap().to_owned();
    let del = s
        .http
        .delete(format!("{}/api/images/{id}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert_error(
        s.get(&format!("/api/get_image/{id}")).await,
        404,
        "image_not_found",
    )
    .await;
    let after: Value = s.get("/api/gallery?q=neon").await.json().await.unwrap();
    assert_eq!(after["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_running_job_over_rest_and_see_the_queue() {
    let s = start(10, Some(Duration::from_millis(30))).await;
    let r: Value = s
        .post(
            "/api/generate",
            json!({"prompt": "slow", "model": "tiny", "steps": 150}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = r["job_id"].as_str().unwrap().to_owned();
    s.wait_status(&id, &["processing"]).await;
    let queue: Value = s.get("/api/queue").await.json().await.unwrap();
    assert_eq!(queue["processing"], 1);
    assert_eq!(queue["jobs"][0]["job_id"], id.as_str());
    assert_eq!(queue["jobs"][0]["settings"]["steps"], 150);
    let c: Value = s
        .post(&format!("/api/cancel/{id}"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["status"], "cancelled");
    let end = s.wait_status(&id, &["cancelled"]).await;
    assert!(end.get("images").is_none());
    assert_eq!(end["error"], "cancelled by request");
    // CyberImage's totals, and its reset (nothing is stalled here: the
    // only job has finished, so nothing is taken from a live worker).
    let queue: Value = s.get("/api/queue").await.json().await.unwrap();
    assert_eq!(
        (
            queue["cancelled"].clone(),
            queue["total"].clone(),
            queue["queue_size"].clone()
        ),
        (json!(1), json!(1), json!(0)),
        "{queue}"
    );
    assert!(queue.get("recent_24h").is_none(), "details only when asked");
    let detailed: Value = s
        .get("/api/queue?detailed=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detailed["recent_24h"]["cancelled"], 1, "{detailed}");
    assert_eq!(detailed["recent_24h"]["total"], 1);
    assert_eq!(detailed["models"]["tiny"]["cancelled"], 1);
    assert_eq!(
        detailed["avg_processing_time_seconds"], 0.0,
        "none completed"
    );
    assert_eq!(
        detailed["failure_rate"], 0.0,
        "none finished as completed or failed"
    );
    let reset: Value = s
        .post("/api/reset_queue", json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (reset["requeued"].clone(), reset["failed"].clone()),
        (json!(0), json!(0))
    );
    let models: Value = s.get("/api/models").await.json().await.unwrap();
    assert_eq!(models["models"]["tiny"]["family"], "sd15");
    assert_eq!(models["models"]["tiny"]["defaults"]["steps"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_stream_progress_until_the_job_finishes() {
    let s = start(10, Some(Duration::from_millis(20))).await;
    let r: Value = s
        .post(
            "/api/generate",
            json!({"prompt": "streamed", "model": "tiny", "steps": 10}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = r["job_id"].as_str().unwrap();
    let resp = s.get(&format!("/api/events?job_id={id}")).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The stream ends by itself after the job's final event.
    let text = tokio::time::timeout(Duration::from_secs(60), resp.text())
        .await
        .expect("stream closes when the job is done")
        .unwrap();
    let all: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // `preview` events (live pictures) come between the `job` events.
    let (previews, events): (Vec<Value>, Vec<Value>) = all
        .into_iter()
        .partition(|e| e.get("preview_url").is_some());
    assert!(!previews.is_empty(), "previews are announced: {text}");
    assert!(events.len() >= 3, "{text}");
    assert!(events.iter().all(|e| e["job_id"] == id));
    let steps: Vec<u64> = events
        .iter()
        .map(|e| e["progress"]["step"].as_u64().unwrap())
        .collect();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    assert!(
        steps.iter().any(|&s| s > 0 && s < 10),
        "intermediate steps arrive: {steps:?}"
    );
    assert_eq!(events.last().unwrap()["status"], "completed");

    // A finished job's stream is its final state alone.
    let again = s
        .get(&format!("/api/events?job_id={id}"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(again.lines().filter(|l| l.starts_with("data: ")).count(), 1);
    assert_error(s.get("/api/events?job_id=nope").await, 404, "job_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_route_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("k.db")).await.unwrap();
    let service = JobService::new(
        Arc::new(db) as Arc<dyn Database>,
        ImageStore::open(dir.path()).unwrap(),
        Arc::new(Catalogue::new(vec![model("tiny", ModelFamily::Sd15)]).unwrap()),
        JobsConfig::default(),
    );
    let keys = cyberimage_api::ApiKeys::from_hex_digests(
        &[cyberimage_api::digest_hex("correct horse")],
        true,
    )
    .unwrap();
    let config = ApiConfig {
        api_keys: keys,
        ..ApiConfig::default()
    };
    let base = serve_on_port_0(service, &config).await;
    let http = reqwest::Client::new();

    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness stays open");
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert!(
        health.get("queue").is_none(),
        "no counts without the key: {health}"
    );
    let keyed: Value = http
        .get(format!("{base}/health"))
        .bearer_auth("correct horse")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keyed["queue"]["pending"], 0,
        "a key holder gets the counts: {keyed}"
    );
    for path in [
        "/api/models",
        "/api/queue",
        "/api/gallery",
        "/api/get_image/img_0123456789abcdef0123456789abcdef",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_error(r, 401, "unauthorized").await;
        let wrong = http
            .get(format!("{base}{path}"))
            .bearer_auth("correct horse!")
            .send()
            .await
            .unwrap();
        assert_error(wrong, 401, "unauthorized").await;
    }
    let rpc = http
        .post(format!("{base}/api/mcp"))
        .json(&json!({"jsonrpc": "2.0", "method": "context.image_generation.models", "id": 1}))
        .send()
        .await
        .unwrap();
    assert_error(rpc, 401, "unauthorized").await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    for path in ["/mcp", "/api/mcp"] {
        let r = http
            .post(format!("{base}{path}"))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize)
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "unauthorized").await;
        let ok = http
            .post(format!("{base}{path}"))
            .header("accept", "application/json, text/event-stream")
            .header("x-api-key", "correct horse")
            .json(&initialize)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "standard MCP at {path} with the key");
        assert!(ok.headers().contains_key("mcp-session-id"));
    }

    let bearer = http
        .get(format!("{base}/api/models"))
        .bearer_auth("correct horse")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let header_key = http
        .post(format!("{base}/api/mcp"))
        .header("x-api-key", "correct horse")
        .json(&json!({"jsonrpc": "2.0", "method": "context.image_generation.models", "id": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(header_key.status(), 200);
    let v: Value = header_key.json().await.unwrap();
    assert_eq!(v["result"]["default"], "tiny");
}
