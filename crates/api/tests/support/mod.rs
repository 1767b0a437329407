//! Shared helpers of the HTTP tests: a real server on port 0 with a real
//! SQLite file and image folder; the engine is the testkit's
//! `ScriptedGenerator` double.
// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use cyberimage_api::{router, ApiConfig};
use cyberimage_core::{Catalogue, ModelDefaults, ModelEntry, ModelFamily};
use cyberimage_db::{Database, SqliteDb};
use cyberimage_jobs::{JobService, JobsConfig};
use cyberimage_store::ImageStore;
use cyberimage_testkit::ScriptedGenerator;
use serde_json::{json, Value};

pub struct Server {
    pub base: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub fn model(key: &str, family: ModelFamily) -> ModelEntry {
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
        config: None,
        vae: None,
        text_encoders: Vec::new(),
        steps_range: None,
        fixed_steps: None,
    }
}

/// A jobs service on a real SQLite file and image folder in `dir`, with a
/// scripted worker when `step_delay` is given.
pub async fn service(
    dir: &std::path::Path,
    max_queue: u32,
    step_delay: Option<Duration>,
) -> Arc<JobService> {
    let db = SqliteDb::open(&dir.join("cyberimage.db")).await.unwrap();
    let store = ImageStore::open(dir).unwrap();
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
    service
}

pub async fn start(max_queue: u32, step_delay: Option<Duration>) -> Server {
    start_with_config(max_queue, step_delay, ApiConfig::default()).await
}

pub async fn start_with_config(
    max_queue: u32,
    step_delay: Option<Duration>,
    config: ApiConfig,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path(), max_queue, step_delay).await;
    Server::new(serve_on_port_0(service, &config).await, dir)
}

/// Serves the API over `service` on a free loopback port; the base URL.
pub async fn serve_on_port_0(service: Arc<JobService>, config: &ApiConfig) -> String {
    let app = router(service, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cyberimage_api::serve(listener, app, std::future::pending()));
    base
}

impl Server {
    /// A server already listening at `base`, whose data lives in `dir`.
    pub fn new(base: String, dir: tempfile::TempDir) -> Self {
        Self {
            base,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    pub async fn rpc(&self, body: Value) -> Value {
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

    pub async fn rpc_raw(&self, body: &'static str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/mcp", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn wait_status(&self, job_id: &str, want: &[&str]) -> Value {
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
pub async fn post_huge_body(base: &str, path: &str) -> (u16, String) {
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

pub fn rpc_call(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": "request-123"})
}

/// Asserts the error shape every REST error must have.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> String {
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

pub fn is_rfc3339_utc(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok())
}
