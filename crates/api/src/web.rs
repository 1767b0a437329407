//! The web UI: a few static files compiled into the binary (no CDN, no
//! build step; the machine may be offline), served at `/`, `/gallery`,
//! `/queue` (one page, routed in the browser) and `/assets/…`. The pages
//! talk to the REST API and the `/api/events` stream like any client.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error_table::ApiError;
use crate::AppState;

const INDEX_HTML: &str = include_str!("../web/index.html");

/// (path under /assets/, content type, body)
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
    (
        "js/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/app.js"),
    ),
    (
        "js/api.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/api.js"),
    ),
    (
        "js/generate.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/generate.js"),
    ),
    (
        "js/gallery.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/gallery.js"),
    ),
    (
        "js/queue.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/queue.js"),
    ),
    (
        "js/input.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/input.js"),
    ),
    (
        "js/mask.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/mask.js"),
    ),
    (
        "js/admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/admin.js"),
    ),
    (
        "js/selection.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/selection.js"),
    ),
    (
        "js/loras.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/loras.js"),
    ),
    (
        "js/recent.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/recent.js"),
    ),
    (
        "js/enrich.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/enrich.js"),
    ),
    (
        "js/upscale.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/upscale.js"),
    ),
    (
        "js/hires.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/hires.js"),
    ),
];

/// Paths of the page itself, which stay reachable without an API key (the
/// page asks for one when the API answers 401).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/gallery" | "/queue" | "/admin") || path.starts_with("/assets/")
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/gallery", get(page))
        .route("/queue", get(page))
        .route("/admin", get(page))
        .route("/assets/{*path}", get(asset))
}

/// The assets change only with the binary: its version is their ETag.
fn etag() -> HeaderValue {
    HeaderValue::from_static(concat!("\"cyberimage-", env!("CARGO_PKG_VERSION"), "\""))
}

fn not_modified(headers: &HeaderMap) -> bool {
    headers.get(header::IF_NONE_MATCH) == Some(&etag())
}

fn respond(headers: &HeaderMap, content_type: &'static str, body: &'static str) -> Response {
    if not_modified(headers) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag())]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::ETAG, etag()),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; \
                     script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn page(headers: HeaderMap) -> Response {
    respond(&headers, "text/html; charset=utf-8", INDEX_HTML)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, body)) => respond(&headers, content_type, body),
        None => ApiError::new_not_found("no such asset").into_response(),
    }
}
