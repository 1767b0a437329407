//! `POST /api/enrich` and `GET /api/enrich/styles` on a real server, with
//! a STAND-IN OpenAI-compatible chat server (an axum app on port 0 in this
//! test; no real chat model can be downloaded here) that records what it
//! is sent and answers as Ollama's `/v1` does.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use cyberimage_api::{ApiConfig, EnrichConfig, Enricher};
use serde_json::{json, Value};
use support::*;

type Seen = Arc<Mutex<Vec<Value>>>;

async fn chat(State(seen): State<Seen>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    seen.lock().unwrap().push(body.clone());
    let user = body["messages"][1]["content"].as_str().unwrap_or("");
    if user.contains("slow") {
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    if user.contains("broken") {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "llama runner process has terminated"})),
        );
    }
    let subject = user.trim_start_matches("Rewrite this image prompt: ");
    (
        StatusCode::OK,
        Json(json!({"choices": [{"message": {"role": "assistant",
            "content": format!("{subject}, glowing neon, rain-slick street")}}]})),
    )
}

async fn stand_in() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

async fn server_with_enrichment() -> (Server, Seen) {
    let (endpoint, seen) = stand_in().await;
    let enricher = Enricher::new(
        &EnrichConfig {
            endpoint,
            model: "llama3.2:3b".into(),
            timeout_secs: 1,
            ..EnrichConfig::default()
        },
        4000,
    )
    .unwrap();
    let config = ApiConfig {
        enricher: Arc::new(enricher),
        ..ApiConfig::default()
    };
    (start_with_config(10, None, config).await, seen)
}

fn system_prompt(seen: &Seen, i: usize) -> String {
    seen.lock().unwrap()[i]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn enrich_answers_in_the_apps_shape_and_ours() {
    let (s, seen) = server_with_enrichment().await;
    let r = s
        .post(
            "/api/enrich",
            json!({"prompt": "a cat on a roof", "style": "anime"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let expected = "a cat on a roof, glowing neon, rain-slick street";
    assert_eq!(v["prompt"], expected);
    assert_eq!(v["enriched_prompt"], expected, "the app's field");
    assert_eq!(v["original"], "a cat on a roof");
    assert_eq!(v["original_prompt"], "a cat on a roof");
    assert_eq!(v["style"], "anime");
    assert_eq!(v["enriched_by"], "llama3.2:3b");
    assert!(system_prompt(&seen, 0).contains("anime"));

    // No style: the app's default. A model: the form its encoder reads.
    let v: Value = s
        .post("/api/enrich", json!({"prompt": "a cat", "model": "flux-1"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["style"], "cyberpunk");
    assert!(system_prompt(&seen, 1).contains("sentences"));
    s.post("/api/enrich", json!({"prompt": "a cat", "model": "tiny"}))
        .await;
    assert!(system_prompt(&seen, 2).contains("77 tokens"));

    let styles: Value = s.get("/api/enrich/styles").await.json().await.unwrap();
    assert_eq!(styles["configured"], true);
    assert_eq!(styles["default"], "cyberpunk");
    assert_eq!(styles["model"], "llama3.2:3b");
    let names: Vec<&str> = styles["styles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.starts_with(&[
        "cyberpunk",
        "anime",
        "realistic",
        "enhance",
        "fantasy",
        "sci-fi"
    ]));
}

#[tokio::test]
async fn bad_requests_are_400_and_never_reach_the_chat_model() {
    let (s, seen) = server_with_enrichment().await;
    for (body, needle) in [
        (json!({"style": "anime"}), "no prompt"),
        (json!({"prompt": ""}), "empty"),
        (json!({"prompt": 5}), "must be a string"),
        (
            json!({"prompt": "x", "style": "vaporwave"}),
            "unknown style",
        ),
        (json!({"prompt": "x", "colour": "red"}), "unknown field"),
        (json!({"prompt": "x".repeat(4001)}), "longer than"),
    ] {
        let message = assert_error(
            s.post("/api/enrich", body.clone()).await,
            400,
            "invalid_request",
        )
        .await;
        assert!(message.contains(needle), "{body}: {message}");
    }
    let message = assert_error(
        s.post("/api/enrich", json!({"prompt": "x", "model": "nope"}))
            .await,
        400,
        "unknown_model",
    )
    .await;
    assert!(message.contains("flux-1"), "{message}");
    let raw = s
        .http
        .post(format!("{}/api/enrich", s.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn chat_failures_are_gateway_errors_and_the_server_keeps_serving() {
    let (s, _) = server_with_enrichment().await;
    let message = assert_error(
        s.post("/api/enrich", json!({"prompt": "a slow cat"})).await,
        504,
        "enrich_timeout",
    )
    .await;
    assert!(message.contains("timeout_secs"), "{message}");
    let message = assert_error(
        s.post("/api/enrich", json!({"prompt": "a broken cat"}))
            .await,
        502,
        "enrich_upstream_error",
    )
    .await;
    assert!(message.contains("llama runner"), "{message}");
    let r = s.post("/api/enrich", json!({"prompt": "a cat"})).await;
    assert_eq!(r.status(), 200, "the next request works");
}

#[tokio::test]
async fn unconfigured_enrichment_is_503_saying_how_to_configure_it() {
    let s = start(10, None).await;
    let message = assert_error(
        s.post("/api/enrich", json!({"prompt": "a cat"})).await,
        503,
        "enrich_not_configured",
    )
    .await;
    assert!(message.contains("[enrich]") && message.contains("OPENAI_ENDPOINT"));
    let styles: Value = s.get("/api/enrich/styles").await.json().await.unwrap();
    assert_eq!(styles["configured"], false);
    assert!(styles["reason"].as_str().unwrap().contains("[enrich]"));
    assert!(styles["styles"].as_array().unwrap().len() >= 10);
}
