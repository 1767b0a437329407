//! One chat completion against an OpenAI-compatible endpoint
//! (`POST {endpoint}/chat/completions`), with every way it can go wrong
//! told apart: unreachable, too slow, refused with a status, or answered
//! with something that is not a completion.

use futures::StreamExt;
use serde_json::{json, Value};

use crate::{timeout, EnrichConfig, EnrichError};

/// The most of an answer read; a completion of a few hundred tokens is a
/// few KiB, and a misconfigured endpoint must not fill memory.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The model the CyberImage app asks for when none is set.
const APP_DEFAULT_MODEL: &str = "gpt-4";

pub struct ChatClient {
    http: reqwest::Client,
    url: reqwest::Url,
    display: String,
    model: String,
    api_key: Option<String>,
    timeout_secs: u64,
    max_tokens: u32,
    temperature: f32,
}

impl ChatClient {
    pub fn new(config: &EnrichConfig) -> Result<Self, EnrichError> {
        let bad = |why: String| EnrichError::BadConfig(why);
        let base = config.endpoint.trim().trim_end_matches('/');
        let mut url = reqwest::Url::parse(base)
            .map_err(|e| bad(format!("endpoint {base:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "endpoint {base:?} must be http:// or https://"
            )));
        }
        if !url.path().ends_with("/chat/completions") {
            let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        let mut shown = url.clone();
        // Credentials in the URL never reach logs, errors or pages.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        let api_key = if config.api_key_env.trim().is_empty() {
            None
        } else {
            std::env::var(config.api_key_env.trim())
                .ok()
                .filter(|k| !k.trim().is_empty())
        };
        let model = match config.model.trim() {
            "" => APP_DEFAULT_MODEL.to_owned(),
            m => m.to_owned(),
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("cyberimage/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout(config))
            .build()
            .map_err(|e| bad(format!("cannot make the HTTP client: {e}")))?;
        Ok(Self {
            http,
            url,
            display: shown.to_string(),
            model,
            api_key,
            timeout_secs: timeout(config).as_secs(),
            max_tokens: config.max_tokens.clamp(16, 4096),
            temperature: config.temperature.clamp(0.0, 2.0),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn endpoint_for_display(&self) -> &str {
        &self.display
    }

    /// The model's answer to `system` + `user`, as text.
    pub async fn complete(&self, system: &str, user: &str) -> Result<String, EnrichError> {
        let mut body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stream": false,
        });
        match self.post(&body).await {
            // OpenAI's reasoning models refuse `max_tokens` and a custom
            // temperature, naming `max_completion_tokens`: ask once more
            // the way they want.
            Err(EnrichError::Upstream {
                status: 400,
                message,
            }) if message.contains("max_completion_tokens") => {
                let map = body.as_object_mut().expect("an object");
                map.remove("max_tokens");
                map.remove("temperature");
                map.insert("max_completion_tokens".into(), json!(self.max_tokens));
                self.post(&body).await
            }
            other => other,
        }
    }

    async fn post(&self, body: &Value) -> Result<String, EnrichError> {
        let mut request = self.http.post(self.url.clone()).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| self.failed(e))?;
        let status = response.status();
        let bytes = read_limited(response).await.map_err(|e| self.failed(e))?;
        let value: Option<Value> = serde_json::from_slice(&bytes).ok();
        if !status.is_success() {
            let message = value
                .as_ref()
                .and_then(upstream_message)
                .unwrap_or_else(|| snippet(&bytes));
            return Err(EnrichError::Upstream {
                status: status.as_u16(),
                message,
            });
        }
        let value =
            value.ok_or_else(|| EnrichError::BadReply(format!("not JSON: {}", snippet(&bytes))))?;
        value
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                EnrichError::BadReply("no choices[0].message.content in the answer".into())
            })
    }

    fn failed(&self, e: reqwest::Error) -> EnrichError {
        if e.is_timeout() {
            return EnrichError::Timeout(self.timeout_secs);
        }
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        EnrichError::Unreachable {
            endpoint: self.display.clone(),
            reason,
        }
    }
}

async fn read_limited(response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut stream = response.bytes_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = MAX_ANSWER_BYTES.saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if bytes.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(bytes)
}

/// OpenAI's `{"error": {"message"}}`, or a bare `{"error": "…"}` (Ollama).
fn upstream_message(value: &Value) -> Option<String> {
    let error = value.get("error")?;
    error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .map(|m| m.chars().take(500).collect())
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        "an empty body".into()
    } else {
        text.chars().take(200).collect()
    }
}
