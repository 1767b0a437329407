//! The enricher against a STAND-IN OpenAI-compatible chat server: a small
//! axum app on port 0 in this test, answering `/v1/chat/completions` as
//! Ollama's and OpenAI's servers do. No real chat model can run here (none
//! can be downloaded), so the stand-in checks what we send and answers in
//! the ways real servers do, including the ways they fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use cyberimage_enrich::{EnrichConfig, EnrichError, Enricher, PromptForm, Style};
use serde_json::{json, Value};

/// A request the stand-in got: its Authorization header and JSON body.
type Request = (Option<String>, Value);

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Request>>>);

async fn completions(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.0.lock().unwrap().push((auth, body.clone()));
    let user = body["messages"][1]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let answer = |text: &str| {
        (
            StatusCode::OK,
            Json(json!({"id": "stand-in", "object": "chat.completion",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}]})),
        )
    };
    if user.contains("slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return answer("too late");
    }
    if user.contains("overloaded") {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"message": "model is overloaded", "type": "server_error"}})),
        );
    }
    if user.contains("reasoning-model") && body.get("max_tokens").is_some() {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."}}),
            ),
        );
    }
    if user.contains("thinks-forever") {
        return answer("<think>The user wants a fox. Let me consider the lighting and");
    }
    if user.contains("not-a-completion") {
        return (StatusCode::OK, Json(json!({"result": "?"})));
    }
    let subject = user.trim_start_matches("Rewrite this image prompt: ");
    answer(&format!(
        "<think>Make it vivid.</think>\n\nEnhanced prompt: \"{subject}, neon reflections, rain, cinematic lighting\""
    ))
}

async fn stand_in() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

fn config(endpoint: &str) -> EnrichConfig {
    EnrichConfig {
        endpoint: endpoint.to_owned(),
        model: "qwen3:1.7b".into(),
        api_key_env: "CYBERIMAGE_TEST_ENRICH_KEY".into(),
        timeout_secs: 2,
        ..EnrichConfig::default()
    }
}

#[tokio::test]
async fn a_prompt_is_enriched_through_the_chat_endpoint() {
    std::env::set_var("CYBERIMAGE_TEST_ENRICH_KEY", "sk-test-123");
    let (endpoint, seen) = stand_in().await;
    let enricher = Enricher::new(&config(&endpoint), 4000).unwrap();
    let out = enricher
        .enrich("  a red fox in snow ", None, Some(PromptForm::Phrases))
        .await
        .unwrap();
    assert_eq!(
        out.prompt,
        "a red fox in snow, neon reflections, rain, cinematic lighting"
    );
    assert_eq!(out.original, "a red fox in snow");
    assert_eq!(out.style, "cyberpunk", "the app's default style");
    assert_eq!(out.model, "qwen3:1.7b");

    let seen = seen.0.lock().unwrap();
    let (auth, body) = &seen[0];
    assert_eq!(auth.as_deref(), Some("Bearer sk-test-123"));
    assert_eq!(body["model"], "qwen3:1.7b");
    assert_eq!(body["messages"][0]["role"], "system");
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("cyberpunk"), "{system}");
    assert!(system.contains("77 tokens"), "CLIP models get phrases");
    assert_eq!(
        body["messages"][1]["content"],
        "Rewrite this image prompt: a red fox in snow"
    );
    assert_eq!(body["max_tokens"], 300);
    assert_eq!(body["stream"], false);
}

#[tokio::test]
async fn styles_are_chosen_by_name_and_unknown_ones_are_refused() {
    let (endpoint, seen) = stand_in().await;
    let mut cfg = config(&endpoint);
    cfg.styles.push(Style {
        name: "blueprint".into(),
        description: "Technical drawing".into(),
        instructions: "Draw it as a white-on-blue BLUEPRINT.".into(),
    });
    let enricher = Enricher::new(&cfg, 4000).unwrap();
    let out = enricher
        .enrich("a bridge", Some("Blueprint"), Some(PromptForm::Sentences))
        .await
        .unwrap();
    assert_eq!(out.style, "blueprint");
    let system = seen.0.lock().unwrap()[0].1["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(system.contains("BLUEPRINT") && system.contains("sentences"));

    let err = enricher.enrich("a bridge", Some("vaporwave"), None).await;
    let Err(EnrichError::InvalidRequest(message)) = err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("vaporwave") && message.contains("anime"),
        "{message}"
    );
    assert!(matches!(
        enricher.enrich("   ", None, None).await,
        Err(EnrichError::InvalidRequest(_))
    ));
    assert_eq!(seen.0.lock().unwrap().len(), 1, "bad input is never sent");
}

#[tokio::test]
async fn each_failure_is_told_apart() {
    let (endpoint, _) = stand_in().await;
    let enricher = Enricher::new(&config(&endpoint), 4000).unwrap();

    let started = std::time::Instant::now();
    let slow = enricher.enrich("a slow fox", None, None).await;
    assert!(matches!(slow, Err(EnrichError::Timeout(2))), "{slow:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    match enricher.enrich("an overloaded fox", None, None).await {
        Err(EnrichError::Upstream { status, message }) => {
            assert_eq!(status, 503);
            assert_eq!(message, "model is overloaded");
        }
        other => panic!("{other:?}"),
    }
    let thinking = enricher.enrich("thinks-forever", None, None).await;
    let Err(EnrichError::BadReply(why)) = thinking else {
        panic!("{thinking:?}")
    };
    assert!(why.contains("max_tokens"), "{why}");
    assert!(matches!(
        enricher.enrich("not-a-completion", None, None).await,
        Err(EnrichError::BadReply(_))
    ));

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let gone = Enricher::new(
        &config(&format!("http://user:secret@127.0.0.1:{port}/v1")),
        4000,
    )
    .unwrap();
    match gone.enrich("a fox", None, None).await {
        Err(e @ EnrichError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&port.to_string()), "{text}");
            assert!(!text.contains("secret"), "credentials never shown: {text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!gone.status().endpoint.unwrap().contains("secret"));
}

#[tokio::test]
async fn reasoning_models_are_asked_again_with_max_completion_tokens() {
    let (endpoint, seen) = stand_in().await;
    let enricher = Enricher::new(&config(&endpoint), 4000).unwrap();
    let out = enricher
        .enrich("reasoning-model fox", None, None)
        .await
        .unwrap();
    assert!(out.prompt.starts_with("reasoning-model fox, neon"));
    let seen = seen.0.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].1.get("max_tokens").is_none());
    assert_eq!(seen[1].1["max_completion_tokens"], 300);
}

#[tokio::test]
async fn unconfigured_enrichment_says_how_to_configure_it() {
    let enricher = Enricher::disabled();
    assert!(!enricher.status().configured);
    let err = enricher.enrich("a fox", None, None).await.unwrap_err();
    assert!(matches!(err, EnrichError::NotConfigured));
    assert!(err.to_string().contains("[enrich]"));
    assert!(err.to_string().contains("OPENAI_ENDPOINT"));
    assert!(matches!(
        Enricher::new(&config("ftp://host/v1"), 4000),
        Err(EnrichError::BadConfig(_))
    ));
}

#[tokio::test]
async fn an_answer_longer_than_the_prompt_limit_is_cut() {
    let (endpoint, _) = stand_in().await;
    let enricher = Enricher::new(&config(&endpoint), 40).unwrap();
    let out = enricher
        .enrich("a red fox in snow", None, None)
        .await
        .unwrap();
    assert!(out.prompt.chars().count() <= 40, "{}", out.prompt);
    assert!(out.prompt.starts_with("a red fox in snow"));
}
