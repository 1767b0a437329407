//! The HTTP surface against a real server on port 0, a real SQLite file and
//! image folder. The engine is the testkit's `ScriptedGenerator` double.

use std::sync::Arc;
use std::time::Duration;

use cyberimage_api::{router, ApiConfig};
use cyberimage_core::{Catalogue, ModelDefaults, ModelEntry, ModelFamily};
use cyberimage_db::{Database, SqliteDb};
use cyberimage_jobs::{JobService, JobsConfig};
use cyberimage_store::ImageStore;
use cyberimage_testkit::ScriptedGenerator;
use serde_json::{json, Value};

struct Server {
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn model(key: &str, family: ModelFamily) -> ModelEntry {
    ModelEntry {
        key: key.into(),
        source: format!("test/{key}"),
        family,
        description: format!("{key} test model"),
        defaults: ModelDefaults {
            steps: 4,
            guidance_scale: 7.5,
            width: 64,
            height: 64,
        },
    }
}

async fn start(max_queue: u32, step_delay: Option<Duration>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("cyberimage.db"))
        .await
        .unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let catalogue = Catalogue::new(vec![
        model("tiny", ModelFamily::Sd15),
        model("flux-1", ModelFamily::FluxDev),
    ])
    .unwrap();
    let config = JobsConfig {
        max_queue,
        poll_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let service = JobService::new(
        Arc::new(db) as Arc<dyn Database>,
        store,
        Arc::new(catalogue),
        config,
    );
    if let Some(delay) = step_delay {
        service
            .spawn_worker(Arc::new(ScriptedGenerator::new(delay)), "w")
            .unwrap();
    }
    let app = router(service, &ApiConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cyberimage_api::serve(listener, app, std::future::pending()));
    Server {
        base,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Server {
    async fn rpc(&self, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/api/mcp", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn rpc_raw(&self, body: &'static str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/mcp", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn wait_status(&self, job_id: &str, want: &[&str]) -> Value {
        for _ in 0..1000 {
            let v: Value = self
                .get(&format!("/api/status/{job_id}"))
                .await
                .json()
                .await
                .unwrap();
            if want.contains(&v["status"].as_str().unwrap()) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {job_id} never reached {want:?}");
    }
}

/// POSTs a 2 MiB body on a raw connection, writing and reading at the same
/// time: the server answers once the limit is passed and may close the
/// socket while the body is still being written, which an ordinary client
/// reports as a broken pipe instead of the response.
async fn post_huge_body(base: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").to_owned();
    let conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let size = 2 * 1024 * 1024;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        // Errors here are expected once the server has answered.
        let _ = wr.write_all(&vec![b' '; size]).await;
    });
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut raw)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.1 "), "no response: {text:?}");
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn rpc_call(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": "request-123"})
}

/// Asserts the error shape every REST error must have.
async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status(), status);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "errors are JSON"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    message
}

fn is_rfc3339_utc(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_models_method_has_the_seed_shape() {
    let s = start(10, None).await;
    let v = s.rpc(json!({"jsonrpc": "2.0", "method": "context.image_generation.models", "id": "request-123"})).await;
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], "request-123");
    let result = &v["result"];
    assert_eq!(
        result["default"], "flux-1",
        "flux-1 is preferred even when not first"
    );
    let models = result["models"].as_object().unwrap();
    assert_eq!(models.keys().collect::<Vec<_>>(), vec!["tiny", "flux-1"]);
    assert_eq!(
        models["tiny"],
        json!({"id": "test/tiny", "description": "tiny test model"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_generate_and_status_follow_the_contract_field_by_field() {
    let s = start(10, Some(Duration::from_millis(5))).await;
    let v = s
        .rpc(rpc_call(
            "context.image_generation.generate",
            json!({
                "prompt": "A detailed description of the image you want to generate",
                "negative_prompt": "What to exclude from the image (optional)",
                "model": "tiny",
                "settings": {"num_images": 1, "num_inference_steps": 30, "guidance_scale": 7.5, "height": 128, "width": 64}
            }),
        ))
        .await;
    assert_eq!(v["id"], "request-123");
    let result = v["result"].as_object().unwrap();
    assert_eq!(result.len(), 3, "{result:?}");
    let job_id = result["job_id"].as_str().unwrap().to_owned();
    assert!(cyberimage_core::JobId::parse(&job_id).is_ok());
    assert_eq!(result["status"], "pending");
    assert_eq!(result["num_images"], 1);

    // While it runs, the status has the seed's processing shape.
    let running = loop {
        let v = s
            .rpc(rpc_call(
                "context.image_generation.status",
                json!({"job_id": job_id}),
            ))
            .await;
        let r = v["result"].clone();
        if r["status"] == "processing" && r["progress"]["generating"] == true {
            break r;
        }
        assert_ne!(r["status"], "completed", "caught no processing state");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(running["completed_at"], Value::Null);
    assert!(is_rfc3339_utc(&running["started_at"]));
    assert_eq!(running["progress"]["total_steps"], 30);
    assert!(running.get("images").is_none());

    let mut done = running;
    for _ in 0..1000 {
        let v = s
            .rpc(rpc_call(
                "context.image_generation.status",
                json!({"job_id": job_id}),
            ))
            .await;
        done = v["result"].clone();
        if done["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let keys: Vec<_> = done.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            "job_id",
            "status",
            "model",
            "prompt",
            "created_at",
            "started_at",
            "completed_at",
            "progress",
            "images"
        ]
    );
    assert_eq!(done["job_id"], job_id.as_str());
    assert_eq!(done["model"], "tiny");
    assert_eq!(
        done["prompt"],
        "A detailed description of the image you want to generate"
    );
    for t in ["created_at", "started_at", "completed_at"] {
        assert!(is_rfc3339_utc(&done[t]), "{t}: {}", done[t]);
    }
    assert_eq!(
        done["progress"],
        json!({"preparing": false, "loading_model": false, "generating": false, "saving": false,
               "completed": true, "failed": false, "step": 30, "total_steps": 30})
    );
    let images = done["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    let img = &images[0];
    let id = img["id"].as_str().unwrap();
    assert_eq!(img["url"], format!("/api/get_image/{id}"));
    let meta = &img["metadata"];
    assert_eq!(meta["model_id"], "tiny");
    assert_eq!(
        meta["prompt"],
        "A detailed description of the image you want to generate"
    );
    let settings = &meta["settings"];
    assert_eq!(settings["num_inference_steps"], 30);
    assert_eq!(settings["guidance_scale"], 7.5);
    assert_eq!(settings["height"], 128);
    assert_eq!(settings["width"], 64);
    assert!(settings["seed"].is_u64(), "the seed is reported back");

    let png = s.get(img["url"].as_str().unwrap()).await;
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert!(png.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let etag = png.headers()["etag"].clone();
    let bytes = png.bytes().await.unwrap();
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 128));
    let again = s
        .http
        .get(format!("{}{}", s.base, img["url"].as_str().unwrap()))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let thumb = s.get(&format!("/api/images/{id}/thumbnail")).await;
    assert_eq!(thumb.status(), 200);
    assert_eq!(thumb.headers()["content-type"], "image/png");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_rpc_error_code() {
    let s = start(10, None).await;
    let code = |v: &Value| v["error"]["code"].as_i64().unwrap();

    let v: Value = s.rpc_raw("{not json").await.json().await.unwrap();
    assert_eq!((code(&v), &v["id"]), (-32700, &Value::Null));
    let v: Value = s.rpc_raw("42").await.json().await.unwrap();
    assert_eq!(code(&v), -32600);
    let v = s
        .rpc(json!({"method": "context.image_generation.models", "id": 1}))
        .await;
    assert_eq!((code(&v), &v["id"]), (-32600, &json!(1)));
    let v = s.rpc(json!({"jsonrpc": "2.0", "method": 5, "id": 1})).await;
    assert_eq!(code(&v), -32600);
    let v = s
        .rpc(json!({"jsonrpc": "2.0", "method": "x", "id": {"a": 1}}))
        .await;
    assert_eq!(code(&v), -32600);
    let v = s
        .rpc(json!({"jsonrpc": "2.0", "method": "context.image_generation.nope", "id": 7}))
        .await;
    assert_eq!((code(&v), &v["id"]), (-32601, &json!(7)));

    let gen = "context.image_generation.generate";
    for params in [
        json!({}),
        json!({"prompt": ""}),
        json!({"prompt": 12}),
        json!({"prompt": "x", "model": "no-such-model"}),
        json!({"prompt": "x", "model": "flux-1", "settings": {"width": 1000}}),
        json!({"prompt": "x", "model": "tiny", "settings": {"width": 100}}),
        json!({"prompt": "x", "settings": {"height": 4096}}),
        json!({"prompt": "x", "settings": {"width": -64}}),
        json!({"prompt": "x", "settings": {"num_inference_steps": 0}}),
        json!({"prompt": "x", "settings": {"num_inference_steps": 151}}),
        json!({"prompt": "x", "settings": {"guidance_scale": 30.5}}),
        json!({"prompt": "x", "settings": {"num_images": 9}}),
        json!({"prompt": "x", "settings": {"num_images": "1"}}),
        json!({"prompt": "x", "settings": {"width": 1e30}}),
        json!({"prompt": "x".repeat(4001)}),
        json!(["positional", "params"]),
    ] {
        let v = s.rpc(rpc_call(gen, params.clone())).await;
        assert_eq!(code(&v), -32602, "{params}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // Params that are not structured make the request itself invalid.
    let v = s.rpc(rpc_call(gen, json!("just a string"))).await;
    assert_eq!(code(&v), -32600);
    let queue: Value = s.get("/api/queue").await.json().await.unwrap();
    assert_eq!(queue["pending"], 0, "no invalid request was stored");

    let status = "context.image_generation.status";
    let v = s.rpc(rpc_call(status, json!({}))).await;
    assert_eq!(code(&v), -32602);
    let v = s.rpc(rpc_call(status, json!({"job_id": 5}))).await;
    assert_eq!(code(&v), -32602);
    let v = s
        .rpc(rpc_call(
            status,
            json!({"job_id": "0c907066-985e-467b-8d11-07419060ef91"}),
        ))
        .await;
    assert_eq!(code(&v), -32001);
    let v = s
        .rpc(rpc_call(status, json!({"job_id": "../../etc/passwd"})))
        .await;
    assert_eq!(code(&v), -32001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_batches_follow_json_rpc() {
    let s = start(10, None).await;
    let r = s
        .rpc_raw(r#"{"jsonrpc":"2.0","method":"context.image_generation.models"}"#)
        .await;
    assert_eq!(r.status(), 204, "a notification gets no response");
    assert!(r.bytes().await.unwrap().is_empty());

    let v: Value = s.rpc_raw("[]").await.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32600);

    let v: Value = s
        .rpc_raw(
            r#"[{"jsonrpc":"2.0","method":"context.image_generation.models","id":1},
                {"jsonrpc":"2.0","method":"context.image_generation.models"},
                {"jsonrpc":"2.0","method":"nope","id":"b"},
                7,
                {"jsonrpc":"2.0","method":"context.image_generation.generate","params":{"prompt":"batched","model":"tiny"},"id":3}]"#,
        )
        .await
        .json()
        .await
        .unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(
        arr.len(),
        4,
        "one response per request with an id, plus the invalid one"
    );
    assert_eq!(arr[0]["id"], 1);
    assert_eq!(arr[0]["result"]["default"], "flux-1");
    assert_eq!(
        (arr[1]["id"].clone(), arr[1]["error"]["code"].clone()),
        (json!("b"), json!(-32601))
    );
    assert_eq!(arr[2]["error"]["code"], -32600);
    assert_eq!(arr[3]["result"]["status"], "pending");

    let r = s
        .rpc_raw(r#"[{"jsonrpc":"2.0","method":"context.image_generation.models"}]"#)
        .await;
    assert_eq!(r.status(), 204);
}

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
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
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
    let app = router(
        service,
        &ApiConfig {
            api_keys: keys,
            ..ApiConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cyberimage_api::serve(listener, app, std::future::pending()));
    let http = reqwest::Client::new();

    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness stays open");
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
