//! Protocol revisions and the two eras of MCP.
//!
//! Revisions up to 2025-11-25 open with an `initialize` handshake and keep a
//! session; 2026-07-28 is stateless, and every request carries its protocol
//! version and the client's capabilities in `params._meta`. One server
//! speaks both: a request with the modern envelope is answered as modern,
//! anything else as the handshake era.

use serde_json::{json, Map, Value};

use super::McpError;

/// Handshake-era revisions we negotiate, oldest first.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// Stateless revisions we serve.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];

/// The version a Streamable HTTP client that sends no
/// `MCP-Protocol-Version` header is assumed to speak (the transport spec's
/// fallback).
pub const HTTP_DEFAULT_VERSION: &str = "2025-03-26";

pub const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
pub const CLIENT_CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
pub const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";

/// JSON-RPC codes the 2026-07-28 revision adds.
pub const HEADER_MISMATCH: i64 = -32020;
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// Which era, and which revision of it, one request is answered in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Era {
    Handshake(String),
    Modern(String),
}

impl Era {
    pub fn version(&self) -> &str {
        match self {
            Era::Handshake(v) | Era::Modern(v) => v,
        }
    }

    pub fn is_modern(&self) -> bool {
        matches!(self, Era::Modern(_))
    }

    /// Structured tool output may be any JSON value only from 2026-07-28;
    /// before that it must be an object. Ours always is.
    pub fn supports_structured_content(&self) -> bool {
        self.version() >= "2025-06-18"
    }
}

pub fn is_handshake_version(v: &str) -> bool {
    HANDSHAKE_VERSIONS.contains(&v)
}

pub fn is_modern_version(v: &str) -> bool {
    MODERN_VERSIONS.contains(&v)
}

/// The answer to a client's `initialize` offer: the same revision when we
/// speak it, else our newest handshake revision (the client then decides
/// whether it can go on).
pub fn negotiate(offered: Option<&str>) -> &'static str {
    let newest = HANDSHAKE_VERSIONS[HANDSHAKE_VERSIONS.len() - 1];
    match offered {
        Some(v) => HANDSHAKE_VERSIONS
            .iter()
            .find(|known| **known == v)
            .copied()
            .unwrap_or(newest),
        None => newest,
    }
}

/// Every revision we answer, for `server/discover` and -32022 errors.
pub fn all_versions() -> Vec<&'static str> {
    HANDSHAKE_VERSIONS
        .iter()
        .chain(MODERN_VERSIONS.iter())
        .copied()
        .collect()
}

/// The protocol version named in a request's `_meta` envelope, if any.
pub fn envelope_version(params: &Value) -> Option<&Value> {
    params.get("_meta")?.get(PROTOCOL_VERSION_KEY)
}

/// Checks a modern request's envelope: `_meta` must carry the protocol
/// version and the client capabilities, and the version must be one we
/// serve.
pub fn check_envelope(params: &Value) -> Result<String, McpError> {
    let version = envelope_shape(params)?;
    check_supported(&version)?;
    Ok(version)
}

/// The first rung of the envelope checks: `_meta` carries a string
/// protocol version and the client capabilities. Whether we serve that
/// version is the last rung (`check_supported`), after the transport has
/// compared its headers with the body.
pub fn envelope_shape(params: &Value) -> Result<String, McpError> {
    let meta = params
        .get("_meta")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            McpError::invalid_params(format!(
                "params._meta must be an object carrying {PROTOCOL_VERSION_KEY:?} and {CLIENT_CAPABILITIES_KEY:?}"
            ))
        })?;
    let missing: Vec<&str> = [PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY]
        .into_iter()
        .filter(|k| !meta.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Err(McpError::invalid_params(format!(
            "params._meta is missing {}",
            missing.join(", ")
        )));
    }
    meta[PROTOCOL_VERSION_KEY]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            McpError::invalid_params("the protocol version in params._meta must be a string")
        })
}

pub fn check_supported(version: &str) -> Result<(), McpError> {
    if is_modern_version(version) {
        Ok(())
    } else {
        Err(unsupported_version(version))
    }
}

/// Methods the 2026-07-28 revision removed; asked for in that era they are
/// unknown methods.
pub fn removed_in_modern(method: &str) -> bool {
    // 2026-07-28 replaced resource subscriptions with `subscriptions/listen`.
    matches!(
        method,
        "initialize"
            | "ping"
            | "logging/setLevel"
            | "resources/subscribe"
            | "resources/unsubscribe"
    )
}

pub fn unsupported_version(requested: &str) -> McpError {
    McpError {
        code: UNSUPPORTED_PROTOCOL_VERSION,
        message: format!("unsupported protocol version {requested:?}"),
        data: Some(Box::new(
            json!({"supported": all_versions(), "requested": requested}),
        )),
    }
}

/// Stamps what a result needs in its era: modern results always carry
/// `resultType`, and the cacheable ones their caching directives. Older
/// clients ignore `resultType`, but an empty result must stay `{}` for them.
pub fn finish_result(era: &Era, method: &str, mut result: Value) -> Value {
    let Some(obj) = result.as_object_mut() else {
        return result;
    };
    if era.is_modern() || !obj.is_empty() {
        obj.entry("resultType").or_insert(json!("complete"));
    }
    if era.is_modern() && is_cacheable(method) {
        obj.entry("ttlMs").or_insert(json!(0));
        obj.entry("cacheScope").or_insert(json!("private"));
    }
    result
}

fn is_cacheable(method: &str) -> bool {
    matches!(
        method,
        "server/discover"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    )
}

pub fn response(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub fn error_response(id: &Value, err: &McpError) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), json!(err.code));
    error.insert("message".into(), json!(err.message));
    if let Some(data) = &err.data {
        error.insert("data".into(), (**data).clone());
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// One incoming JSON-RPC message, sorted by kind.
#[derive(Debug)]
pub enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    /// A response to something we asked the client (`client_requests`).
    Response {
        id: Value,
        message: Value,
    },
}

/// Sorts one message, or says why it is not a valid JSON-RPC message (the
/// id, when one could be read, so the error can answer it).
pub fn classify(message: Value) -> Result<Incoming, (Value, McpError)> {
    let Value::Object(mut obj) = message else {
        return Err((
            Value::Null,
            McpError::invalid_request("a message must be a JSON object"),
        ));
    };
    let id = match obj.remove("id") {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
        Some(_) => {
            return Err((
                Value::Null,
                McpError::invalid_request("id must be a string or a number"),
            ))
        }
    };
    let answer_to = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return Err((
            answer_to,
            McpError::invalid_request("jsonrpc must be \"2.0\""),
        ));
    }
    if obj.contains_key("result") || obj.contains_key("error") {
        return Ok(Incoming::Response {
            id: answer_to,
            message: Value::Object(obj),
        });
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return Err((
            answer_to,
            McpError::invalid_request("method must be a string"),
        ));
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return Err((
                answer_to,
                McpError::invalid_request("params must be an object"),
            ))
        }
    };
    Ok(match id {
        Some(id) => Incoming::Request { id, method, params },
        None => Incoming::Notification { method, params },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_echoes_known_versions_and_counters_unknown_ones() {
        assert_eq!(negotiate(Some("2024-11-05")), "2024-11-05");
        assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
        assert_eq!(negotiate(Some("1999-01-01")), "2025-11-25");
        assert_eq!(negotiate(None), "2025-11-25");
    }

    #[test]
    fn envelope_checks_name_what_is_wrong() {
        assert_eq!(
            check_envelope(&json!({})).unwrap_err().code,
            crate::error_table::rpc::INVALID_PARAMS
        );
        let missing_caps = json!({"_meta": {PROTOCOL_VERSION_KEY: "2026-07-28"}});
        assert!(check_envelope(&missing_caps)
            .unwrap_err()
            .message
            .contains("clientCapabilities"));
        let old =
            json!({"_meta": {PROTOCOL_VERSION_KEY: "2025-06-18", CLIENT_CAPABILITIES_KEY: {}}});
        let err = check_envelope(&old).unwrap_err();
        assert_eq!(err.code, UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(err.data.unwrap()["requested"], "2025-06-18");
        let good =
            json!({"_meta": {PROTOCOL_VERSION_KEY: "2026-07-28", CLIENT_CAPABILITIES_KEY: {}}});
        assert_eq!(check_envelope(&good).unwrap(), "2026-07-28");
    }

    #[test]
    fn results_are_stamped_per_era() {
        let old = Era::Handshake("2025-06-18".into());
        let new = Era::Modern("2026-07-28".into());
        assert_eq!(finish_result(&old, "ping", json!({})), json!({}));
        assert_eq!(
            finish_result(&new, "ping", json!({})),
            json!({"resultType": "complete"})
        );
        let listed = finish_result(&new, "tools/list", json!({"tools": []}));
        assert_eq!(listed["ttlMs"], 0);
        assert_eq!(listed["cacheScope"], "private");
    }

    #[test]
    fn classify_sorts_messages() {
        assert!(matches!(
            classify(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
            Ok(Incoming::Request { .. })
        ));
        assert!(matches!(
            classify(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            Ok(Incoming::Notification { .. })
        ));
        assert!(matches!(
            classify(json!({"jsonrpc": "2.0", "id": 1, "result": {}})),
            Ok(Incoming::Response { .. })
        ));
        let (id, err) = classify(json!({"jsonrpc": "2.0", "id": 7, "method": 3})).unwrap_err();
        assert_eq!(id, json!(7));
        assert_eq!(err.code, -32600);
        assert!(classify(json!({"jsonrpc": "2.0", "id": [1], "method": "x"})).is_err());
        assert!(
            classify(json!({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]})).is_err()
        );
    }
}
