//! Standard MCP over the stdio transport, driven through an in-memory
//! pipe: the handshake, tool calls with progress, cancellation by
//! `notifications/cancelled`, and malformed input that must not stop the
//! server. The engine is the testkit's scripted double; the database and
//! image folder are real. The official Python SDK runs the same surface
//! against the real binary in `tests/mcp/test_mcp_clients.py`.

mod support;

use std::time::Duration;

use cyberimage_api::{McpOptions, McpServer};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};

struct Peer {
    to_server: DuplexStream,
    from_server: Lines<BufReader<DuplexStream>>,
    _dir: tempfile::TempDir,
}

impl Peer {
    async fn start(step_delay: Duration) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let service = support::service(dir.path(), 100, Some(step_delay)).await;
        let server = McpServer::new(
            service,
            McpOptions::default(),
            std::sync::Arc::new(cyberimage_api::Enricher::disabled()),
        );
        let (client_in, server_out) = tokio::io::duplex(1 << 20);
        let (server_in, client_out) = tokio::io::duplex(1 << 20);
        tokio::spawn(cyberimage_api::mcp::stdio::serve(
            server, server_in, server_out,
        ));
        Peer {
            to_server: client_out,
            from_server: BufReader::new(client_in).lines(),
            _dir: dir,
        }
    }

    async fn send_raw(&mut self, line: &str) {
        self.to_server.write_all(line.as_bytes()).await.unwrap();
        self.to_server.write_all(b"\n").await.unwrap();
    }

    async fn send(&mut self, message: Value) {
        self.send_raw(&message.to_string()).await;
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), self.from_server.next_line())
            .await
            .expect("the server answered in time")
            .unwrap()
            .expect("the server kept its output open");
        serde_json::from_str(&line).unwrap()
    }

    /// Reads until the response to `id`, returning it and the
    /// notifications seen on the way.
    async fn response(&mut self, id: i64) -> (Value, Vec<Value>) {
        let mut notes = Vec::new();
        loop {
            let m = self.next().await;
            if m.get("id") == Some(&json!(id)) {
                return (m, notes);
            }
            notes.push(m);
        }
    }

    async fn initialize(&mut self) {
        self.send(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}}),
        )
        .await;
        let (r, _) = self.response(0).await;
        assert_eq!(r["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(r["result"]["serverInfo"]["name"], "cyberimage");
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    }
}

#[tokio::test]
async fn generate_reports_rising_progress_and_returns_the_image() {
    let mut peer = Peer::start(Duration::from_millis(5)).await;
    peer.initialize().await;
    peer.send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "generate_image", "_meta": {"progressToken": "p1"},
        "arguments": {"prompt": "a fox", "model": "tiny", "steps": 4, "num_images": 2, "seed": 7}}}))
        .await;
    let (r, notes) = peer.response(1).await;
    let result = &r["result"];
    assert_eq!(result["isError"], false, "{result}");
    let progress: Vec<f64> = notes
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .inspect(|n| assert_eq!(n["params"]["progressToken"], "p1"))
        .map(|n| n["params"]["progress"].as_f64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&8.0), "steps × images");
    let structured = &result["structuredContent"];
    assert_eq!(structured["status"], "completed");
    let seeds: Vec<u64> = structured["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, [7, 8]);
    let kinds: Vec<&str> = result["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "text",
            "image",
            "resource_link",
            "image",
            "resource_link",
            "text"
        ]
    );

    let uri = structured["images"][0]["uri"].as_str().unwrap().to_owned();
    peer.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": uri}}),
    )
    .await;
    let (r, _) = peer.response(2).await;
    assert_eq!(r["result"]["contents"][0]["mimeType"], "image/png");
    assert!(!r["result"]["contents"][0]["blob"]
        .as_str()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn cancelled_notification_cancels_the_job_and_sends_no_response() {
    let mut peer = Peer::start(Duration::from_millis(200)).await;
    peer.initialize().await;
    peer.send(
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": "generate_image", "_meta": {"progressToken": 9},
        "arguments": {"prompt": "slow", "model": "tiny", "steps": 50}}}),
    )
    .await;
    // Wait for the first denoising step, then give up on the call.
    let job_id = loop {
        let n = peer.next().await;
        if n["params"]["progress"].as_f64() >= Some(1.0) {
            let msg = n["params"]["message"].as_str().unwrap();
            break msg[msg.rfind('(').unwrap() + 1..msg.len() - 1].to_owned();
        }
    };
    peer.send(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 5, "reason": "user stopped it"}}),
    )
    .await;
    let mut status = Value::Null;
    for attempt in 10..200 {
        peer.send(
            json!({"jsonrpc": "2.0", "id": attempt, "method": "tools/call",
            "params": {"name": "get_generation", "arguments": {"job_id": job_id}}}),
        )
        .await;
        let (r, notes) = peer.response(attempt).await;
        assert!(
            notes.iter().all(|n| n.get("id") != Some(&json!(5))),
            "a cancelled request gets no response"
        );
        status = r["result"]["structuredContent"]["status"].clone();
        if status == "cancelled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "cancelled");
}

#[tokio::test]
async fn malformed_input_gets_errors_and_the_server_keeps_serving() {
    let mut peer = Peer::start(Duration::from_millis(1)).await;
    peer.send_raw("{not json").await;
    assert_eq!(peer.next().await["error"]["code"], -32700);
    peer.send_raw("[1, 2]").await;
    assert_eq!(peer.next().await["error"]["code"], -32600);
    peer.send(json!({"jsonrpc": "2.0", "id": 1, "method": 7}))
        .await;
    let r = peer.next().await;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(1), json!(-32600))
    );
    peer.send(json!({"jsonrpc": "2.0", "id": 2, "method": "no/such"}))
        .await;
    assert_eq!(peer.response(2).await.0["error"]["code"], -32601);
    peer.send(
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "nope"}}),
    )
    .await;
    assert_eq!(peer.response(3).await.0["error"]["code"], -32602);
    peer.send(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "x", "steps": 100000}}}))
        .await;
    let (r, _) = peer.response(4).await;
    assert_eq!(r["result"]["isError"], true);
    assert!(r["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("steps"));
    // A modern-era request with an envelope naming a version we lack.
    peer.send(
        json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2030-01-01",
        "io.modelcontextprotocol/clientCapabilities": {}}}}),
    )
    .await;
    let (r, _) = peer.response(6).await;
    assert_eq!(r["error"]["code"], -32022);
    peer.send(json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}))
        .await;
    assert_eq!(peer.response(7).await.0["result"], json!({}));
}
