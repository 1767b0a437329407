//! Optional API keys. When any are configured, every route but the probes
//! (`/health`, `/ready`) and the web page's own files
//! needs one, as `Authorization: Bearer KEY` or `X-API-Key: KEY`. Only
//! SHA-256 digests of keys are kept, and a presented key's digest is
//! compared with every stored digest in constant time, so neither timing
//! nor a leaked config file gives a key away.
//!
//! Keys carry scopes: `read` (GET requests), `generate` (everything else:
//! jobs, cancels, enrichment, MCP) and `admin` (retrying, deleting and
//! clearing jobs: `required_scope` names those routes). Keys listed
//! without scopes have all three.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error_table::{rpc, ApiError};

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Generate,
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Self::Read => 1,
            Self::Generate => 2,
            Self::Admin => 4,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Generate => "generate",
            Self::Admin => "admin",
        }
    }
}

/// The scopes a request's key holds (all of them without keys, or on stdio).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub const ALL: Scopes = Scopes(7);
    pub const NONE: Scopes = Scopes(0);

    pub fn allows(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

#[derive(Clone, Debug)]
struct StoredKey {
    digest: [u8; 32],
    scopes: u8,
}

#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    keys: Arc<Vec<StoredKey>>,
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
    /// Keys with every scope.
    pub fn from_hex_digests(hex: &[String], private_images: bool) -> Result<Self, BadDigest> {
        let all = [Scope::Read, Scope::Generate, Scope::Admin];
        let scoped: Vec<(String, Vec<Scope>)> =
            hex.iter().map(|h| (h.clone(), all.to_vec())).collect();
        Self::from_scoped_digests(&scoped, private_images)
    }

    /// Keys with the scopes given for each (an empty list: every scope).
    pub fn from_scoped_digests(
        keys: &[(String, Vec<Scope>)],
        private_images: bool,
    ) -> Result<Self, BadDigest> {
        let mut stored = Vec::with_capacity(keys.len());
        for (h, scopes) in keys {
            let h = h.trim();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BadDigest(h.to_owned()));
            }
            let mut digest = [0u8; 32];
            for (i, byte) in digest.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).expect("checked hex");
            }
            let scopes = if scopes.is_empty() {
                Scopes::ALL.0
            } else {
                scopes.iter().fold(0, |bits, s| bits | s.bit())
            };
            stored.push(StoredKey { digest, scopes });
        }
        Ok(Self {
            keys: Arc::new(stored),
            private_images,
        })
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether a request with these headers may see what keys protect:
    /// always without keys, else with a valid one (for public routes that
    /// say more to a key holder).
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        self.scopes_for(headers) != Scopes::NONE
    }

    /// The scopes of the request's key: all without keys configured, none
    /// without a valid key.
    pub fn scopes_for(&self, headers: &HeaderMap) -> Scopes {
        if !self.enabled() {
            return Scopes::ALL;
        }
        presented_key(headers).map_or(Scopes::NONE, |key| self.scopes_of(key))
    }

    fn scopes_of(&self, key: &str) -> Scopes {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Check every digest: the time taken does not depend on which matched.
        let bits = self.keys.iter().fold(0u8, |bits, k| {
            bits | u8::conditional_select(&0, &k.scopes, k.digest.ct_eq(&presented))
        });
        Scopes(bits)
    }

    #[cfg(test)]
    fn accepts(&self, key: &str) -> bool {
        self.scopes_of(key) != Scopes::NONE
    }
}

/// The scope a request needs. Admin: the queue-administration routes
/// (ours and the CyberImage app's `/admin/...` actions). Read: other GET
/// and HEAD requests. Generate: everything else.
pub fn required_scope(method: &axum::http::Method, path: &str) -> Scope {
    use axum::http::Method;
    // A ZIP of a selection is a read, whichever method carries the list.
    let read = method == Method::GET || method == Method::HEAD || path == "/api/images/download";
    let admin = path.starts_with("/admin/")
        || path == "/api/queue/clear"
        || path == "/api/queue/retry_failed"
        || (path.starts_with("/api/jobs/") && !read);
    if admin {
        Scope::Admin
    } else if read {
        Scope::Read
    } else {
        Scope::Generate
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
    let presented = presented_key(request.headers());
    let scopes = presented.map_or(Scopes::NONE, |key| keys.scopes_of(key));
    if scopes != Scopes::NONE {
        let needed = required_scope(request.method(), request.uri().path());
        if scopes.allows(needed) {
            return next.run(request).await;
        }
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            rpc::UNAUTHORIZED,
            format!(
                "this API key lacks the {:?} scope this request needs",
                needed.as_str()
            ),
        )
        .into_response();
    }
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

    #[test]
    fn scoped_keys_hold_only_their_scopes() {
        let keys = ApiKeys::from_scoped_digests(
            &[
                (digest_hex("reader"), vec![Scope::Read]),
                (digest_hex("maker"), vec![Scope::Read, Scope::Generate]),
                (digest_hex("root"), vec![]),
            ],
            true,
        )
        .unwrap();
        let reader = keys.scopes_of("reader");
        assert!(reader.allows(Scope::Read) && !reader.allows(Scope::Generate));
        let maker = keys.scopes_of("maker");
        assert!(maker.allows(Scope::Generate) && !maker.allows(Scope::Admin));
        assert_eq!(keys.scopes_of("root"), Scopes::ALL, "no scopes listed: all");
        assert_eq!(keys.scopes_of("nobody"), Scopes::NONE);
    }

    #[test]
    fn routes_need_the_scope_of_what_they_do() {
        use axum::http::Method;
        assert_eq!(required_scope(&Method::GET, "/api/gallery"), Scope::Read);
        assert_eq!(
            required_scope(&Method::POST, "/api/generate"),
            Scope::Generate
        );
        assert_eq!(
            required_scope(&Method::POST, "/api/queue/clear"),
            Scope::Admin
        );
        assert_eq!(required_scope(&Method::DELETE, "/api/jobs/x"), Scope::Admin);
        assert_eq!(required_scope(&Method::GET, "/api/jobs/x"), Scope::Read);
        assert_eq!(
            required_scope(&Method::POST, "/admin/queue/retry"),
            Scope::Admin
        );
    }
}
