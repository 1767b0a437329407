//! Building the running system from a `Config`: database, image store,
//! catalogue, jobs service and workers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cyberimage_core::{Catalogue, Generator};
use cyberimage_db::{Database, PgDb, SqliteDb};
use cyberimage_engine::weights::scan::{scan, Skipped};
use cyberimage_engine::CandleGenerator;
use cyberimage_jobs::{JobService, JobsConfig, WorkerHandle};
use cyberimage_store::ImageStore;

use crate::config::Config;

pub struct System {
    pub service: Arc<JobService>,
    pub workers: Vec<WorkerHandle>,
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Other programs' LoRA folders inside a `[model_scan]` folder: ComfyUI's
/// `models/loras`, AUTOMATIC1111's `models/Lora` and `models/LyCORIS`.
const LORA_FOLDERS: [&str; 3] = ["loras", "Lora", "LyCORIS"];
/// Their upscaler folders: ComfyUI's `models/upscale_models`, A1111's
/// `models/ESRGAN` and `models/RealESRGAN`.
const UPSCALER_FOLDERS: [&str; 3] = ["upscale_models", "ESRGAN", "RealESRGAN"];

/// Their tiny preview decoders: ComfyUI's `models/vae_approx`, A1111's
/// `models/VAE-approx`.
const PREVIEW_DECODER_FOLDERS: [&str; 2] = ["vae_approx", "VAE-approx"];

/// The folders named `names` inside the `[model_scan]` folders.
pub fn scanned_folders(config: &Config, names: &[&str]) -> Vec<std::path::PathBuf> {
    config
        .model_scan
        .folders
        .iter()
        .flat_map(|root| names.iter().map(move |name| root.join(name)))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// The engine of this process, as `[engine]` configures it.
pub fn engine(config: &Config) -> anyhow::Result<CandleGenerator> {
    let mut engine = CandleGenerator::new(config.data_dir.join("models"), config.engine.clone())
        .map_err(anyhow::Error::msg)?
        .with_loras_dir(config.data_dir.join("loras"));
    for dir in scanned_folders(config, &LORA_FOLDERS) {
        engine = engine.with_loras_dir(dir);
    }
    engine = engine.with_preview_decoders_dir(config.data_dir.join("vae_approx"));
    for dir in scanned_folders(config, &PREVIEW_DECODER_FOLDERS) {
        engine = engine.with_preview_decoders_dir(dir);
    }
    Ok(engine)
}

/// The jobs service on the configured database and data dir, with no
/// recovery pass and no workers (for `doctor`); `probe` chooses the
/// default model (see [`catalogue`]).
pub async fn service(
    config: &Config,
    probe: Option<Arc<dyn Generator>>,
) -> anyhow::Result<Arc<JobService>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let url = config.database_url();
    let db: Arc<dyn Database> = if url.starts_with("sqlite:") {
        Arc::new(
            SqliteDb::open_url(&url)
                .await
                .with_context(|| format!("cannot open database {url}"))?,
        )
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(
            PgDb::open_url(&url)
                .await
                .with_context(|| format!("cannot connect to {}", redact(&url)))?,
        )
    } else {
        anyhow::bail!(
            "database_url {:?} is not supported; use sqlite://PATH or postgres://USER@HOST/DB",
            redact(&url)
        );
    };
    let store = ImageStore::open(&config.data_dir).context("cannot open the image folder")?;
    // The built-in upscalers' files, written out once (a few MB).
    let builtin_root = config.data_dir.join("models");
    let builtin = tokio::task::spawn_blocking(move || {
        cyberimage_engine::weights::builtin::materialize_upscalers(&builtin_root)
    })
    .await
    .context("writing the built-in upscalers panicked")?
    .context("cannot write the built-in upscalers")?;
    for (name, path) in builtin {
        store.upscalers().register_builtin(&name, path);
    }
    // ComfyUI's and AUTOMATIC1111's LoRA and upscaler folders beside the
    // checkpoints `[model_scan]` reads.
    for dir in scanned_folders(config, &LORA_FOLDERS) {
        tracing::info!(folder = %dir.display(), "reading LoRAs from a scanned folder");
        store.loras().add_folder(dir);
    }
    for dir in scanned_folders(config, &UPSCALER_FOLDERS) {
        tracing::info!(folder = %dir.display(), "reading upscalers from a scanned folder");
        store.upscalers().add_folder(dir);
    }
    // Scanning reads checkpoint headers: file work, off the async threads.
    let scanned = config.clone();
    let (catalogue, skipped) =
        tokio::task::spawn_blocking(move || catalogue(&scanned, probe.as_deref()))
            .await
            .context("the model scan panicked")??;
    for file in &skipped {
        tracing::warn!(path = %file.path.display(), reason = %file.reason, "scanned file not offered as a model");
    }
    let catalogue = Arc::new(catalogue);
    let jobs_config = JobsConfig {
        limits: config.limits.clone(),
        max_queue: config.queue.max_pending,
        max_attempts: config.queue.max_attempts,
        poll_interval: Duration::from_millis(config.queue.poll_interval_ms.max(10)),
        heartbeat_interval: Duration::from_millis(config.queue.heartbeat_interval_ms.max(100)),
        // Below a few heartbeats, live jobs would look dead.
        stale_after: Duration::from_secs(config.queue.stale_after_secs).max(Duration::from_millis(
            config.queue.heartbeat_interval_ms.max(100) * 3,
        )),
        claim_only_runnable: config.queue.claim_only_runnable.unwrap_or(false),
        ..Default::default()
    };
    let service = JobService::new(db, store, catalogue, jobs_config);
    Ok(service)
}

/// The configured models, then those found in `[model_scan]` folders
/// (with the files found there that cannot be used, and why), with the
/// default chosen among those `probe` can run (`Catalogue::choose_default`);
/// without a probe, the static rule. Reads folders and file headers: call
/// it off the async threads.
pub fn catalogue(
    config: &Config,
    probe: Option<&dyn Generator>,
) -> anyhow::Result<(Catalogue, Vec<Skipped>)> {
    let mut models = config.models.clone();
    let mut skipped = Vec::new();
    if !config.model_scan.folders.is_empty() {
        let taken: Vec<String> = models.iter().map(|m| m.key.clone()).collect();
        let report = scan(
            &config.model_scan.folders,
            &config.model_scan.configs,
            &taken,
        );
        models.extend(report.models);
        skipped = report.skipped;
    }
    let mut catalogue = Catalogue::new(models)?;
    if let Some(probe) = probe {
        catalogue.choose_default(|m| probe.can_run(m).is_ok());
    }
    Ok((catalogue, skipped))
}

/// The service, and with `with_workers` its workers. One engine serves as
/// the default model's probe and runs the jobs. A process without workers
/// still probes (it only looks at files); an engine that cannot start here
/// (a bf16 setting on a CPU without it) then leaves the static rule, and
/// fails a process that runs jobs.
pub async fn build(config: &Config, with_workers: bool) -> anyhow::Result<System> {
    let engine = match engine(config) {
        Ok(engine) => Some(Arc::new(engine) as Arc<dyn Generator>),
        Err(e) if with_workers => return Err(e),
        Err(_) => None,
    };
    let service = self::service(config, engine.clone()).await?;
    if let Some(engine) = &engine {
        // Upscaling requests are checked against the upscaler's weights
        // wherever they arrive, workers or not.
        service.set_file_reader(engine.clone());
    }
    let report = service.recover().await?;
    if report.requeued + report.failed > 0 {
        tracing::warn!(
            requeued = report.requeued,
            failed = report.failed,
            "recovered jobs interrupted by an earlier stop"
        );
    }
    let mut workers = Vec::new();
    if let Some(generator) = engine.filter(|_| with_workers) {
        // This process runs jobs: it can say which models can run here.
        service.set_model_probe(generator.clone());
        for i in 0..config.queue.workers.max(1) {
            workers.push(service.spawn_worker(generator.clone(), &format!("w{i}"))?);
        }
    }
    Ok(System { service, workers })
}
