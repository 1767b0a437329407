//! Origin checks against cross-site requests and DNS rebinding.
//!
//! A browser tells us which page sent a request in `Origin`. Pages served
//! from loopback, origins the operator configured, and a page served by
//! this very server under an IP address are allowed. A page on any other
//! site is refused with 403 before it can start work: a cross-site form
//! can post `text/plain` bodies without a CORS preflight, and a rebinding
//! domain that resolves to 127.0.0.1 still carries its own name as the
//! origin. Requests without `Origin` (curl, SDKs) are not from a browser
//! page and pass.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error_table::{rpc, ApiError};

#[derive(Clone, Debug, Default)]
pub struct OriginPolicy {
    /// Exact origins (`scheme://host[:port]`, lower case) also allowed.
    allowed: Arc<Vec<String>>,
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `(host, authority)` of `scheme://authority` for http and https origins.
fn split_origin(origin: &str) -> Option<(&str, &str)> {
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))?;
    if authority.is_empty() || authority.contains('/') {
        return None;
    }
    let host = if let Some(rest) = authority.strip_prefix('[') {
        &rest[..rest.find(']')?]
    } else {
        authority.split(':').next()?
    };
    Some((host, authority))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl OriginPolicy {
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: Arc::new(allowed.iter().map(|o| normalize(o)).collect()),
        }
    }

    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(raw) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(raw) = raw.to_str() else {
            return false;
        };
        let origin = normalize(raw);
        if self.allowed.iter().any(|a| a == "*" || *a == origin) {
            return true;
        }
        let Some((host, authority)) = split_origin(&origin) else {
            return false;
        };
        if is_loopback(host) {
            return true;
        }
        // Same origin is trusted only under an IP address: a rebinding
        // attack needs a domain name, and then names it in Origin and Host.
        let same_host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| h.eq_ignore_ascii_case(authority));
        same_host && host.parse::<IpAddr>().is_ok()
    }
}

pub fn forbidden() -> Response {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        rpc::INVALID_REQUEST,
        "requests from this Origin are not allowed; add it to `allowed_origins` in the config to permit it",
    )
    .into_response()
}

/// Refuses cross-site requests that change state, and every cross-site
/// request to the MCP endpoints (which stream job data back).
pub async fn check(State(policy): State<OriginPolicy>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let guarded = request.method() != Method::GET && request.method() != Method::HEAD
        || path == "/mcp"
        || path == "/api/mcp";
    if guarded && !policy.allows(request.headers()) {
        tracing::warn!(origin = ?request.headers().get(header::ORIGIN), path, "refused a cross-origin request");
        return forbidden();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn loopback_configured_and_ip_same_origin_pass() {
        let p = OriginPolicy::new(&["https://studio.example.com".into()]);
        assert!(p.allows(&headers(None, "127.0.0.1:5050")));
        assert!(p.allows(&headers(Some("http://localhost:3000"), "127.0.0.1:5050")));
        assert!(p.allows(&headers(Some("http://127.0.0.1:5050"), "127.0.0.1:5050")));
        assert!(p.allows(&headers(Some("http://[::1]:5050"), "[::1]:5050")));
        assert!(p.allows(&headers(
            Some("https://Studio.example.com/"),
            "10.0.0.2:5050"
        )));
        assert!(p.allows(&headers(
            Some("http://192.168.1.5:5050"),
            "192.168.1.5:5050"
        )));
    }

    #[test]
    fn foreign_and_rebinding_origins_are_refused() {
        let p = OriginPolicy::default();
        assert!(!p.allows(&headers(Some("https://evil.example"), "127.0.0.1:5050")));
        // DNS rebinding: the attacker's name resolves to us; Host matches Origin.
        assert!(!p.allows(&headers(
            Some("http://rebind.example:5050"),
            "rebind.example:5050"
        )));
        assert!(!p.allows(&headers(Some("null"), "127.0.0.1:5050")));
        assert!(!p.allows(&headers(Some("file://"), "127.0.0.1:5050")));
        assert!(!p.allows(&headers(
            Some("http://localhost.evil.example"),
            "127.0.0.1:5050"
        )));
        assert!(!p.allows(&headers(
            Some("http://192.168.1.5:5050"),
            "192.168.1.6:5050"
        )));
    }
}
