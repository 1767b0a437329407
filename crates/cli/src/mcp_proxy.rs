//! `cyberimage mcp --url URL`: MCP on stdio, forwarded to a running
//! server's Streamable HTTP endpoint, for assistants that only launch
//! stdio servers while the GPU box runs `cyberimage serve`.
//!
//! Each line from stdin becomes one POST to `URL/mcp`; JSON answers and
//! SSE events go back to stdout one per line. The proxy keeps the session
//! id the server issues, sets the headers each era needs (the negotiated
//! `MCP-Protocol-Version`, and for 2026-07-28 also `Mcp-Method` /
//! `Mcp-Name` from the body), and cancels a modern-era request by
//! dropping its connection, which is how that era says "cancelled".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

const ENVELOPE_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

#[derive(Default)]
struct Shared {
    session: Option<String>,
    /// The version `initialize` negotiated, sent on later requests.
    version: Option<String>,
    in_flight: HashMap<String, tokio::task::AbortHandle>,
}

struct Proxy {
    http: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
    shared: Mutex<Shared>,
    out: mpsc::UnboundedSender<Value>,
}

fn header_value(s: &str) -> String {
    use base64::Engine as _;
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) && s.trim() == s {
        s.to_owned()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }
}

fn error_for(id: &Value, code: i64, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

impl Proxy {
    fn request(&self, message: &Value) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(&self.endpoint)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(message.to_string());
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let method = message.get("method").and_then(Value::as_str);
        let params = message.get("params");
        let modern = params
            .and_then(|p| p.get("_meta"))
            .and_then(|m| m.get(ENVELOPE_VERSION))
            .and_then(Value::as_str);
        if let Some(version) = modern {
            req = req.header("mcp-protocol-version", version);
            if let Some(m) = method {
                req = req.header("mcp-method", m);
            }
            let name_key = match method {
                Some("tools/call" | "prompts/get") => Some("name"),
                Some("resources/read") => Some("uri"),
                _ => None,
            };
            if let Some(name) = name_key
                .and_then(|k| params.and_then(|p| p.get(k)))
                .and_then(Value::as_str)
            {
                req = req.header("mcp-name", header_value(name));
            }
        } else {
            let shared = self.shared.lock().expect("proxy state");
            if let Some(s) = &shared.session {
                req = req.header("mcp-session-id", s);
            }
            if let Some(v) = &shared.version {
                req = req.header("mcp-protocol-version", v);
            }
        }
        req
    }

    /// Sends one message and relays everything the server answers.
    async fn forward(self: Arc<Self>, message: Value) {
        let id = message.get("id").cloned();
        let result = self.exchange(&message).await;
        if let Some(id) = &id {
            let mut shared = self.shared.lock().expect("proxy state");
            shared.in_flight.remove(&id.to_string());
        }
        if let (Err(e), Some(id)) = (result, id) {
            let _ = self.out.send(error_for(
                &id,
                -32000,
                format!("cannot reach the CyberImage server: {e:#}"),
            ));
        }
    }

    async fn exchange(&self, message: &Value) -> anyhow::Result<()> {
        let resp = self
            .request(message)
            .send()
            .await
            .map_err(|e| crate::hub::request_failed(self.endpoint.clone(), e))?;
        if let Some(s) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            self.shared.lock().expect("proxy state").session = Some(s.to_owned());
        }
        let status = resp.status();
        let is_sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        if is_sse {
            let mut body = resp.bytes_stream();
            let mut buf = Vec::new();
            while let Some(chunk) = body.next().await {
                buf.extend_from_slice(&chunk?);
                while let Some(end) = find_event_end(&buf) {
                    let event: Vec<u8> = buf.drain(..end).collect();
                    if let Some(v) = sse_data(&event) {
                        self.relay(v);
                    }
                }
            }
            return Ok(());
        }
        let bytes = resp.bytes().await?;
        if bytes.is_empty() {
            return Ok(());
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.get("jsonrpc").is_some() => self.relay(v),
            // Our own HTTP errors ({"error":{"code","message"}}), e.g. a
            // missing API key: answer the request with a JSON-RPC error.
            other => {
                if let Some(id) = message.get("id") {
                    let detail = other
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                    let code = if status == reqwest::StatusCode::UNAUTHORIZED {
                        -32006
                    } else {
                        -32000
                    };
                    self.relay(error_for(id, code, format!("HTTP {status}: {detail}")));
                }
            }
        }
        Ok(())
    }

    fn relay(&self, v: Value) {
        if let Some(version) = v["result"]["protocolVersion"].as_str() {
            self.shared.lock().expect("proxy state").version = Some(version.to_owned());
        }
        let _ = self.out.send(v);
    }
}

/// End of the first SSE event in `buf` (after its blank line).
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn sse_data(event: &[u8]) -> Option<Value> {
    let text = String::from_utf8_lossy(event);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

pub async fn run(url: &str, api_key: Option<String>) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let endpoint = if base.ends_with("/mcp") {
        base.to_owned()
    } else {
        format!("{base}/mcp")
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let proxy = Arc::new(Proxy {
        http: reqwest::Client::builder()
            .build()
            .context("cannot build the HTTP client")?,
        endpoint,
        api_key,
        shared: Mutex::new(Shared::default()),
        out: tx,
    });
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(v) = rx.recv().await {
            let mut line = v.to_string();
            line.push('\n');
            stdout.write_all(line.as_bytes()).await?;
            stdout.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            if !line.trim().is_empty() {
                let _ = proxy
                    .out
                    .send(error_for(&Value::Null, -32700, "parse error".into()));
            }
            continue;
        };
        if message["method"] == "notifications/cancelled" {
            let key = message["params"]["requestId"].to_string();
            if let Some(handle) = proxy
                .shared
                .lock()
                .expect("proxy state")
                .in_flight
                .remove(&key)
            {
                // Dropping the connection is the 2026-07-28 cancel; the
                // handshake era also gets the notification below.
                handle.abort();
            }
        }
        let id_key = message.get("id").map(Value::to_string);
        // Held across spawn and insert, so a fast task cannot remove its
        // entry before it exists.
        let mut shared = proxy.shared.lock().expect("proxy state");
        let handle = tasks.spawn(proxy.clone().forward(message));
        if let Some(key) = id_key {
            shared.in_flight.insert(key, handle);
        }
        drop(shared);
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let session = proxy.shared.lock().expect("proxy state").session.clone();
    if let Some(session) = session {
        let mut req = proxy
            .http
            .delete(&proxy.endpoint)
            .header("mcp-session-id", session);
        if let Some(key) = &proxy.api_key {
            req = req.bearer_auth(key);
        }
        let _ = req.send().await;
    }
    drop(proxy);
    writer.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_and_decode() {
        let buf = b"event: message\ndata: {\"a\":1}\n\n: ping\r\n\r\ndata: {\"b\"";
        let end = find_event_end(buf).unwrap();
        assert_eq!(sse_data(&buf[..end]), Some(json!({"a": 1})));
        let rest = &buf[end..];
        let end2 = find_event_end(rest).unwrap();
        assert_eq!(sse_data(&rest[..end2]), None);
        assert!(find_event_end(&rest[end2..]).is_none());
    }

    #[test]
    fn non_ascii_names_travel_base64_wrapped() {
        assert_eq!(header_value("generate_image"), "generate_image");
        assert_eq!(header_value("é"), "=?base64?w6k=?=");
    }
}
