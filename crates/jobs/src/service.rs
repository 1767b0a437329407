//! [`JobService`]: submit, inspect, cancel and browse, for every adapter.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyberimage_core::time::now;
use cyberimage_core::{
    CancelToken, Catalogue, GenerationSpec, Generator, ImageId, ImageRecord, Job, JobId, JobStatus,
    Limits, Progress, SpecRequest,
};
use cyberimage_db::{
    CancelOutcome, Database, GalleryPage, GalleryQuery, QueueCounts, QueueStats, StatusCounts,
};
use cyberimage_store::{ImageStore, StoreError, Variant};
use tokio::sync::{broadcast, Notify};

use crate::{ImageChange, ImageEvent, JobEvent, JobsError};

#[derive(Clone, Debug)]
pub struct JobsConfig {
    pub limits: Limits,
    /// Pending jobs beyond this are refused with `QueueFull`.
    pub max_queue: u32,
    /// Claims a job may use before a crash-interrupted job is failed.
    pub max_attempts: u32,
    /// How often idle workers look for jobs submitted by other processes.
    pub poll_interval: Duration,
    /// Seconds a refused client is told to wait per queued job (at least 1 s).
    pub retry_after_per_job_secs: f64,
    /// How often a running job's worker proves it is alive.
    pub heartbeat_interval: Duration,
    /// A `processing` job without a heartbeat for this long belongs to a
    /// dead worker and is recovered.
    pub stale_after: Duration,
    /// Workers claim only jobs for models their engine can run (weights
    /// present), leaving the rest to other workers sharing the queue. Off,
    /// a job for a missing model is claimed and fails with the reason.
    pub claim_only_runnable: bool,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_queue: 100,
            max_attempts: 3,
            poll_interval: Duration::from_millis(1000),
            retry_after_per_job_secs: 0.5,
            heartbeat_interval: Duration::from_secs(5),
            stale_after: Duration::from_secs(30),
            claim_only_runnable: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub orphan_files_removed: u64,
    pub dangling_rows_removed: u64,
    /// Image-to-image inputs no job names any more (their jobs deleted).
    pub orphan_inputs_removed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QueueView {
    pub counts: QueueCounts,
    /// Every job by status.
    pub totals: StatusCounts,
    /// Pending and processing jobs, oldest first.
    pub active: Vec<Job>,
    /// The most recent failed jobs, newest first.
    pub recent_failures: Vec<Job>,
}

/// A running job's latest live preview: (step, PNG).
pub type LatestPreview = (u32, Arc<Vec<u8>>);

/// How long a finished job's last preview stays downloadable: a page told
/// of a preview by an event may fetch it after the job has ended, and a
/// 404 there would only be noise.
const FINISHED_PREVIEW_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The latest preview of a job run here; `finished` once the job ended.
pub(crate) struct PreviewSlot {
    latest: LatestPreview,
    finished: Option<std::time::Instant>,
}

pub struct JobService {
    pub(crate) db: Arc<dyn Database>,
    pub(crate) store: ImageStore,
    pub(crate) catalogue: Arc<Catalogue>,
    pub(crate) config: JobsConfig,
    events: broadcast::Sender<JobEvent>,
    image_events: broadcast::Sender<ImageEvent>,
    pub(crate) wake: Notify,
    /// Cancel tokens of jobs running in this process.
    pub(crate) running: Mutex<HashMap<JobId, CancelToken>>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) metrics: crate::metrics::JobMetrics,
    /// The latest live preview (step, PNG) of each job running here.
    pub(crate) previews: Mutex<HashMap<JobId, PreviewSlot>>,
    model_probe: std::sync::RwLock<Option<Arc<dyn Generator>>>,
    /// Reads upscaler and LoRA files for requests (`upscale.rs`,
    /// `loras.rs`).
    pub(crate) file_reader: std::sync::RwLock<Option<Arc<dyn Generator>>>,
}

impl JobService {
    pub fn new(
        db: Arc<dyn Database>,
        store: ImageStore,
        catalogue: Arc<Catalogue>,
        config: JobsConfig,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        let (image_events, _) = broadcast::channel(1024);
        Arc::new(Self {
            db,
            store,
            catalogue,
            config,
            events,
            image_events,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            previews: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            metrics: Default::default(),
            model_probe: Default::default(),
            file_reader: Default::default(),
        })
    }

    /// Lets adapters tell users which models can run here (weights present,
    /// pipeline implemented), by asking the engine.
    pub fn set_model_probe(&self, probe: Arc<dyn Generator>) {
        *self.model_probe.write().expect("probe lock") = Some(probe);
    }

    /// Per configured model: `Ok` when it can run here, else why not;
    /// `None` when no engine is attached to this process (a front end).
    pub async fn model_availability(&self) -> Option<Vec<(String, Result<(), String>)>> {
        let probe = self.model_probe.read().expect("probe lock").clone()?;
        Some(self.probe_models(probe).await.unwrap_or_else(|join| {
            let reason = format!("the model check failed: {join}");
            self.catalogue
                .models()
                .iter()
                .map(|m| (m.key.clone(), Err(reason.clone())))
                .collect()
        }))
    }

    /// Asks `generator` whether each catalogue model can run, and if not
    /// why. The engine reads folders and weight headers to answer, so this
    /// runs on a blocking thread, never on the async runtime's; `Err` when
    /// that thread panicked.
    pub(crate) async fn probe_models(
        &self,
        generator: Arc<dyn Generator>,
    ) -> Result<Vec<(String, Result<(), String>)>, tokio::task::JoinError> {
        let catalogue = self.catalogue.clone();
        tokio::task::spawn_blocking(move || {
            catalogue
                .models()
                .iter()
                .map(|m| {
                    (
                        m.key.clone(),
                        generator.can_run(m).map_err(|e| e.to_string()),
                    )
                })
                .collect()
        })
        .await
    }

    pub fn metrics(&self) -> &crate::metrics::JobMetrics {
        &self.metrics
    }

    /// Whether the database answers a query now.
    pub async fn database_ready(&self) -> Result<QueueCounts, JobsError> {
        Ok(self.db.queue_counts().await?)
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// Image changes made in this process, as they happen.
    pub fn subscribe_images(&self) -> broadcast::Receiver<ImageEvent> {
        self.image_events.subscribe()
    }

    pub(crate) fn publish_image(&self, image_id: ImageId, change: ImageChange) {
        // No listeners is the normal case, not an error.
        let _ = self.image_events.send(ImageEvent { image_id, change });
    }

    pub(crate) fn publish(
        &self,
        job_id: JobId,
        status: JobStatus,
        progress: Progress,
        error: Option<String>,
    ) {
        // No listeners is the normal case, not an error.
        let _ = self.events.send(JobEvent {
            job_id,
            status,
            progress,
            error,
            preview_step: None,
        });
    }

    /// Records a running job's latest preview and announces it.
    pub(crate) fn set_preview(&self, job_id: JobId, step: u32, png: Vec<u8>) {
        self.previews.lock().expect("previews").insert(
            job_id,
            PreviewSlot {
                latest: (step, Arc::new(png)),
                finished: None,
            },
        );
        let progress = Progress {
            stage: cyberimage_core::Stage::Generating,
            step,
            total_steps: 0,
        };
        let _ = self.events.send(JobEvent {
            job_id,
            status: JobStatus::Processing,
            progress,
            error: None,
            preview_step: Some(step),
        });
    }

    /// The latest live preview of a job running in this process: (step,
    /// PNG). None once it has finished, or when another process runs it.
    pub fn preview(&self, job_id: JobId) -> Option<LatestPreview> {
        let previews = self.previews.lock().expect("previews");
        let slot = previews.get(&job_id)?;
        slot.finished.is_none().then(|| slot.latest.clone())
    }

    /// The latest preview to download: the running job's, or a finished
    /// one's for `FINISHED_PREVIEW_GRACE` after it ended.
    pub fn downloadable_preview(&self, job_id: JobId) -> Option<LatestPreview> {
        let previews = self.previews.lock().expect("previews");
        let slot = previews.get(&job_id)?;
        match slot.finished {
            Some(at) if at.elapsed() > FINISHED_PREVIEW_GRACE => None,
            _ => Some(slot.latest.clone()),
        }
    }

    /// The job has ended: its preview stays downloadable a little while;
    /// those of jobs that ended longer ago go.
    pub(crate) fn retire_preview(&self, job_id: JobId) {
        let mut previews = self.previews.lock().expect("previews");
        if let Some(slot) = previews.get_mut(&job_id) {
            slot.finished = Some(std::time::Instant::now());
        }
        previews.retain(|_, slot| {
            slot.finished
                .is_none_or(|at| at.elapsed() <= FINISHED_PREVIEW_GRACE)
        });
    }

    /// Re-queues (or fails) jobs whose worker stopped heart-beating.
    pub async fn recover_stale_jobs(&self) -> Result<cyberimage_db::RecoveryReport, JobsError> {
        let stale_after =
            chrono::Duration::from_std(self.config.stale_after).unwrap_or(chrono::Duration::MAX);
        Ok(self
            .db
            .recover_interrupted(self.config.max_attempts, now() - stale_after)
            .await?)
    }

    /// The database's own consistency check (`"ok"` when sound).
    pub async fn integrity_check(&self) -> Result<String, JobsError> {
        Ok(self.db.integrity_check().await?)
    }

    /// Removes half-written files of interrupted saves.
    pub async fn clean_tmp(&self) -> Result<(), JobsError> {
        let store = self.store.clone();
        file_work(move || store.clean_tmp()).await?;
        Ok(())
    }

    /// Start-up pass: recover jobs a crash left running, drop half-written
    /// files, and reconcile image files with image rows.
    pub async fn recover(&self) -> Result<cyberimage_db::RecoveryReport, JobsError> {
        let report = self.recover_stale_jobs().await?;
        self.clean_tmp().await?;
        let fixed = self.reconcile_files().await?;
        if fixed.orphan_files_removed + fixed.dangling_rows_removed > 0 {
            tracing::warn!(?fixed, "reconciled image files with the database");
        }
        Ok(report)
    }

    /// Removes files no row points at (a crash between file and row) and
    /// rows whose file is gone. Files younger than `stale_after` are left
    /// alone: another process may be about to insert their rows.
    pub async fn reconcile_files(&self) -> Result<ReconcileReport, JobsError> {
        let rows: HashSet<ImageId> = self.db.all_image_ids().await?.into_iter().collect();
        let store = self.store.clone();
        let min_age = self.config.stale_after;
        let (on_disk, young) = file_work(move || {
            let ids = store.list_ids()?;
            let young: HashSet<ImageId> = ids
                .iter()
                .copied()
                .filter(|id| store.age(*id, Variant::Full).is_some_and(|a| a < min_age))
                .collect();
            Ok((ids, young))
        })
        .await?;
        let on_disk: HashSet<ImageId> = on_disk.into_iter().collect();
        let mut report = ReconcileReport::default();
        let orphans: Vec<ImageId> = on_disk
            .difference(&rows)
            .filter(|id| !young.contains(id))
            .copied()
            .collect();
        report.orphan_files_removed = orphans.len() as u64;
        let mut to_delete = orphans;
        for id in rows.difference(&on_disk) {
            if self.db.delete_image(*id).await? {
                to_delete.push(*id);
                report.dangling_rows_removed += 1;
                self.publish_image(*id, ImageChange::Deleted);
            }
        }
        self.delete_files(to_delete).await?;
        // Inputs are written before their job's row: a young one may be a
        // submission in flight, so only those older than `stale_after` go.
        let referenced: HashSet<String> = self.db.referenced_inputs().await?.into_iter().collect();
        let store = self.store.clone();
        report.orphan_inputs_removed = file_work(move || {
            let mut removed = 0;
            for (digest, age) in store.list_inputs()? {
                if age >= min_age && !referenced.contains(&digest) {
                    store.delete_input(&digest)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await?;
        Ok(report)
    }

    /// Deletes images' files on a blocking thread (file-system work stays
    /// off the async runtime's threads).
    pub(crate) async fn delete_files(&self, ids: Vec<ImageId>) -> Result<(), JobsError> {
        if ids.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        file_work(move || ids.iter().try_for_each(|id| store.delete(*id))).await?;
        Ok(())
    }

    pub async fn submit(&self, request: SpecRequest) -> Result<Job, JobsError> {
        self.refuse_when_shutting_down()?;
        let mut request = request;
        let picture = self.init_picture(&mut request).await?;
        let strength = request.strength;
        let mask = crate::inputs::MaskOptions::of(&request);
        let mut spec =
            request.resolve(&self.catalogue, &self.config.limits, rand::random::<u64>)?;
        self.check_loras(&mut spec).await?;
        self.check_hires_upscaler(&mut spec).await?;
        if let Some(picture) = picture {
            spec.init_image = Some(
                self.keep_init_picture(picture, spec.width, spec.height, strength, mask)
                    .await?,
            );
        }
        self.enqueue(spec).await
    }

    pub(crate) fn refuse_when_shutting_down(&self) -> Result<(), JobsError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(JobsError::ShuttingDown);
        }
        Ok(())
    }

    /// Queues a checked spec (within the queue bound) and wakes a worker.
    pub(crate) async fn enqueue(&self, spec: GenerationSpec) -> Result<Job, JobsError> {
        let job = Job::pending(spec);
        match self.db.insert_job(&job, self.config.max_queue).await {
            Ok(()) => {}
            Err(cyberimage_db::DbError::QueueFull) => {
                let pending = self.db.queue_counts().await?.pending;
                let secs = (pending as f64 * self.config.retry_after_per_job_secs).ceil();
                return Err(JobsError::QueueFull {
                    pending,
                    retry_after_secs: (secs as u64).max(1),
                });
            }
            Err(e) => return Err(e.into()),
        }
        self.publish(job.id, job.status, job.progress, None);
        // One job needs one worker; if none is idle the permit is kept for
        // the next one to look.
        self.wake.notify_one();
        Ok(job)
    }

    pub async fn job(&self, id: JobId) -> Result<Job, JobsError> {
        self.db.get_job(id).await?.ok_or(JobsError::JobNotFound)
    }

    /// Publishes progress of jobs that workers in *other* processes run:
    /// their events never reach this process's bus, so a front end without
    /// workers (`serve --no-worker`) reads the active jobs every
    /// `poll_interval` and publishes what changed, including jobs that left
    /// the active set (finished). Runs until the service shuts down.
    pub fn spawn_progress_relay(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            let mut seen: HashMap<JobId, (JobStatus, Progress)> = HashMap::new();
            let mut tick = tokio::time::interval(service.config.poll_interval);
            while !service.shutting_down.load(Ordering::SeqCst) {
                tick.tick().await;
                let active = match service
                    .db
                    .list_jobs(&[JobStatus::Pending, JobStatus::Processing], 500)
                    .await
                {
                    Ok(jobs) => jobs,
                    Err(e) => {
                        tracing::warn!(error = %e, "progress relay cannot read jobs");
                        continue;
                    }
                };
                let mut now_seen = HashMap::with_capacity(active.len());
                for job in active {
                    let state = (job.status, job.progress);
                    if seen.get(&job.id) != Some(&state) {
                        service.publish(job.id, job.status, job.progress, None);
                    }
                    now_seen.insert(job.id, state);
                }
                for gone in seen.keys().filter(|id| !now_seen.contains_key(id)) {
                    if let Ok(job) = service.job(*gone).await {
                        service.publish(job.id, job.status, job.progress, job.error.clone());
                    }
                }
                seen = now_seen;
            }
        })
    }

    /// Waits until job `id` is finished and returns it, calling
    /// `on_progress` as it advances. Events make it prompt; a periodic
    /// re-read covers jobs run by other processes, whose events this
    /// process never sees. Dropping the future stops waiting, nothing else.
    pub async fn wait_until_finished(
        &self,
        id: JobId,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Job, JobsError> {
        // Subscribe before the first read, so no event falls in between.
        let mut events = self.events.subscribe();
        let mut poll =
            tokio::time::interval(self.config.poll_interval.max(Duration::from_millis(200)));
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) if ev.job_id == id && ev.preview_step.is_some() => continue,
                    Ok(ev) if ev.job_id == id && !ev.status.is_terminal() => {
                        on_progress(&ev.progress);
                        continue;
                    }
                    Ok(ev) if ev.job_id != id => continue,
                    // Finished, lagged or closed: the database decides.
                    _ => {}
                },
                _ = poll.tick() => {}
            }
            let job = self.job(id).await?;
            if job.status.is_terminal() {
                return Ok(job);
            }
        }
    }

    /// Cancels a pending or running job. A running job stops at its next
    /// step; its worker stores nothing.
    pub async fn cancel(&self, id: JobId) -> Result<Job, JobsError> {
        match self.db.cancel_job(id, "cancelled by request").await? {
            CancelOutcome::NotFound => Err(JobsError::JobNotFound),
            CancelOutcome::AlreadyFinished(status) => Err(JobsError::AlreadyFinished(status)),
            CancelOutcome::Cancelled { .. } => {
                if let Some(token) = self.running.lock().expect("running map").get(&id) {
                    token.cancel();
                }
                let job = self.job(id).await?;
                self.publish(id, job.status, job.progress, job.error.clone());
                Ok(job)
            }
        }
    }

    pub async fn queue(&self, recent_failures: u32) -> Result<QueueView, JobsError> {
        Ok(QueueView {
            counts: self.db.queue_counts().await?,
            totals: self.db.status_counts().await?,
            active: self
                .db
                .list_jobs(&[JobStatus::Pending, JobStatus::Processing], 200)
                .await?,
            recent_failures: self
                .db
                .list_jobs(&[JobStatus::Failed], recent_failures)
                .await?,
        })
    }

    /// The last 24 hours by model and status, and the mean run time of
    /// the jobs completed in them (the queue page's details).
    pub async fn recent_stats(&self) -> Result<QueueStats, JobsError> {
        let since = cyberimage_core::time::now() - chrono::Duration::hours(24);
        Ok(self.db.queue_stats(since).await?)
    }

    pub async fn gallery(&self, query: &GalleryQuery) -> Result<GalleryPage, JobsError> {
        Ok(self.db.list_images(query).await?)
    }

    pub async fn image(&self, id: ImageId) -> Result<ImageRecord, JobsError> {
        self.db.get_image(id).await?.ok_or(JobsError::ImageNotFound)
    }

    /// PNG bytes of an image that has a database row; files without a row
    /// are never served.
    pub async fn image_bytes(&self, id: ImageId, variant: Variant) -> Result<Vec<u8>, JobsError> {
        self.image(id).await?;
        let store = self.store.clone();
        file_work(move || store.read(id, variant))
            .await?
            .ok_or(JobsError::ImageNotFound)
    }

    /// Deletes the row first: a crash in between leaves an unreferenced
    /// file (invisible, and removed by reconciliation), never a row that
    /// points at nothing.
    /// Marks or unmarks an image as a favourite.
    pub async fn set_favorite(
        &self,
        id: ImageId,
        favorite: bool,
    ) -> Result<ImageRecord, JobsError> {
        if !self.db.set_favorite(id, favorite).await? {
            return Err(JobsError::ImageNotFound);
        }
        self.publish_image(id, ImageChange::Favorite);
        self.image(id).await
    }

    pub async fn delete_image(&self, id: ImageId) -> Result<(), JobsError> {
        if !self.db.delete_image(id).await? {
            return Err(JobsError::ImageNotFound);
        }
        let store = self.store.clone();
        file_work(move || store.delete(id)).await?;
        self.publish_image(id, ImageChange::Deleted);
        Ok(())
    }

    /// Stops taking jobs and interrupts running ones; their workers put them
    /// back in the queue with the attempt refunded.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for token in self.running.lock().expect("running map").values() {
            token.cancel();
        }
        self.wake.notify_waiters();
    }
}

/// Runs file-system work on a blocking thread, off the async runtime's; a
/// panic there becomes an error of the request or job, never of the
/// worker loop that asked.
pub(crate) async fn file_work<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(StoreError::Interrupted(join.to_string())))
}
