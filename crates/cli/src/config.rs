//! The one `Config` type, layered: defaults < TOML file < `CYBERIMAGE_*`
//! environment < command-line flags. `config.example.toml` documents every
//! option.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cyberimage_api::{EnrichConfig, McpOptions, RateLimitConfig};
use cyberimage_core::{Catalogue, Limits, ModelEntry, ModelFamily};
use cyberimage_engine::EngineOptions;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on. Localhost by default.
    pub bind: SocketAddr,
    /// Where the database and images live.
    pub data_dir: PathBuf,
    /// `sqlite://…`; empty means `sqlite://{data_dir}/cyberimage.db`.
    pub database_url: String,
    pub max_body_bytes: usize,
    /// Browser origins (`https://host:port`) allowed to call the API and
    /// MCP besides pages served from loopback; `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// Seconds a client has to send a request body (408 after).
    pub request_body_timeout_secs: u64,
    pub rate_limit: RateLimitConfig,
    pub mcp: McpOptions,
    pub queue: QueueConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub engine: EngineOptions,
    pub models: Vec<ModelEntry>,
    pub model_scan: ModelScanConfig,
    pub enrich: EnrichConfig,
}

/// `[model_scan]`: the model folders of other tools (ComfyUI, A1111),
/// whose checkpoints join the catalogue beside `[[models]]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelScanConfig {
    /// `…/ComfyUI/models`, `…/stable-diffusion-webui/models`.
    pub folders: Vec<PathBuf>,
    /// Per family, the diffusers folder or Hugging Face repo whose configs
    /// and tokenizers go with its single files (unset: the family's
    /// reference repo, fetched by `cyberimage models pull KEY`).
    pub configs: BTreeMap<ModelFamily, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Pending jobs beyond this get 429 with Retry-After.
    pub max_pending: u32,
    /// Claims before a job interrupted by crashes is failed.
    pub max_attempts: u32,
    /// Worker processes' engine threads in this process.
    pub workers: u32,
    pub poll_interval_ms: u64,
    /// How often a worker marks its running job alive.
    pub heartbeat_interval_ms: u64,
    /// A running job without a heartbeat for this long is recovered
    /// (its worker died): re-queued, or failed after `max_attempts`.
    pub stale_after_secs: u64,
    /// Workers claim only jobs for models whose weights they have, leaving
    /// the rest to other workers. Unset: on for `cyberimage worker`, off
    /// for `serve` (a lone server fails such jobs with the reason instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_only_runnable: Option<bool>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_pending: 100,
            max_attempts: 3,
            workers: 1,
            poll_interval_ms: 1000,
            heartbeat_interval_ms: 5000,
            stale_after_secs: 30,
            claim_only_runnable: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// SHA-256 hex digests of accepted API keys (`cyberimage hash-key KEY`
    /// prints one). Empty: no key needed.
    pub api_key_sha256: Vec<String>,
    /// With keys configured, whether image downloads need a key too.
    pub private_images: bool,
    /// Keys with scopes (`read`, `generate`, `admin`), beside
    /// `api_key_sha256`'s keys, which hold all three.
    pub keys: Vec<ScopedKey>,
}

/// `[[auth.keys]]`: one key's digest, what it may do, and a name for you.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedKey {
    pub sha256: String,
    pub scopes: Vec<cyberimage_api::Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl AuthConfig {
    /// Every configured key with its scopes (all of them for the plain list).
    pub fn api_keys(&self) -> Result<cyberimage_api::ApiKeys, cyberimage_api::BadDigest> {
        use cyberimage_api::Scope;
        let all = vec![Scope::Read, Scope::Generate, Scope::Admin];
        let keys: Vec<(String, Vec<Scope>)> = self
            .api_key_sha256
            .iter()
            .map(|d| (d.clone(), all.clone()))
            .chain(
                self.keys
                    .iter()
                    .map(|k| (k.sha256.clone(), k.scopes.clone())),
            )
            .collect();
        cyberimage_api::ApiKeys::from_scoped_digests(&keys, self.private_images)
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_key_sha256: Vec::new(),
            private_images: true,
            keys: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:5050".parse().expect("valid address"),
            data_dir: PathBuf::from("./data"),
            database_url: String::new(),
            // Room for an image-to-image input sent as base64.
            max_body_bytes: 16 * 1024 * 1024,
            allowed_origins: Vec::new(),
            request_body_timeout_secs: 30,
            rate_limit: RateLimitConfig::default(),
            mcp: McpOptions::default(),
            queue: QueueConfig::default(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            engine: EngineOptions::default(),
            models: Catalogue::seed_models()
                .into_iter()
                .chain(Catalogue::builtin_test_models())
                .collect(),
            model_scan: ModelScanConfig::default(),
            enrich: EnrichConfig::default(),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// `file` is `--config`, else `$CYBERIMAGE_CONFIG`, else `./cyberimage.toml`
    /// when it exists.
    pub fn load(file: Option<&Path>, flags: FlagOverrides) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let env_file = std::env::var_os("CYBERIMAGE_CONFIG").map(PathBuf::from);
        let file = file.map(Path::to_path_buf).or(env_file).or_else(|| {
            let default = PathBuf::from("cyberimage.toml");
            default.exists().then_some(default)
        });
        if let Some(path) = file {
            if !path.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    path.display()
                ))));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig.merge(
            Env::prefixed("CYBERIMAGE_")
                .ignore(&["CONFIG", "API_KEY"])
                .split("__"),
        )
        .merge(Serialized::defaults(flags))
        .extract()
        .map_err(Box::new)
    }

    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("cyberimage.db").display())
        } else {
            self.database_url.clone()
        }
    }
}

#[cfg(test)]
// figment's Jail fixes the closures' error type; its size is not ours to pick.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "bind = \"127.0.0.1:6000\"\ndata_dir = \"/from/toml\"\n[queue]\nmax_pending = 7\n",
            )?;
            let c = Config::load(Some(Path::new("c.toml")), FlagOverrides::default())
                .map_err(|e| *e)?;
            assert_eq!(c.bind.port(), 6000);
            assert_eq!(c.queue.max_pending, 7);
            assert_eq!(c.queue.max_attempts, 3, "untouched defaults survive");

            jail.set_env("CYBERIMAGE_DATA_DIR", "/from/env");
            jail.set_env("CYBERIMAGE_QUEUE__MAX_PENDING", "9");
            let c = Config::load(Some(Path::new("c.toml")), FlagOverrides::default())
                .map_err(|e| *e)?;
            assert_eq!(c.data_dir, PathBuf::from("/from/env"));
            assert_eq!(c.queue.max_pending, 9);

            let c = Config::load(
                Some(Path::new("c.toml")),
                FlagOverrides {
                    bind: Some("127.0.0.1:7000".parse().unwrap()),
                    data_dir: Some("/from/flag".into()),
                },
            )
            .map_err(|e| *e)?;
            assert_eq!(c.bind.port(), 7000);
            assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
            Ok(())
        });
    }

    #[test]
    fn defaults_are_safe_and_match_the_seed() {
        figment::Jail::expect_with(|_| {
            let c = Config::load(None, FlagOverrides::default()).map_err(|e| *e)?;
            assert!(c.bind.ip().is_loopback());
            assert_eq!(c.bind.port(), 5050);
            assert_eq!(c.data_dir, PathBuf::from("./data"));
            assert_eq!(Catalogue::new(c.models).unwrap().default_key(), "flux-1");
            Ok(())
        });
    }

    #[test]
    fn the_example_config_parses_and_is_complete() {
        let example = include_str!("../../../config.example.toml");
        let c: Config = toml::from_str(example).expect("config.example.toml parses");
        assert_eq!(c.bind.port(), 5050);
        // The example lists exactly the built-in defaults.
        assert_eq!(c.models, Config::default().models);
        assert_eq!(c.engine, Config::default().engine);
        assert_eq!(c.enrich, Config::default().enrich);
    }

    #[test]
    fn engine_options_come_from_the_file_and_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[engine]\nmemory_budget_gib = 20.5\n")?;
            jail.set_env("CYBERIMAGE_ENGINE__DROP_TEXT_ENCODERS", "true");
            let c = Config::load(Some(Path::new("c.toml")), FlagOverrides::default()).unwrap();
            assert_eq!(c.engine.memory_budget_gib, Some(20.5));
            assert!(c.engine.drop_text_encoders);
            jail.create_file("bad.toml", "[engine]\nmemory_budget = 1\n")?;
            assert!(Config::load(Some(Path::new("bad.toml")), FlagOverrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors_not_silence() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "bnd = \"127.0.0.1:1\"\n")?;
            assert!(Config::load(Some(Path::new("c.toml")), FlagOverrides::default()).is_err());
            Ok(())
        });
    }
}
