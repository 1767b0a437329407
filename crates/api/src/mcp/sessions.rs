//! Handshake-era sessions of the Streamable HTTP transport: the version
//! each negotiated, and its requests in flight so `notifications/cancelled`
//! can reach them. Sessions live in memory; after a restart a client gets
//! 404 and opens a new one, as the transport spec prescribes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Beyond this many sessions the least recently used one is dropped, so
/// clients that never say goodbye cannot grow memory without bound.
const MAX_SESSIONS: usize = 1024;

struct Session {
    version: String,
    /// The client's capabilities from its `initialize`.
    capabilities: Value,
    in_flight: HashMap<String, CancellationToken>,
    last_used: Instant,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

/// Request ids are compared as JSON text, so `1` and `"1"` stay distinct.
fn key(request_id: &Value) -> String {
    request_id.to_string()
}

impl Sessions {
    pub fn create(&self, version: &str, capabilities: Value) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut map = self.inner.lock().expect("sessions lock");
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                version: version.to_owned(),
                capabilities,
                in_flight: HashMap::new(),
                last_used: Instant::now(),
            },
        );
        id
    }

    /// The negotiated version of a live session.
    pub fn version(&self, id: &str) -> Option<String> {
        let mut map = self.inner.lock().expect("sessions lock");
        let s = map.get_mut(id)?;
        s.last_used = Instant::now();
        Some(s.version.clone())
    }

    /// The capabilities the session's client declared.
    pub fn capabilities(&self, id: &str) -> Value {
        let map = self.inner.lock().expect("sessions lock");
        map.get(id)
            .map(|s| s.capabilities.clone())
            .unwrap_or(Value::Null)
    }

    /// Ends a session and cancels what it still has running.
    pub fn remove(&self, id: &str) -> bool {
        let removed = self.inner.lock().expect("sessions lock").remove(id);
        match removed {
            Some(s) => {
                s.in_flight.values().for_each(CancellationToken::cancel);
                true
            }
            None => false,
        }
    }

    pub fn track(&self, session: &str, request_id: &Value, token: CancellationToken) {
        if let Some(s) = self.inner.lock().expect("sessions lock").get_mut(session) {
            s.in_flight.insert(key(request_id), token);
        }
    }

    pub fn untrack(&self, session: &str, request_id: &Value) {
        if let Some(s) = self.inner.lock().expect("sessions lock").get_mut(session) {
            s.in_flight.remove(&key(request_id));
        }
    }

    /// Cancels a request in flight; false when there is none by that id.
    pub fn cancel(&self, session: &str, request_id: &Value) -> bool {
        let map = self.inner.lock().expect("sessions lock");
        match map
            .get(session)
            .and_then(|s| s.in_flight.get(&key(request_id)))
        {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cancel_reaches_the_tracked_request_only() {
        let sessions = Sessions::default();
        let s = sessions.create("2025-06-18", Value::Null);
        assert_eq!(sessions.version(&s).as_deref(), Some("2025-06-18"));
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        sessions.track(&s, &json!(1), a.clone());
        sessions.track(&s, &json!("1"), b.clone());
        assert!(sessions.cancel(&s, &json!(1)));
        assert!(a.is_cancelled() && !b.is_cancelled());
        sessions.untrack(&s, &json!("1"));
        assert!(!sessions.cancel(&s, &json!("1")));
        assert!(sessions.remove(&s));
        assert!(sessions.version(&s).is_none());
        assert!(!sessions.remove(&s));
    }

    #[test]
    fn removing_a_session_cancels_its_requests() {
        let sessions = Sessions::default();
        let s = sessions.create("2025-03-26", Value::Null);
        let t = CancellationToken::new();
        sessions.track(&s, &json!(9), t.clone());
        sessions.remove(&s);
        assert!(t.is_cancelled());
    }
}
