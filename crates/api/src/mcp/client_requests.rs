//! Requests we send the client during a call, in the handshake era
//! (`sampling/createMessage`, `elicitation/create`): written to the call's
//! own stream (its SSE response, or stdout on stdio), answered by a JSON-RPC
//! response the client posts back, which the transport hands here by id.
//! (2026-07-28 has no such requests: it asks by input-required results.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::{CallContext, McpError, Outcome};
use crate::error_table::rpc;

/// How long a person (elicitation) or a model (sampling) may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct ClientRequests {
    next: AtomicU64,
    waiting: Mutex<HashMap<String, oneshot::Sender<Value>>>,
}

impl ClientRequests {
    /// Hands a client's response to the request waiting for it; false
    /// when none is (an unknown or late id).
    pub fn answer(&self, id: &Value, message: Value) -> bool {
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id.to_string());
        waiting.is_some_and(|tx| tx.send(message).is_ok())
    }

    /// Sends `method` to the client on the call's stream and waits for
    /// its answer: its `result`, or its error as ours. The call's cancel
    /// ends the wait.
    pub async fn ask(
        &self,
        ctx: &CallContext,
        method: &str,
        params: Value,
    ) -> Result<Value, Outcome> {
        let Some(stream) = &ctx.notify else {
            return Err(McpError::new(
                rpc::SERVER_ERROR,
                format!("{method} needs a response stream: call with Accept: text/event-stream"),
            )
            .into());
        };
        let id = json!(format!(
            "cyberimage-{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), tx);
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let forget = || {
            self.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id.to_string());
        };
        if stream.send(request).is_err() {
            forget();
            return Err(Outcome::Cancelled);
        }
        let answer = tokio::select! {
            _ = ctx.cancel.cancelled() => { forget(); return Err(Outcome::Cancelled) }
            answer = tokio::time::timeout(ANSWER_TIMEOUT, rx) => answer,
        };
        let message = match answer {
            Ok(Ok(message)) => message,
            _ => {
                forget();
                return Err(McpError::new(
                    rpc::SERVER_ERROR,
                    format!("the client did not answer {method}"),
                )
                .into());
            }
        };
        if let Some(result) = message.get("result") {
            return Ok(result.clone());
        }
        let error = message.get("error");
        Err(McpError::new(
            error
                .and_then(|e| e.get("code"))
                .and_then(Value::as_i64)
                .unwrap_or(rpc::SERVER_ERROR),
            format!(
                "the client refused {method}: {}",
                error
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            ),
        )
        .into())
    }
}
