//! Prompt enrichment: a short prompt rewritten, in a chosen style, by a
//! chat model behind any OpenAI-compatible endpoint (Ollama, llama.cpp's
//! server, LocalAI, vLLM, OpenAI itself), or by a small one run in this
//! process ([`LocalChat`], which the binary backs with the engine's Qwen3
//! when `[enrich] local_model` names one).
//!
//! This is not a job: it is one chat request, answered while the caller
//! waits, and it never touches the engine, the queue or the database. The
//! REST route, the MCP tool and the web page's ✨ button all call
//! [`Enricher::enrich`]. The style table is `styles.rs`; the HTTP exchange
//! `chat.rs`; turning the model's answer into one clean prompt `reply.rs`.

#![forbid(unsafe_code)]

mod chat;
mod reply;
pub mod styles;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use styles::{PromptForm, Style, DEFAULT_STYLE};

/// `[enrich]` in the config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrichConfig {
    /// Base URL of an OpenAI-compatible API, e.g. `http://127.0.0.1:11434/v1`
    /// (Ollama) or `https://api.openai.com/v1`. Empty: `$OPENAI_ENDPOINT`
    /// (the CyberImage app's variable), else enrichment is off.
    pub endpoint: String,
    /// The chat model. Empty: `$OPENAI_MODEL`, else `gpt-4` (the app's).
    pub model: String,
    /// The environment variable that holds the API key, sent as a bearer
    /// token. Unset or empty: no key is sent (local servers need none).
    pub api_key_env: String,
    /// Seconds the endpoint has to answer (local servers may first load
    /// the model).
    pub timeout_secs: u64,
    pub max_tokens: u32,
    pub temperature: f32,
    /// Styles of your own, added to (or replacing, by name) the built-in ones.
    pub styles: Vec<Style>,
    /// A chat model run in this process when no `endpoint` is set: a
    /// folder in transformers' layout (`config.json`, safetensors,
    /// `tokenizer.json`) of a Qwen3 model, e.g. Qwen3-0.6B or 1.7B.
    pub local_model: String,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".to_owned(),
            timeout_secs: 60,
            max_tokens: 300,
            temperature: 0.7,
            styles: Vec::new(),
            local_model: String::new(),
        }
    }
}

impl EnrichConfig {
    /// Fills what the file left empty from the CyberImage app's variables
    /// (`OPENAI_ENDPOINT`, `OPENAI_MODEL`), so its `.env` works unchanged.
    pub fn with_app_environment(mut self) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if self.endpoint.trim().is_empty() {
            self.endpoint = var("OPENAI_ENDPOINT").unwrap_or_default();
        }
        if self.model.trim().is_empty() {
            self.model = var("OPENAI_MODEL").unwrap_or_default();
        }
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error(
        "prompt enrichment is not configured: set `endpoint` (an OpenAI-compatible API, e.g. \
         http://127.0.0.1:11434/v1 for Ollama) and `model` under [enrich] in the config file, \
         or the OPENAI_ENDPOINT and OPENAI_MODEL environment variables, or `local_model` (a \
         Qwen3 model folder) to run one in this process"
    )]
    NotConfigured,
    #[error("the local enrichment model failed: {0}")]
    Local(String),
    #[error("[enrich] config: {0}")]
    BadConfig(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the enrichment endpoint {endpoint} cannot be reached: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error(
        "the enrichment endpoint did not answer within {0} s (raise [enrich] timeout_secs for \
         a slow local model)"
    )]
    Timeout(u64),
    #[error("the enrichment endpoint answered HTTP {status}: {message}")]
    Upstream { status: u16, message: String },
    #[error("the enrichment endpoint's answer holds no usable prompt: {0}")]
    BadReply(String),
}

/// An enriched prompt and what made it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Enriched {
    pub prompt: String,
    pub original: String,
    pub style: String,
    /// The chat model that wrote it.
    pub model: String,
}

/// Whether enrichment can be used, for pages and clients to show.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnrichStatus {
    pub configured: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The endpoint without any credentials in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A chat model run in this process. `complete` is heavy and blocking:
/// the enricher calls it on a blocking thread.
pub trait LocalChat: Send + Sync {
    /// Its name, for answers and the status.
    fn name(&self) -> String;
    /// The answer to `user` under `system`: at most `max_tokens` tokens at
    /// `temperature`.
    fn complete(
        &self,
        system: &str,
        user: &str,
        max_tokens: u32,
        temperature: f32,
    ) -> Result<String, String>;
}

/// The in-process model with the settings it answers with.
struct Local {
    model: Arc<dyn LocalChat>,
    max_tokens: u32,
    temperature: f32,
    timeout: Duration,
}

/// Longest prompt accepted for enrichment when the caller sets no limit.
const DEFAULT_MAX_PROMPT_CHARS: usize = 4000;

pub struct Enricher {
    chat: Option<chat::ChatClient>,
    local: Option<Local>,
    /// The config's answer settings, for a local model attached later.
    answer_settings: (u32, f32, Duration),
    styles: Vec<Style>,
    max_prompt_chars: usize,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The status only: never the API key.
        f.debug_struct("Enricher")
            .field("status", &self.status())
            .field("styles", &self.styles.len())
            .finish()
    }
}

impl Enricher {
    /// `max_prompt_chars` is the server's prompt limit: the input must fit
    /// it, and so must the answer (cut at a phrase boundary). A malformed
    /// config is an error at start-up, not at the first click.
    pub fn new(config: &EnrichConfig, max_prompt_chars: usize) -> Result<Self, EnrichError> {
        let mut styles = styles::builtin();
        for extra in &config.styles {
            check_style(extra)?;
            match styles.iter_mut().find(|s| s.name == extra.name) {
                Some(existing) => *existing = extra.clone(),
                None => styles.push(extra.clone()),
            }
        }
        let chat = if config.endpoint.trim().is_empty() {
            None
        } else {
            Some(chat::ChatClient::new(config)?)
        };
        if chat.is_some() && !config.local_model.trim().is_empty() {
            return Err(EnrichError::BadConfig(
                "set `endpoint` or `local_model`, not both".into(),
            ));
        }
        Ok(Self {
            chat,
            local: None,
            answer_settings: (
                config.max_tokens.clamp(16, 4096),
                config.temperature,
                timeout(config),
            ),
            styles,
            max_prompt_chars: if max_prompt_chars == 0 {
                DEFAULT_MAX_PROMPT_CHARS
            } else {
                max_prompt_chars
            },
        })
    }

    /// Enrichment off: every call says how to configure it.
    pub fn disabled() -> Self {
        Self::new(&EnrichConfig::default(), 0).expect("the default config is valid")
    }

    /// Answers with `model`, run in this process (when no endpoint is
    /// configured; an endpoint keeps precedence).
    pub fn with_local(mut self, model: Arc<dyn LocalChat>) -> Self {
        let (max_tokens, temperature, timeout) = self.answer_settings;
        self.local = Some(Local {
            model,
            max_tokens,
            temperature,
            timeout,
        });
        self
    }

    pub fn styles(&self) -> &[Style] {
        &self.styles
    }

    pub fn status(&self) -> EnrichStatus {
        match (&self.chat, &self.local) {
            (Some(chat), _) => EnrichStatus {
                configured: true,
                model: Some(chat.model().to_owned()),
                endpoint: Some(chat.endpoint_for_display().to_owned()),
                reason: None,
            },
            (None, Some(local)) => EnrichStatus {
                configured: true,
                model: Some(local.model.name()),
                endpoint: Some("in-process".to_owned()),
                reason: None,
            },
            (None, None) => EnrichStatus {
                configured: false,
                model: None,
                endpoint: None,
                reason: Some(EnrichError::NotConfigured.to_string()),
            },
        }
    }

    /// Rewrites `prompt` in `style` (the app's default, `cyberpunk`, when
    /// `None`), in the form the target model reads when `form` is given.
    pub async fn enrich(
        &self,
        prompt: &str,
        style: Option<&str>,
        form: Option<PromptForm>,
    ) -> Result<Enriched, EnrichError> {
        let original = prompt.trim();
        if original.is_empty() {
            return Err(EnrichError::InvalidRequest(
                "prompt is empty: give the prompt to enrich".into(),
            ));
        }
        if original.chars().count() > self.max_prompt_chars {
            return Err(EnrichError::InvalidRequest(format!(
                "prompt is longer than {} characters",
                self.max_prompt_chars
            )));
        }
        let style = self.style(style.unwrap_or(DEFAULT_STYLE))?;
        let system = styles::system_prompt(style, form);
        let user = format!("Rewrite this image prompt: {original}");
        let (answer, model) = match (&self.chat, &self.local) {
            (Some(chat), _) => (
                chat.complete(&system, &user).await?,
                chat.model().to_owned(),
            ),
            (None, Some(local)) => (
                Self::ask_local(local, system, user).await?,
                local.model.name(),
            ),
            (None, None) => return Err(EnrichError::NotConfigured),
        };
        let prompt = reply::clean(&answer, self.max_prompt_chars).ok_or_else(|| {
            let reason = if answer.contains("<think>") {
                "the model spent its whole answer reasoning (raise [enrich] max_tokens, or use a \
                 model that does not think aloud)"
            } else {
                "it was empty"
            };
            EnrichError::BadReply(reason.into())
        })?;
        Ok(Enriched {
            prompt,
            original: original.to_owned(),
            style: style.name.clone(),
            model,
        })
    }

    /// The local model's answer, computed on a blocking thread (never on
    /// the async runtime's), within the timeout.
    async fn ask_local(local: &Local, system: String, user: String) -> Result<String, EnrichError> {
        let model = local.model.clone();
        let (max_tokens, temperature) = (local.max_tokens, local.temperature);
        let work = tokio::task::spawn_blocking(move || {
            model.complete(&system, &user, max_tokens, temperature)
        });
        match tokio::time::timeout(local.timeout, work).await {
            Err(_) => Err(EnrichError::Timeout(local.timeout.as_secs())),
            Ok(Err(join)) => Err(EnrichError::Local(format!("it stopped: {join}"))),
            Ok(Ok(answer)) => answer.map_err(EnrichError::Local),
        }
    }

    fn style(&self, name: &str) -> Result<&Style, EnrichError> {
        let name = name.trim();
        self.styles
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let known: Vec<&str> = self.styles.iter().map(|s| s.name.as_str()).collect();
                EnrichError::InvalidRequest(format!(
                    "unknown style {name:?}; the styles are: {}",
                    known.join(", ")
                ))
            })
    }
}

fn check_style(style: &Style) -> Result<(), EnrichError> {
    let name_ok = !style.name.is_empty()
        && style.name.len() <= 40
        && style
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(EnrichError::BadConfig(format!(
            "style name {:?} must be 1-40 letters, digits, '-' or '_'",
            style.name
        )));
    }
    if style.instructions.trim().is_empty() || style.instructions.len() > 4000 {
        return Err(EnrichError::BadConfig(format!(
            "style {:?} needs instructions of at most 4000 characters",
            style.name
        )));
    }
    Ok(())
}

/// How long one enrichment may take, from the config.
fn timeout(config: &EnrichConfig) -> Duration {
    Duration::from_secs(config.timeout_secs.clamp(1, 600))
}
