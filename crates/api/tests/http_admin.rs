//! Queue administration over REST on a real server and SQLite file: retry
//! (with the attempt budget and `force`), delete, clear, job details, the
//! CyberImage app's `/admin/…` form actions, and API-key scopes (a `read`
//! key cannot clear the queue). The engine is the testkit's scripted
//! double, told to fail the prompt "explode".

mod support;

use std::sync::Arc;
use std::time::Duration;

use cyberimage_api::{digest_hex, ApiConfig, ApiKeys, Scope};
use cyberimage_core::{Catalogue, ModelFamily};
use cyberimage_db::{Database, SqliteDb};
use cyberimage_jobs::{JobService, JobsConfig};
use cyberimage_store::ImageStore;
use cyberimage_testkit::ScriptedGenerator;
use serde_json::{json, Value};
use support::*;

async fn start_admin(keys: ApiKeys) -> (Server, Arc<JobService>) {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("admin.db")).await.unwrap();
    let service = JobService::new(
        Arc::new(db) as Arc<dyn Database>,
        ImageStore::open(dir.path()).unwrap(),
        Arc::new(Catalogue::new(vec![model("tiny", ModelFamily::Sd15)]).unwrap()),
        JobsConfig {
            max_attempts: 2,
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let mut engine = ScriptedGenerator::new(Duration::from_millis(1));
    engine.panic_on_prompt = Some("explode".into());
    service.spawn_worker(Arc::new(engine), "w").unwrap();
    let config = ApiConfig {
        api_keys: keys,
        ..ApiConfig::default()
    };
    let base = serve_on_port_0(service.clone(), &config).await;
    (Server::new(base, dir), service)
}

async fn submit(s: &Server, prompt: &str) -> String {
    let v: Value = s
        .post(
            "/api/generate",
            json!({"prompt": prompt, "model": "tiny", "steps": 2}),
        )
        .await
        .json()
        .await
        .unwrap();
    v["job_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_retried_within_their_budget_or_by_force() {
    let (s, _) = start_admin(ApiKeys::default()).await;
    let bad = submit(&s, "explode").await;
    s.wait_status(&bad, &["failed"]).await;
    let good = submit(&s, "a calm lake").await;
    s.wait_status(&good, &["completed"]).await;

    let listed: Value = s.get("/api/jobs?status=failed").await.json().await.unwrap();
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bad.as_str()]);

    // One attempt used of two: a plain retry runs it again (and it fails again).
    let r = s.post(&format!("/api/jobs/{bad}/retry"), json!({})).await;
    assert_eq!(r.status(), 200);
    let again = s.wait_status(&bad, &["failed"]).await;
    assert!(again["error"].is_string(), "{again}");
    let details: Value = s
        .get(&format!("/api/jobs/{bad}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(details["job"]["attempts"], 2);
    let message = assert_error(
        s.post(&format!("/api/jobs/{bad}/retry"), json!({})).await,
        409,
        "attempts_exhausted",
    )
    .await;
    assert!(message.contains("force"), "{message}");
    let r = s
        .post(&format!("/api/jobs/{bad}/retry"), json!({"force": true}))
        .await;
    assert_eq!(r.status(), 200, "force ignores the budget");
    s.wait_status(&bad, &["failed"]).await;

    assert_error(
        s.post(&format!("/api/jobs/{good}/retry"), json!({})).await,
        409,
        "job_not_failed",
    )
    .await;
    assert_error(
        s.post(
            &format!("/api/jobs/{good}/retry"),
            json!({"force": "maybe"}),
        )
        .await,
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        s.post(
            "/api/jobs/00000000-0000-4000-8000-000000000000/retry",
            json!({}),
        )
        .await,
        404,
        "job_not_found",
    )
    .await;

    // Retry all: the one failed job, by force.
    let report: Value = s
        .post("/api/queue/retry_failed", json!({"force": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["retried"], 1, "{report}");
    s.wait_status(&bad, &["failed"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_deleted_and_cleared_but_gallery_jobs_kept() {
    let (s, _) = start_admin(ApiKeys::default()).await;
    let good = submit(&s, "a calm lake").await;
    let done = s.wait_status(&good, &["completed"]).await;
    let image = done["images"][0]["id"].as_str().unwrap().to_owned();
    let bad = submit(&s, "explode").await;
    s.wait_status(&bad, &["failed"]).await;

    let details: Value = s
        .get(&format!("/api/jobs/{good}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        details["images"][0]["id"],
        image.as_str(),
        "details list the images"
    );

    let message = assert_error(
        s.http
            .delete(format!("{}/api/jobs/{good}", s.base))
            .send()
            .await
            .unwrap(),
        409,
        "job_has_images",
    )
    .await;
    assert!(message.contains("images=true"), "{message}");
    let cleared: Value = s
        .post("/api/queue/clear", json!({"status": "all"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared, json!({"deleted": 1, "kept_with_images": 1}));
    assert_error(
        s.get(&format!("/api/status/{bad}")).await,
        404,
        "job_not_found",
    )
    .await;
    assert_eq!(s.get(&format!("/api/image/{image}")).await.status(), 200);

    let r = s
        .http
        .delete(format!("{}/api/jobs/{good}?images=true", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["images_deleted"], 1);
    assert_eq!(s.get(&format!("/api/image/{image}")).await.status(), 404);
    assert_eq!(
        s.get(&format!("/api/get_image/{image}")).await.status(),
        404,
        "the file went with the record"
    );

    assert_error(
        s.post("/api/queue/clear", json!({"status": "everything"}))
            .await,
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        s.post("/api/queue/clear", json!({})).await,
        400,
        "invalid_request",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_admin_form_actions_work() {
    let (s, _) = start_admin(ApiKeys::default()).await;
    let bad = submit(&s, "explode").await;
    s.wait_status(&bad, &["failed"]).await;
    let form = |path: &str, body: String| {
        s.http
            .post(format!("{}{path}", s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let r: Value = form("/admin/queue/retry", format!("job_id={bad}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["success"], true, "{r}");
    s.wait_status(&bad, &["failed"]).await;
    let job: Value = s
        .get(&format!("/admin/job/{bad}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["job"]["status"], "failed");
    assert!(job["images"].as_array().unwrap().is_empty());
    let r: Value = form("/admin/queue/force-retry-all", String::new())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["details"]["total_retried"], 1, "{r}");
    s.wait_status(&bad, &["failed"]).await;
    let r: Value = form("/admin/queue/clear", "status=failed".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (r["success"].clone(), r["deleted"].clone()),
        (json!(true), json!(1))
    );
    let r = form("/admin/queue/retry", String::new()).await.unwrap();
    assert_error(r, 400, "invalid_request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_do_only_what_their_scopes_allow() {
    let keys = ApiKeys::from_scoped_digests(
        &[
            (digest_hex("reader"), vec![Scope::Read]),
            (digest_hex("maker"), vec![Scope::Read, Scope::Generate]),
            (digest_hex("boss"), vec![Scope::Admin, Scope::Read]),
        ],
        true,
    )
    .unwrap();
    let (s, _) = start_admin(keys).await;
    let with =
        |key: &'static str, req: reqwest::RequestBuilder| req.header("x-api-key", key).send();
    let clear = || {
        s.http
            .post(format!("{}/api/queue/clear", s.base))
            .json(&json!({"status": "failed"}))
    };
    let generate = || {
        s.http
            .post(format!("{}/api/generate", s.base))
            .json(&json!({"prompt": "p", "model": "tiny"}))
    };
    let queue = || s.http.get(format!("{}/api/queue", s.base));

    assert_eq!(with("reader", queue()).await.unwrap().status(), 200);
    let message = assert_error(with("reader", generate()).await.unwrap(), 403, "forbidden").await;
    assert!(message.contains("generate"), "{message}");
    let message = assert_error(with("reader", clear()).await.unwrap(), 403, "forbidden").await;
    assert!(message.contains("admin"), "{message}");
    assert_eq!(with("maker", generate()).await.unwrap().status(), 202);
    assert_error(with("maker", clear()).await.unwrap(), 403, "forbidden").await;
    assert_eq!(with("boss", clear()).await.unwrap().status(), 200);
    assert_error(with("boss", generate()).await.unwrap(), 403, "forbidden").await;
    assert_error(clear().send().await.unwrap(), 401, "unauthorized").await;
    assert_error(with("nobody", clear()).await.unwrap(), 401, "unauthorized").await;
}

/// The MCP tools get the same rule: a key without `admin` cannot clear
/// the queue through MCP either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_admin_tools_need_the_admin_scope() {
    let keys = ApiKeys::from_scoped_digests(
        &[
            (digest_hex("reader"), vec![Scope::Read]),
            (digest_hex("maker"), vec![Scope::Read, Scope::Generate]),
            (digest_hex("operator"), vec![]),
        ],
        true,
    )
    .unwrap();
    let (s, _) = start_admin(keys).await;
    let call = |key: &'static str, tool: &str, args: Value| {
        let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                          "io.modelcontextprotocol/clientCapabilities": {}});
        s.http
            .post(format!("{}/mcp", s.base))
            .header("x-api-key", key)
            // JSON, not an event stream: one answer to read.
            .header("accept", "application/json")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", tool)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": args, "_meta": meta}}))
            .send()
    };
    let r = call("reader", "clear_queue", json!({"status": "failed"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a read key cannot use MCP's write methods");
    let v: Value = call("maker", "clear_queue", json!({"status": "failed"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(v["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("admin"));
    let v: Value = call("operator", "clear_queue", json!({"status": "failed"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["result"]["isError"], false, "{v}");
    assert_eq!(v["result"]["structuredContent"]["deleted"], 0);
    let v: Value = call("maker", "queue_stats", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["result"]["isError"], false,
        "statistics are not admin-only: {v}"
    );
    assert!(v["result"]["structuredContent"]["recent_24h"].is_object());
}
