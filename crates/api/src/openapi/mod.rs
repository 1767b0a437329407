//! The OpenAPI 3.1 description of every HTTP route, served at
//! `/api/openapi.json` with a self-contained reference page at `/api/docs`
//! (no CDN: the machine may be offline). The committed `openapi.json` at
//! the repository root is this document; a test fails when they differ,
//! and another calls every documented operation on a live server.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::AppState;

mod operations;
mod schemas;

use operations::operations;
use schemas::schemas;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/openapi.json", get(|| async { Json(document()) }))
        .route("/api/docs", get(docs_page))
}

pub(super) fn error_ref() -> Value {
    json!({"$ref": "#/components/schemas/Error"})
}

pub(super) fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

pub(super) fn error_response(description: &str) -> Value {
    json_response(description, error_ref())
}

pub(super) fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

pub(super) fn query_param(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": kind}})
}

pub(super) fn png_response(description: &str) -> Value {
    json!({"description": description, "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}})
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, extra) in operations() {
        let mut op = json!({"summary": summary, "operationId": format!("{method} {path}")});
        let obj = op.as_object_mut().expect("object");
        match extra {
            Value::Object(fields) if fields.contains_key("responses") => obj.extend(fields),
            responses => {
                obj.insert("responses".into(), responses);
            }
        }
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "CyberImage",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Self-hosted image generation: REST, the seed's JSON-RPC, standard MCP and an OpenAI-compatible Images API. With API keys configured, every route but /health and /ready needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.",
        },
        "servers": [{"url": "http://127.0.0.1:5050"}],
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "paths": paths,
    })
}

/// The committed document's text: pretty JSON with a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("serializable");
    text.push('\n');
    text
}

async fn docs_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Html(DOCS_HTML),
    )
        .into_response()
}

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>CyberImage API</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;background:#0b0f17;color:#d7e2f0;margin:0 auto;max-width:960px;padding:1.5rem}
h1{color:#3ff0c8}code,pre{font-family:ui-monospace,monospace}pre{background:#111827;padding:.75rem;overflow:auto;border-radius:6px}
details{border:1px solid #1f2a3a;border-radius:6px;margin:.5rem 0;padding:.25rem .75rem}
summary{cursor:pointer}.m{display:inline-block;min-width:4.5rem;font-weight:700;text-transform:uppercase}
.get{color:#60a5fa}.post{color:#34d399}.delete{color:#f87171}
</style></head><body>
<h1>CyberImage API</h1><p>The machine-readable document is <a href="/api/openapi.json">/api/openapi.json</a>.</p>
<div id="ops">Loading…</div>
<script>
fetch('/api/openapi.json').then(r => r.json()).then(doc => {
  const root = document.getElementById('ops'); root.textContent = '';
  for (const [path, ops] of Object.entries(doc.paths)) for (const [method, op] of Object.entries(ops)) {
    const d = document.createElement('details'), s = document.createElement('summary');
    const m = document.createElement('span'); m.className = 'm ' + method; m.textContent = method;
    const c = document.createElement('code'); c.textContent = path;
    s.append(m, c, ' — ' + op.summary); d.append(s);
    const pre = document.createElement('pre'); pre.textContent = JSON.stringify(op, null, 2); d.append(pre);
    root.append(d);
  }
}).catch(e => { document.getElementById('ops').textContent = 'Could not load the document: ' + e; });
</script></body></html>
"#;
