//! `cyberimage`: the server, the CLI and the wiring between the crates.

#![forbid(unsafe_code)]

mod config;
mod generate_cmd;
mod hub;
mod local_chat;
mod mcp_proxy;
mod models_cmd;
mod wiring;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cyberimage_api::{router, ApiConfig};

use crate::config::{Config, FlagOverrides};
use crate::models_cmd::ModelsCommand;

/// mimalloc, freed memory kept for the next tensors rather than returned to
/// the OS at once (see cyberimage_kernels::alloc).
#[global_allocator]
static ALLOCATOR: cyberimage_kernels::alloc::EngineAllocator =
    cyberimage_kernels::alloc::EngineAllocator;

#[derive(Parser)]
#[command(
    name = "cyberimage",
    version,
    about = "Self-hosted AI image generation server"
)]
struct Cli {
    /// TOML config file (default: $CYBERIMAGE_CONFIG, then ./cyberimage.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the web UI, REST API and JSON-RPC endpoint.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:5050 (port 0 picks a free port).
        #[arg(long)]
        bind: Option<SocketAddr>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Run the web/API front only; `cyberimage worker` processes sharing
        /// the database (PostgreSQL) and data dir run the jobs.
        #[arg(long)]
        no_worker: bool,
        /// Serve the MCP conformance suite's `test_*` fixture tools,
        /// resources and prompts beside ours. For running the official
        /// suite against this server; never in production.
        #[arg(long)]
        conformance_fixtures: bool,
    },
    /// Run jobs from the shared queue without the HTTP server (for extra
    /// GPU machines next to a `serve --no-worker` front).
    Worker {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Engine threads in this process (default: queue.workers).
        #[arg(long)]
        threads: Option<u32>,
    },
    /// Generate images in-process, with a progress bar.
    Generate(Box<generate_cmd::GenerateArgs>),
    /// Check and repair the data: database integrity, jobs interrupted by
    /// crashes, image files without rows and rows without files. Run it
    /// with the server stopped.
    Doctor {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Show the generation parameters stored in a PNG (ours or A1111's).
    Inspect {
        file: PathBuf,
        /// Print the full JSON, including every text chunk.
        #[arg(long)]
        json: bool,
    },
    /// Print the OpenAPI document of the HTTP API (as served at /api/openapi.json).
    Openapi,
    /// Print the SHA-256 digest of an API key, for `auth.api_key_sha256`.
    HashKey {
        /// The key; read from standard input when omitted.
        key: Option<String>,
    },
    /// Speak MCP on stdin/stdout for AI assistants (Claude Desktop, Cursor,
    /// VS Code…): jobs run in-process on the data dir, or on a running
    /// server with --url.
    Mcp {
        #[arg(long, conflicts_with = "url")]
        data_dir: Option<PathBuf>,
        /// Forward to a running server, e.g. http://gpu-box:5050.
        #[arg(long)]
        url: Option<String>,
        /// API key for --url, when the server requires one.
        #[arg(long, env = "CYBERIMAGE_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Inspect the model catalogue.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            bind,
            data_dir,
            no_worker,
            conformance_fixtures,
        } => {
            let mut config = Config::load(cli.config.as_deref(), FlagOverrides { bind, data_dir })?;
            if conformance_fixtures {
                tracing::warn!(
                    "CONFORMANCE FIXTURES ON: MCP also serves the test suite's test_* tools, \
                     test:// resources and test_* prompts; not for production"
                );
                config.mcp.conformance_fixtures = true;
            }
            serve(config, !no_worker).await
        }
        Command::Worker { data_dir, threads } => {
            let flags = FlagOverrides {
                bind: None,
                data_dir,
            };
            let mut config = Config::load(cli.config.as_deref(), flags)?;
            if let Some(n) = threads {
                config.queue.workers = n.max(1);
            }
            // A worker in a cluster leaves jobs it cannot run to others.
            config.queue.claim_only_runnable.get_or_insert(true);
            run_worker(config).await
        }
        Command::Generate(args) => {
            let flags = FlagOverrides {
                bind: None,
                data_dir: args.data_dir.clone(),
            };
            let config = Config::load(cli.config.as_deref(), flags)?;
            generate_cmd::run(config, *args).await
        }
        Command::Mcp {
            url: Some(url),
            api_key,
            ..
        } => mcp_proxy::run(&url, api_key).await,
        Command::Mcp { data_dir, .. } => {
            let flags = FlagOverrides {
                bind: None,
                data_dir,
            };
            let config = Config::load(cli.config.as_deref(), flags)?;
            mcp_stdio(config).await
        }
        Command::Inspect { file, json } => inspect(&file, json),
        Command::Doctor { data_dir } => {
            let flags = FlagOverrides {
                bind: None,
                data_dir,
            };
            let config = Config::load(cli.config.as_deref(), flags)?;
            doctor(config).await
        }
        Command::Openapi => {
            print!("{}", cyberimage_api::openapi::document_text());
            Ok(())
        }
        Command::HashKey { key } => {
            let key = match key {
                Some(k) => k,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            anyhow::ensure!(!key.is_empty(), "an empty key would protect nothing");
            println!("{}", cyberimage_api::digest_hex(&key));
            Ok(())
        }
        Command::Models {
            command:
                cmd @ (ModelsCommand::Pull { .. }
                | ModelsCommand::Verify { .. }
                | ModelsCommand::Remove { .. }),
        } => {
            let config = Config::load(cli.config.as_deref(), FlagOverrides::default())?;
            models_cmd::files(config, cmd).await
        }
        Command::Models {
            command: ModelsCommand::List { json },
        } => {
            let config = Config::load(cli.config.as_deref(), FlagOverrides::default())?;
            models_cmd::list(&config, json)
        }
    }
}

/// Runs jobs until SIGTERM or Ctrl-C; the running job is re-queued.
async fn run_worker(config: Config) -> anyhow::Result<()> {
    let system = wiring::build(&config, true).await?;
    tracing::info!(
        database = %wiring::redact(&config.database_url()),
        data_dir = %config.data_dir.display(),
        threads = system.workers.len(),
        "worker running"
    );
    // Scripts read this line to know the worker is up.
    println!("cyberimage worker ready ({} threads)", system.workers.len());
    shutdown_signal().await;
    tracing::info!("shutting down: re-queueing running jobs");
    system.service.begin_shutdown();
    for w in system.workers {
        w.join().await;
    }
    Ok(())
}

async fn serve(config: Config, with_workers: bool) -> anyhow::Result<()> {
    let system = wiring::build(&config, with_workers).await?;
    if !with_workers || !config.database_url().starts_with("sqlite:") {
        // Other processes run jobs: carry their progress to our streams.
        system.service.spawn_progress_relay();
    }
    let api_keys = config.auth.api_keys()?;
    let app = router(
        system.service.clone(),
        &ApiConfig {
            max_body_bytes: config.max_body_bytes,
            api_keys: api_keys.clone(),
            allowed_origins: config.allowed_origins.clone(),
            mcp: mcp_options(&config),
            rate_limit: config.rate_limit.clone(),
            request_body_timeout: std::time::Duration::from_secs(
                config.request_body_timeout_secs.max(1),
            ),
            device: with_workers.then(|| config.engine.device.clone()),
            enricher: enricher(&config)?,
        },
    );
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && !api_keys.enabled() {
        tracing::warn!(
            %addr,
            "LISTENING ON A NON-LOOPBACK ADDRESS WITHOUT AN API KEY: anyone who can reach it can \
             generate, read and delete images; set auth.api_key_sha256"
        );
    }
    // Tests and scripts read this line to find a port-0 server.
    println!("cyberimage listening on http://{addr}");
    tracing::info!(data_dir = %config.data_dir.display(), "serving");
    cyberimage_api::serve(listener, app, shutdown_signal()).await?;
    tracing::info!("shutting down: re-queueing running jobs");
    system.service.begin_shutdown();
    for w in system.workers {
        w.join().await;
    }
    Ok(())
}

async fn doctor(config: Config) -> anyhow::Result<()> {
    // As `serve` would: the default model is chosen by what can run here.
    let probe = wiring::engine(&config)
        .ok()
        .map(|e| std::sync::Arc::new(e) as std::sync::Arc<dyn cyberimage_core::Generator>);
    let service = wiring::service(&config, probe).await?;
    let integrity = service.integrity_check().await?;
    println!("database integrity: {integrity}");
    let recovered = service.recover_stale_jobs().await?;
    println!(
        "interrupted jobs: {} re-queued, {} failed after their retries",
        recovered.requeued, recovered.failed
    );
    service.clean_tmp().await?;
    let fixed = service.reconcile_files().await?;
    println!(
        "image files without rows removed: {}; rows without files removed: {}",
        fixed.orphan_files_removed, fixed.dangling_rows_removed
    );
    println!(
        "image-to-image inputs no job names removed: {}",
        fixed.orphan_inputs_removed
    );
    let repaired =
        fixed.orphan_files_removed + fixed.dangling_rows_removed + fixed.orphan_inputs_removed;
    println!("repaired {repaired}");
    anyhow::ensure!(integrity == "ok", "the database failed its integrity check");
    Ok(())
}

fn inspect(file: &std::path::Path, as_json: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let info = cyberimage_api::png_info::describe(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    if info["source"].is_null() {
        println!("{}: no generation parameters", file.display());
        return Ok(());
    }
    let field = |k: &str| match &info[k] {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    println!("source:          {}", field("source"));
    println!("prompt:          {}", field("prompt"));
    println!("negative prompt: {}", field("negative_prompt"));
    println!(
        "model:           {} (hash {})",
        field("model"),
        field("model_hash")
    );
    println!("size:            {}x{}", field("width"), field("height"));
    println!(
        "steps {}, sampler {}, guidance {}, seed {}",
        field("steps"),
        field("sampler"),
        field("guidance_scale"),
        field("seed")
    );
    if let Some(extra) = info["extra"].as_object().filter(|e| !e.is_empty()) {
        for (k, v) in extra {
            println!("{k}: {}", v.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

fn mcp_options(config: &Config) -> cyberimage_api::McpOptions {
    config.mcp.clone()
}

/// Prompt enrichment as configured (`[enrich]`, else the CyberImage app's
/// `OPENAI_ENDPOINT` / `OPENAI_MODEL`); a malformed section stops start-up.
fn enricher(config: &Config) -> anyhow::Result<std::sync::Arc<cyberimage_api::Enricher>> {
    let settings = config.enrich.clone().with_app_environment();
    let mut enricher = cyberimage_api::Enricher::new(&settings, config.limits.max_prompt_chars)?;
    if !settings.local_model.trim().is_empty() {
        let local = local_chat::LocalQwen::new(std::path::Path::new(settings.local_model.trim()))?;
        enricher = enricher.with_local(std::sync::Arc::new(local));
    }
    let status = enricher.status();
    if status.configured {
        tracing::info!(
            endpoint = status.endpoint.as_deref().unwrap_or(""),
            model = status.model.as_deref().unwrap_or(""),
            "prompt enrichment on"
        );
    }
    Ok(std::sync::Arc::new(enricher))
}

/// MCP over stdio with the jobs service and workers in this process; ends
/// when the client closes stdin, re-queueing a job still running.
async fn mcp_stdio(config: Config) -> anyhow::Result<()> {
    let system = wiring::build(&config, true).await?;
    let server = cyberimage_api::McpServer::new(
        system.service.clone(),
        mcp_options(&config),
        enricher(&config)?,
    );
    tracing::info!(data_dir = %config.data_dir.display(), "serving MCP on stdio");
    cyberimage_api::mcp::stdio::serve(server, tokio::io::stdin(), tokio::io::stdout()).await?;
    system.service.begin_shutdown();
    for w in system.workers {
        w.join().await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn init_logging() {
    let default = if std::env::var("DEBUG").is_ok_and(|v| !v.is_empty() && v != "0") {
        "debug"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
