//! The OpenAPI document: the committed `openapi.json` must be the one the
//! code builds (regenerate with `cargo run -- openapi > openapi.json`), and
//! every documented operation must exist on a live server.

mod support;

use serde_json::Value;

#[test]
fn committed_openapi_json_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == cyberimage_api::openapi::document_text(),
        "openapi.json is stale: run `cargo run -- openapi > openapi.json`"
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let s = support::start(10, None).await;
    let doc = cyberimage_api::openapi::document();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{job_id}", "00000000-0000-4000-8000-000000000000")
            .replace("{image_id}", "img_0123456789abcdef0123456789abcdef");
        for method in ops.as_object().unwrap().keys() {
            let url = format!("{}{concrete}", s.base);
            let req = match method.as_str() {
                "get" => s.http.get(&url),
                "post" => s.http.post(&url).body("{}"),
                "delete" => s.http.delete(&url),
                other => panic!("unexpected method {other}"),
            };
            // SSE would stream forever; its headers are enough.
            let resp = req
                .header("accept", "application/json, text/event-stream")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            if status == 404 {
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                assert_ne!(
                    body["error"]["message"], "no such route",
                    "{method} {path} is documented but not routed"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 22, "only {checked} operations documented");
}
