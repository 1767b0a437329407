//! The worker loop: claim a job, run the engine, save the images, record
//! the outcome.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cyberimage_core::time::now;
use cyberimage_core::{
    panic_message, CancelToken, EngineError, GeneratedImage, GenerationSpec, Generator, ImageId,
    ImageRecord, Job, JobId, JobStatus, PreviewImage, Progress, ProgressObserver, ProgressUpdate,
    Stage, UpscaleRequest,
};
use cyberimage_store::{encode_png, thumbnail_png, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::engine_thread::{EngineTask, EngineThread};
use crate::metadata::png_text_chunks;
use crate::JobService;

pub struct WorkerHandle {
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Waits for the worker to put its current job down after
    /// [`JobService::begin_shutdown`].
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Forwards engine progress (from the engine thread) into the async world,
/// timing the denoising steps on the way.
struct ChannelObserver {
    tx: mpsc::UnboundedSender<ProgressUpdate>,
    service: Arc<JobService>,
    job: JobId,
    model: String,
    last_step: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ProgressObserver for ChannelObserver {
    fn on_progress(&self, update: ProgressUpdate) {
        if let ProgressUpdate::Step { .. } = update {
            let now = std::time::Instant::now();
            let mut last = self.last_step.lock().expect("step clock");
            // Step-to-step only: the first step also paid for text encoding.
            if let Some(prev) = last.replace(now) {
                self.service
                    .metrics
                    .observe_step(&self.model, (now - prev).as_secs_f64());
            }
        } else {
            *self.last_step.lock().expect("step clock") = None;
        }
        let _ = self.tx.send(update);
    }

    /// Kept in memory for `/api/preview/{job}` and announced on the event
    /// bus (a small PNG, encoded here on the engine thread).
    fn on_preview(&self, preview: PreviewImage) {
        let picture = cyberimage_store::RgbPicture {
            width: preview.width,
            height: preview.height,
            rgb: preview.rgb,
        };
        if let Ok(png) = picture.to_png() {
            self.service.set_preview(self.job, preview.step, png);
        }
    }
}

/// Keeps the live-worker gauge true however the worker loop ends.
#[cfg(test)]
mod tests;

#[cfg(test)]
static PANIC_WHILE_SAVING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Where a test's injected panic goes off while saving (nothing outside
/// tests).
fn fault_point_saving() {
    #[cfg(test)]
    if PANIC_WHILE_SAVING.swap(false, Ordering::SeqCst) {
        panic!("injected fault while saving");
    }
}

struct AliveGuard(Arc<JobService>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.metrics.workers_alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl JobService {
    pub fn spawn_worker(
        self: &Arc<Self>,
        generator: Arc<dyn Generator>,
        name: &str,
    ) -> std::io::Result<WorkerHandle> {
        let engine = EngineThread::spawn(generator.clone(), name)?;
        let service = self.clone();
        let worker_id = format!("{}:{}:{name}", hostname(), std::process::id());
        self.metrics.workers_spawned.fetch_add(1, Ordering::SeqCst);
        self.metrics.workers_alive.fetch_add(1, Ordering::SeqCst);
        let guard = AliveGuard(self.clone());
        let probe = generator.clone();
        let task = tokio::spawn(async move {
            let _alive = guard;
            service.worker_loop(engine, probe, worker_id).await
        });
        Ok(WorkerHandle { task })
    }

    /// The catalogue models `generator` can run, when workers only claim
    /// those. Asked again each recovery pass: weights may arrive meanwhile.
    async fn runnable_models(&self, generator: &Arc<dyn Generator>) -> Option<Vec<String>> {
        if !self.config.claim_only_runnable {
            return None;
        }
        // Should the check itself fail, claim nothing rather than jobs this
        // worker may not be able to run; the next pass asks again.
        let probed = self
            .probe_models(generator.clone())
            .await
            .unwrap_or_default();
        Some(
            probed
                .into_iter()
                .filter(|(_, can_run)| can_run.is_ok())
                .map(|(key, _)| key)
                .collect(),
        )
    }

    async fn worker_loop(
        self: Arc<Self>,
        engine: EngineThread,
        generator: Arc<dyn Generator>,
        worker_id: String,
    ) {
        let mut last_recovery = tokio::time::Instant::now();
        let mut last_model: Option<String> = None;
        let mut runnable = self.runnable_models(&generator).await;
        loop {
            if self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            // Jobs of workers that died (in any process) go back to the queue.
            if last_recovery.elapsed() >= self.config.stale_after {
                last_recovery = tokio::time::Instant::now();
                runnable = self.runnable_models(&generator).await;
                match self.recover_stale_jobs().await {
                    Ok(r) if r.requeued + r.failed > 0 => tracing::warn!(
                        requeued = r.requeued,
                        failed = r.failed,
                        "recovered jobs of dead workers"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "recovery pass failed"),
                }
                // Files a crash left without rows were too young to judge at
                // start-up; they are old enough now.
                match self.reconcile_files().await {
                    Ok(f)
                        if f.orphan_files_removed
                            + f.dangling_rows_removed
                            + f.orphan_inputs_removed
                            > 0 =>
                    {
                        tracing::warn!(?f, "reconciled image files with the database")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "reconcile pass failed"),
                }
            }
            // Register interest before looking, so a submit between the
            // empty claim and the wait is not missed.
            let notified = self.wake.notified();
            match self
                .db
                .claim_next(&worker_id, last_model.as_deref(), runnable.as_deref())
                .await
            {
                Ok(Some(job)) => {
                    // The engine keeps the last model loaded: prefer its jobs.
                    last_model = Some(job.spec.model.clone());
                    self.run_job(&engine, job).await
                }
                Ok(None) => {
                    let _ = tokio::time::timeout(self.config.poll_interval, notified).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "claiming a job failed; retrying");
                    tokio::time::sleep(self.config.poll_interval).await;
                }
            }
        }
    }

    async fn run_job(self: &Arc<Self>, engine: &EngineThread, job: Job) {
        let id = job.id;
        let started = std::time::Instant::now();
        tracing::info!(job = %id, model = %job.spec.model, attempt = job.attempts, "job started");
        let task = match self.engine_task(&job).await {
            Ok(task) => task,
            Err(reason) => {
                self.finish_failed(&job, reason).await;
                return;
            }
        };
        let input = match &job.spec.init_image {
            Some(init) => match self.load_init_picture(init).await {
                Ok(input) => Some(input),
                Err(reason) => {
                    self.finish_failed(&job, reason).await;
                    return;
                }
            },
            None => None,
        };
        let cancel = CancelToken::new();
        self.running
            .lock()
            .expect("running map")
            .insert(id, cancel.clone());
        self.publish(id, JobStatus::Processing, job.progress, None);

        let (tx, mut rx) = mpsc::unbounded_channel();
        let generation = engine.run(
            task,
            job.spec.clone(),
            input,
            Box::new(ChannelObserver {
                tx,
                service: self.clone(),
                job: id,
                model: job.spec.model.clone(),
                last_step: std::sync::Mutex::new(None),
            }),
            cancel.clone(),
        );
        tokio::pin!(generation);
        let total = job.spec.total_steps();
        let mut last = job.progress;
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            // Biased towards progress, so the last steps are recorded before
            // the result is handled.
            tokio::select! {
                biased;
                Some(update) = rx.recv() => {
                    // Coalesce a burst of updates into one database write.
                    let mut progress = to_progress(update, total, last);
                    while let Ok(next) = rx.try_recv() {
                        progress = to_progress(next, total, progress);
                    }
                    if progress != last {
                        last = progress;
                        self.record_progress(&job, progress, &cancel).await;
                    }
                }
                _ = heartbeat.tick() => {
                    // Long stretches without steps (model loading) still
                    // show this worker alive; a cancel elsewhere stops it.
                    if let Ok(false) = self.db.heartbeat(id).await {
                        cancel.cancel();
                    }
                }
                result = &mut generation => break result,
            }
        };
        // A fast engine can finish within the poll that hands it the work,
        // before the progress branch ever saw an update: record what is left.
        let mut rest = last;
        while let Ok(update) = rx.try_recv() {
            rest = to_progress(update, total, rest);
        }
        if rest != last && outcome.is_ok() {
            self.record_progress(&job, rest, &cancel).await;
        }

        let engine_seconds = started.elapsed().as_secs_f64();
        let outcome = match outcome {
            Ok(images) => {
                let saving = Progress {
                    stage: Stage::Saving,
                    step: total,
                    total_steps: total,
                };
                self.record_progress(&job, saving, &cancel).await;
                let images = with_upscale_metadata(&job.spec, images);
                self.save_and_complete(&job, images, engine_seconds).await
            }
            Err(e) => Err(e),
        };
        self.running.lock().expect("running map").remove(&id);
        self.retire_preview(id);

        let model = job.spec.model.as_str();
        match &outcome {
            Ok(()) => {
                self.metrics.job_finished(model, "completed");
                self.metrics
                    .observe_generation(model, started.elapsed().as_secs_f64());
            }
            Err(EngineError::Cancelled) if self.shutting_down.load(Ordering::SeqCst) => {}
            Err(EngineError::Cancelled) => self.metrics.job_finished(model, "cancelled"),
            Err(_) => self.metrics.job_finished(model, "failed"),
        }
        match outcome {
            Ok(()) => {}
            Err(EngineError::Cancelled) if self.shutting_down.load(Ordering::SeqCst) => {
                match self.db.requeue_job(id).await {
                    Ok(true) => tracing::info!(job = %id, "interrupted by shutdown; re-queued"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(job = %id, error = %e, "re-queue failed"),
                }
            }
            Err(EngineError::Cancelled) => tracing::info!(job = %id, "job cancelled"),
            Err(e) => self.finish_failed(&job, e.to_string()).await,
        }
    }

    /// What the engine runs for `job`, or why the job cannot run (its
    /// model no longer configured, a LoRA or upscaler gone or changed).
    async fn engine_task(&self, job: &Job) -> Result<EngineTask, String> {
        if let Some(upscale) = &job.spec.upscale {
            let request = self
                .upscale_request(upscale, job.spec.width, job.spec.height)
                .await?;
            return Ok(EngineTask::Upscale(request));
        }
        let Some(model) = self.catalogue().get(&job.spec.model).cloned() else {
            return Err(format!(
                "model {:?} is no longer configured",
                job.spec.model
            ));
        };
        self.verify_loras(&job.spec).await?;
        if let Some(hires) = &job.spec.hires {
            let upscaler = match &hires.upscaler {
                Some(name) => Some(
                    self.upscaler_weights(name, &hires.upscaler_sha256)
                        .await
                        .map(|weights| UpscaleRequest {
                            weights,
                            width: hires.width,
                            height: hires.height,
                            tile: 0,
                        })?,
                ),
                None => None,
            };
            return Ok(EngineTask::Hires(model, upscaler));
        }
        Ok(EngineTask::Generate(model))
    }

    /// Persists progress and publishes it. A job that is no longer
    /// `processing` in the database was cancelled, perhaps by another
    /// process: trip the token so the engine stops at its next step.
    async fn record_progress(&self, job: &Job, progress: Progress, cancel: &CancelToken) {
        match self.db.update_progress(job.id, progress).await {
            Ok(true) => self.publish(job.id, JobStatus::Processing, progress, None),
            Ok(false) => cancel.cancel(),
            Err(e) => tracing::warn!(job = %job.id, error = %e, "progress not persisted"),
        }
    }

    /// `engine_seconds`: from the job's start to the engine's images, for
    /// the log line that splits a job's time between engine and saving.
    async fn save_and_complete(
        &self,
        job: &Job,
        images: Vec<GeneratedImage>,
        engine_seconds: f64,
    ) -> Result<(), EngineError> {
        let saving_started = std::time::Instant::now();
        let store = self.store.clone();
        let spec = job.spec.clone();
        let job_id = job.id;
        let saved = tokio::task::spawn_blocking(move || -> Result<Vec<ImageRecord>, StoreError> {
            fault_point_saving();
            let mut records = Vec::with_capacity(images.len());
            for (index, image) in images.iter().enumerate() {
                let record = ImageRecord {
                    id: ImageId::new(),
                    job_id,
                    index: index as u32,
                    model: spec.model.clone(),
                    prompt: spec.prompt.clone(),
                    negative_prompt: spec.negative_prompt.clone(),
                    width: image.width,
                    height: image.height,
                    steps: spec.steps,
                    guidance_scale: spec.guidance_scale,
                    seed: image.seed,
                    created_at: now(),
                    favorite: false,
                };
                let png = encode_png(image, &png_text_chunks(&record, image))?;
                let thumb = thumbnail_png(image)?;
                if let Err(e) = store.save(record.id, &png, &thumb) {
                    for r in records.iter().chain(std::iter::once(&record)) {
                        let _ = store.delete(r.id);
                    }
                    return Err(e);
                }
                records.push(record);
            }
            Ok(records)
        })
        .await;
        // A panic while saving fails this job, not the worker. Files it
        // wrote before panicking have no rows: the periodic reconcile pass
        // removes them.
        let records = match saved {
            Ok(saved) => {
                saved.map_err(|e| EngineError::Failed(format!("could not save image: {e}")))?
            }
            Err(join) if join.is_panic() => {
                let message = panic_message(&*join.into_panic());
                return Err(EngineError::Failed(format!(
                    "saving the images panicked: {message}"
                )));
            }
            Err(join) => {
                return Err(EngineError::Failed(format!(
                    "saving the images was interrupted: {join}"
                )))
            }
        };
        match self.db.complete_job(job.id, &records).await {
            Ok(true) => {
                tracing::info!(
                    job = %job.id,
                    images = records.len(),
                    engine_seconds = format!("{engine_seconds:.3}"),
                    saving_seconds = format!("{:.3}", saving_started.elapsed().as_secs_f64()),
                    "job completed"
                );
                let done = Progress {
                    stage: Stage::Completed,
                    step: job.spec.total_steps(),
                    total_steps: job.spec.total_steps(),
                };
                for record in &records {
                    self.publish_image(record.id, crate::ImageChange::Created);
                }
                self.publish(job.id, JobStatus::Completed, done, None);
                Ok(())
            }
            outcome => {
                // Cancelled while saving, or the database refused: the files
                // must not outlive the missing rows.
                let ids = records.iter().map(|r| r.id).collect();
                if let Err(e) = self.delete_files(ids).await {
                    tracing::warn!(job = %job.id, error = %e, "files of an unrecorded job left for reconcile");
                }
                match outcome {
                    Ok(_) => Err(EngineError::Cancelled),
                    Err(e) => Err(EngineError::Failed(format!("could not record images: {e}"))),
                }
            }
        }
    }

    async fn finish_failed(&self, job: &Job, reason: String) {
        tracing::warn!(job = %job.id, %reason, "job failed");
        match self.db.fail_job(job.id, &reason).await {
            Ok(_) => {
                let failed = Progress {
                    stage: Stage::Failed,
                    ..job.progress
                };
                self.publish(job.id, JobStatus::Failed, failed, Some(reason));
            }
            Err(e) => tracing::error!(job = %job.id, error = %e, "could not record failure"),
        }
    }
}

/// An upscaled picture's record of what made it: the upscaler (name,
/// digest, factor) and its input, for the PNG's metadata.
fn with_upscale_metadata(
    spec: &GenerationSpec,
    images: Vec<GeneratedImage>,
) -> Vec<GeneratedImage> {
    let Some(upscale) = &spec.upscale else {
        return images;
    };
    let mut extra = vec![
        ("upscaler".to_string(), upscale.upscaler.clone()),
        ("upscaler_sha256".to_string(), upscale.sha256.clone()),
        ("upscale_by".to_string(), upscale.scale.to_string()),
    ];
    if let Some(init) = &spec.init_image {
        extra.push(("init_image_sha256".into(), init.sha256.clone()));
    }
    if let Some(source) = &upscale.source_image {
        extra.push(("source_image".into(), source.clone()));
    }
    images
        .into_iter()
        .map(|mut image| {
            image.extra_metadata.extend(extra.iter().cloned());
            image
        })
        .collect()
}

fn to_progress(update: ProgressUpdate, total: u32, last: Progress) -> Progress {
    match update {
        ProgressUpdate::LoadingModel => Progress {
            stage: Stage::LoadingModel,
            step: last.step,
            total_steps: total,
        },
        ProgressUpdate::Step { done, .. } => Progress {
            stage: Stage::Generating,
            step: done.min(total),
            total_steps: total,
        },
        ProgressUpdate::Decoding => Progress {
            stage: Stage::Generating,
            ..last
        },
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}
