//! MCP over stdio: one JSON-RPC message per line in, one per line out.
//! Requests run concurrently, so a client can cancel a long generation
//! (`notifications/cancelled`) or ask for its status while it runs. When
//! the input ends, requests still running are cancelled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Incoming};
use super::{CallContext, McpError, McpServer, Outcome};
use crate::error_table::rpc;

/// Longest line accepted; a generation request is a few kilobytes.
const MAX_LINE: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct State {
    /// The version `initialize` negotiated, for handshake-era requests.
    version: Option<String>,
    /// The client's capabilities from its `initialize`.
    capabilities: Value,
    in_flight: HashMap<String, CancellationToken>,
}

/// Serves MCP on `input`/`output` until `input` ends.
pub async fn serve<R, W>(server: Arc<McpServer>, input: R, output: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut output = output;
        while let Some(message) = rx.recv().await {
            let mut line = message.to_string();
            line.push('\n');
            output.write_all(line.as_bytes()).await?;
            output.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let state = Arc::new(Mutex::new(State::default()));
    // One connection is one session: once it subscribes, its
    // notifications go to stdout like everything else (`resources.rs`).
    let session = format!("stdio-{}", uuid::Uuid::new_v4().simple());
    super::subscriptions::start_forwarding(&server);
    let mut tasks = tokio::task::JoinSet::new();
    let mut lines = BufReader::new(input);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            break;
        }
        if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
            let err = McpError::invalid_request("message longer than 4 MiB");
            let _ = tx.send(protocol::error_response(&Value::Null, &err));
            // Skip the rest of the oversized line.
            let mut rest = Vec::new();
            lines.read_until(b'\n', &mut rest).await?;
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        if text.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(text.trim()) {
            Ok(v) => v,
            Err(e) => {
                let err = McpError::new(rpc::PARSE_ERROR, format!("parse error: {e}"));
                let _ = tx.send(protocol::error_response(&Value::Null, &err));
                continue;
            }
        };
        if message.is_array() {
            let err = McpError::invalid_request("batches are not supported");
            let _ = tx.send(protocol::error_response(&Value::Null, &err));
            continue;
        }
        match protocol::classify(message) {
            Err((id, err)) => {
                let _ = tx.send(protocol::error_response(&id, &err));
            }
            Ok(Incoming::Response { id, message }) => {
                server.client_requests.answer(&id, message);
            }
            Ok(Incoming::Notification { method, params }) => {
                if method == "notifications/cancelled" {
                    if let Some(id) = params.get("requestId") {
                        let st = state.lock().expect("stdio state");
                        if let Some(token) = st.in_flight.get(&id.to_string()) {
                            token.cancel();
                        }
                    }
                }
            }
            Ok(Incoming::Request { id, method, params }) => {
                let era = {
                    let st = state.lock().expect("stdio state");
                    McpServer::era_for(&params, st.version.as_deref())
                };
                let era = match era {
                    Ok(era) => era,
                    Err(e) => {
                        let _ = tx.send(protocol::error_response(&id, &e));
                        continue;
                    }
                };
                let mut ctx = CallContext::new(era, &params);
                ctx.notify = Some(tx.clone());
                ctx.session = Some(session.clone());
                {
                    let mut st = state.lock().expect("stdio state");
                    if method == "initialize" {
                        st.capabilities =
                            params.get("capabilities").cloned().unwrap_or(Value::Null);
                    }
                    if !ctx.era.is_modern() {
                        ctx.client_capabilities = st.capabilities.clone();
                    }
                }
                state
                    .lock()
                    .expect("stdio state")
                    .in_flight
                    .insert(id.to_string(), ctx.cancel.clone());
                let (server, tx, state) = (server.clone(), tx.clone(), state.clone());
                tasks.spawn(async move {
                    let outcome = server.handle(&ctx, &method, &params).await;
                    let mut st = state.lock().expect("stdio state");
                    st.in_flight.remove(&id.to_string());
                    let message = match outcome {
                        Ok(result) => {
                            if method == "initialize" {
                                st.version = result["protocolVersion"].as_str().map(str::to_owned);
                            }
                            protocol::response(&id, result)
                        }
                        Err(Outcome::Error(e)) => protocol::error_response(&id, &e),
                        Err(Outcome::Cancelled) => return,
                    };
                    let _ = tx.send(message);
                });
            }
        }
        // Reap finished tasks so the set does not grow with the session.
        while tasks.try_join_next().is_some() {}
    }
    server.subscriptions.remove(&session);
    for token in state.lock().expect("stdio state").in_flight.values() {
        token.cancel();
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    writer.await.map_err(std::io::Error::other)?
}
