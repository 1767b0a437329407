//! MCP resource subscriptions (handshake era) over Streamable HTTP, with a
//! real server and SQLite file (the engine is the testkit's scripted
//! double, a STAND-IN): a session subscribes to an image's URI and hears
//! `notifications/resources/updated` on its `GET /mcp` stream when the
//! image is made a favourite and when it is deleted, and
//! `notifications/resources/list_changed` when a new image is made; a
//! missing image cannot be subscribed to; a stream needs a live session.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use support::*;
use tokio::sync::mpsc;

async fn rpc(s: &Server, session: Option<&str>, method: &str, params: Value) -> reqwest::Response {
    let mut req = s
        .http
        .post(format!("{}/mcp", s.base))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(session) = session {
        req = req.header("mcp-session-id", session);
    }
    req.json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
}

async fn generate(s: &Server, prompt: &str) -> String {
    let r: Value = s
        .post(
            "/api/generate",
            json!({"model_id": "tiny", "prompt": prompt, "settings": {"num_inference_steps": 2}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let done = s
        .wait_status(r["job_id"].as_str().unwrap(), &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    done["images"][0]["id"].as_str().unwrap().to_owned()
}

/// The next notification on the stream with `method`, skipping others.
async fn next(rx: &mut mpsc::UnboundedReceiver<Value>, method: &str) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {method} within 30 s"))
            .expect("the stream ended");
        if message["method"] == method {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_hears_its_image_change_and_new_images() {
    let s = start(10, Some(Duration::from_millis(1))).await;
    let image = generate(&s, "a watched lighthouse").await;
    let uri = format!("cyberimage://image/{image}");

    let init = rpc(
        &s,
        None,
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "test", "version": "1"}}),
    )
    .await;
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let caps: Value = init.json().await.unwrap();
    assert_eq!(
        caps["result"]["capabilities"]["resources"],
        json!({"listChanged": true, "subscribe": true})
    );

    // The session's stream, read into a channel of messages.
    let stream = s
        .http
        .get(format!("{}/mcp", s.base))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut bytes = stream.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = bytes.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                            let _ = tx.send(v);
                        }
                    }
                }
            }
        }
    });

    let r: Value = rpc(
        &s,
        Some(&session),
        "resources/subscribe",
        json!({"uri": uri}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(r["result"], json!({}), "{r}");
    let missing = "cyberimage://image/img_0123456789abcdef0123456789abcdef";
    let r: Value = rpc(
        &s,
        Some(&session),
        "resources/subscribe",
        json!({"uri": missing}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(r["error"]["code"], -32002, "{r}");

    let fav = s
        .http
        .put(format!("{}/api/images/{image}/favorite", s.base))
        .json(&json!({"favorite": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(fav.status(), 200);
    let updated = next(&mut rx, "notifications/resources/updated").await;
    assert_eq!(updated["params"]["uri"], uri);

    generate(&s, "a new image in the gallery").await;
    next(&mut rx, "notifications/resources/list_changed").await;

    let deleted = s
        .http
        .delete(format!("{}/api/images/{image}", s.base))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let updated = next(&mut rx, "notifications/resources/updated").await;
    assert_eq!(updated["params"]["uri"], uri);

    // A stream needs a live session.
    let orphan = s
        .http
        .get(format!("{}/mcp", s.base))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", "no-such-session")
        .send()
        .await
        .unwrap();
    assert_eq!(orphan.status(), 404);
}
