//! Input-required results (2026-07-28, SEP-2322): a request that needs
//! something from the client answers `resultType: "input_required"` with
//! the requests the client should run (`elicitation/create`,
//! `sampling/createMessage`, `roots/list`), and the client repeats the
//! request with their answers in `inputResponses` (and the
//! `requestState` it was given). Ours: `generate_image` / `edit_image`
//! called without a prompt ask for one, when the client can be asked
//! (it declared elicitation). State given to the client is signed with a
//! key of this process, so a tampered one is refused.

use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use subtle::ConstantTimeEq;

use super::{CallContext, McpError};

/// An input-required answer: the requests by our keys, and state to
/// carry to the next round.
pub fn result(requests: Map<String, Value>, state: Option<&str>) -> Value {
    let mut out = json!({"resultType": "input_required", "inputRequests": requests});
    if let Some(state) = state {
        out["requestState"] = json!(sign(state));
    }
    out
}

/// An `elicitation/create` request for one string field.
pub fn ask_text(message: &str, field: &str) -> Value {
    json!({"method": "elicitation/create", "params": {
        "message": message,
        "requestedSchema": {"type": "object",
                            "properties": {field: {"type": "string"}},
                            "required": [field]}}})
}

/// The request's `inputResponses`: `None` when absent; not an object is
/// a protocol error.
pub fn responses(params: &Value) -> Result<Option<&Map<String, Value>>, McpError> {
    match params.get("inputResponses") {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(McpError::invalid_params(
            "inputResponses must be an object of answers keyed as the inputRequests were",
        )),
    }
}

/// The content of an accepted elicitation answer (`{action: "accept",
/// content: {...}}`), or `None` when it was declined or is not one.
pub fn accepted(response: &Value) -> Option<&Map<String, Value>> {
    if response.get("action").and_then(Value::as_str) != Some("accept") {
        return None;
    }
    response.get("content").and_then(Value::as_object)
}

/// Whether the client declared `capability` (`elicitation`, `sampling`,
/// `roots`) in this request's capabilities.
pub fn client_can(ctx: &CallContext, capability: &str) -> bool {
    ctx.era.is_modern() && ctx.client_capabilities.get(capability).is_some()
}

fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key
    })
}

/// HMAC-SHA-256 (RFC 2104) of `message` under this process's key.
fn mac(message: &[u8]) -> [u8; 32] {
    hmac_sha256(key(), message)
}

/// HMAC-SHA-256 with a key of at most one block (64 bytes).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let mut inner = Sha256::new();
    let mut outer = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    outer.update(block.map(|b| b ^ 0x5c));
    inner.update(message);
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn sign(state: &str) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}",
        engine.encode(state),
        engine.encode(mac(state.as_bytes()))
    )
}

/// The state a client echoed back, when it is one we signed; anything
/// else (altered, made up) is refused.
pub fn verified_state(params: &Value) -> Result<Option<String>, McpError> {
    let Some(raw) = params.get("requestState") else {
        return Ok(None);
    };
    let refused = || {
        McpError::invalid_params("requestState is not one this server gave (altered or made up)")
    };
    let raw = raw.as_str().ok_or_else(refused)?;
    let (payload, tag) = raw.split_once('.').ok_or_else(refused)?;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = engine.decode(payload).map_err(|_| refused())?;
    let tag = engine.decode(tag).map_err(|_| refused())?;
    if !bool::from(mac(&payload).as_slice().ct_eq(&tag)) {
        return Err(refused());
    }
    String::from_utf8(payload).map(Some).map_err(|_| refused())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_state_round_trips_and_tampering_is_refused() {
        let signed = sign("round-1");
        assert_eq!(
            verified_state(&json!({"requestState": signed})).unwrap(),
            Some("round-1".into())
        );
        let (payload, tag) = signed.split_once('.').unwrap();
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = format!("{}.{tag}", engine.encode("round-9"));
        assert!(verified_state(&json!({"requestState": forged})).is_err());
        let mut bad_tag = tag.to_string();
        bad_tag.replace_range(0..1, if tag.starts_with('A') { "B" } else { "A" });
        assert!(verified_state(&json!({"requestState": format!("{payload}.{bad_tag}")})).is_err());
        assert!(verified_state(&json!({"requestState": "plain"})).is_err());
        assert_eq!(verified_state(&json!({})).unwrap(), None);
    }

    #[test]
    fn hmac_is_rfc_4231s() {
        // RFC 4231, test case 2.
        let tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
