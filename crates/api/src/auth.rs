//! Optional API keys. When any are configured, every route but the probes
//! (`/health`, `/ready`) and the web page's own files
//! needs one, as `Authorization: Bearer KEY` or `X-API-Key: KEY`. Only
//! SHA-256 digests of keys are kept, and a presented key's digest is
//! compared with every stored digest in constant time, so neither timing
//! nor a leaked config file gives a key away.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error_table::{rpc, ApiError};

#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    digests: Arc<Vec<[u8; 32]>>,
    /// Whether image and thumbnail downloads need a key too.
    pub private_images: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("api key digest {0:?} is not 64 hex digits (a SHA-256 of the key)")]
pub struct BadDigest(String);

/// The digest to put in the config for `key`.
pub fn digest_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ApiKeys {
    pub fn from_hex_digests(hex: &[String], private_images: bool) -> Result<Self, BadDigest> {
        let mut digests = Vec::with_capacity(hex.len());
        for h in hex {
            let h = h.trim();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BadDigest(h.to_owned()));
            }
            let mut d = [0u8; 32];
            for (i, byte) in d.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).expect("checked hex");
            }
            digests.push(d);
        }
        Ok(Self {
            digests: Arc::new(digests),
            private_images,
        })
    }

    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether a request with these headers may see what keys protect:
    /// always without keys, else with a valid one (for public routes that
    /// say more to a key holder).
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        !self.enabled() || presented_key(headers).is_some_and(|key| self.accepts(key))
    }

    fn accepts(&self, key: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Check every digest: the time taken does not depend on which matched.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, d| {
                found | d.ct_eq(&presented)
            })
            .into()
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

fn is_public(path: &str, keys: &ApiKeys) -> bool {
    if path == "/health" || path == "/ready" || crate::web::is_public(path) {
        return true;
    }
    let image_route = path.starts_with("/api/get_image/")
        || (path.starts_with("/api/images/") && path.ends_with("/thumbnail"));
    image_route && !keys.private_images
}

pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if !keys.enabled() || is_public(request.uri().path(), &keys) {
        return next.run(request).await;
    }
    match presented_key(request.headers()) {
        Some(key) if keys.accepts(key) => next.run(request).await,
        presented => {
            let message = if presented.is_some() {
                "the API key is not valid"
            } else {
                "an API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
            };
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                rpc::UNAUTHORIZED,
                message,
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_and_match() {
        let keys =
            ApiKeys::from_hex_digests(&[digest_hex("s3cret"), digest_hex("other")], true).unwrap();
        assert!(keys.accepts("s3cret"));
        assert!(keys.accepts("other"));
        assert!(!keys.accepts("s3cre"));
        assert!(!keys.accepts(""));
        assert!(ApiKeys::from_hex_digests(&["abc".into()], true).is_err());
        assert!(!ApiKeys::default().enabled());
    }
}
