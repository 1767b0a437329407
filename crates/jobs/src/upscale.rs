//! Upscaling jobs: a picture (a gallery image or base64 data) made larger
//! by an upscaler from the data dir's `upscalers/` folder or a built-in
//! one. The request is checked before anything is queued: the picture
//! decodes within the input limit, the upscaler exists and is one the
//! engine can read (its architecture and scale read from its weights),
//! and the output fits the upscale limits. The job then waits in the
//! queue like any other, with its tiles as steps; the worker finds the
//! upscaler again and fails the job if its file changed meanwhile.

use std::sync::Arc;

use cyberimage_core::upscale::{
    check_upscaler_name, resolve_upscale, upscale_input, UpscaleAsk, UpscaleSpec, UpscalerChoice,
};
use cyberimage_core::{Generator, ImageId, Job, UpscaleRequest, ValidationError};
use cyberimage_store::upscalers::UpscalerFile;

use crate::service::{file_work, JobService};
use crate::JobsError;

/// The upscaler a request that names none gets: the built-in trained one.
pub const DEFAULT_UPSCALER: &str = "upscalerjs-esrgan-medium-x4";

/// An upscaling request as an adapter decoded it.
#[derive(Clone, Debug, Default)]
pub struct UpscaleSubmit {
    /// A gallery image id (`img_…`), or base64 image data (a `data:` URL
    /// too).
    pub image: String,
    /// The upscaler's name; unset: [`DEFAULT_UPSCALER`], or the first one
    /// listed when that is missing.
    pub upscaler: Option<String>,
    pub ask: UpscaleAsk,
}

/// An upscaler as listed to users.
#[derive(Clone, Debug, PartialEq)]
pub struct UpscalerListing {
    pub file: UpscalerFile,
    /// Read from its weights; `Err` says why it cannot run.
    pub info: Result<cyberimage_core::UpscalerInfo, String>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> JobsError {
    JobsError::Invalid(ValidationError::new(field, message))
}

impl JobService {
    /// The engine that reads a request's files before its job is queued
    /// (upscalers' architectures, whether LoRAs fit their model): any
    /// process with an engine, with or without workers.
    pub fn set_file_reader(&self, reader: Arc<dyn Generator>) {
        *self.file_reader.write().expect("reader lock") = Some(reader);
    }

    fn reader(&self) -> Result<Arc<dyn Generator>, JobsError> {
        self.file_reader
            .read()
            .expect("reader lock")
            .clone()
            .ok_or_else(|| {
                invalid(
                    "upscaler",
                    "this server has no engine to read upscalers with (its [engine] settings \
                     cannot run on this machine)",
                )
            })
    }

    /// Every upscaler, with its architecture and scale when the engine can
    /// read it.
    pub async fn upscalers(&self) -> Result<Vec<UpscalerListing>, JobsError> {
        let store = self.store.clone();
        let files = file_work(move || store.upscalers().list()).await?;
        let reader = self.file_reader.read().expect("reader lock").clone();
        tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|file| {
                    let info = match &reader {
                        Some(r) => r.inspect_upscaler(&file.path).map_err(|e| e.to_string()),
                        None => Err("no engine in this process".into()),
                    };
                    UpscalerListing { file, info }
                })
                .collect()
        })
        .await
        .map_err(|e| JobsError::Storage(cyberimage_store::StoreError::Interrupted(e.to_string())))
    }

    /// The upscaler `name` (or the default), with what the engine read of
    /// it.
    async fn choose_upscaler(&self, name: Option<&str>) -> Result<UpscalerChoice, JobsError> {
        if let Some(name) = name {
            check_upscaler_name(name)?;
        }
        let store = self.store.clone();
        let wanted = name.map(str::to_owned);
        let file = file_work(move || {
            let library = store.upscalers();
            match wanted {
                Some(name) => library.find(&name),
                None => match library.find(DEFAULT_UPSCALER)? {
                    Some(file) => Ok(Some(file)),
                    None => Ok(library.list()?.into_iter().next()),
                },
            }
        })
        .await?;
        let Some(file) = file else {
            let listed = self.upscalers().await?;
            let names: Vec<&str> = listed.iter().map(|l| l.file.name.as_str()).collect();
            return Err(invalid(
                "upscaler",
                match name {
                    Some(name) => format!(
                        "no upscaler {name:?}; available: {} (put .safetensors or .pth files \
                         in the data dir's upscalers/ folder)",
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    ),
                    None => "no upscalers: put .safetensors or .pth files in the data dir's \
                             upscalers/ folder"
                        .into(),
                },
            ));
        };
        let reader = self.reader()?;
        let path = file.path.clone();
        let info = tokio::task::spawn_blocking(move || reader.inspect_upscaler(&path))
            .await
            .map_err(|e| invalid("upscaler", format!("reading the upscaler failed: {e}")))?
            .map_err(|e| invalid("upscaler", format!("{}: {e}", file.name)))?;
        Ok(UpscalerChoice {
            name: file.name,
            sha256: file.sha256,
            architecture: info.architecture,
            scale: info.scale,
            size_multiple: info.size_multiple,
        })
    }

    /// The size of the picture `reference` names (a gallery id or base64).
    pub async fn picture_size(&self, reference: &str) -> Result<(u32, u32), JobsError> {
        let picture = self.picture(reference, "image").await?;
        Ok((picture.width, picture.height))
    }

    /// Checks an upscaling request, keeps its picture and queues the job.
    pub async fn submit_upscale(&self, request: UpscaleSubmit) -> Result<Job, JobsError> {
        self.refuse_when_shutting_down()?;
        if request.image.trim().is_empty() {
            return Err(invalid(
                "image",
                "image is required: a gallery image id or base64 data",
            ));
        }
        let picture = self.picture(&request.image, "image").await?;
        let choice = self.choose_upscaler(request.upscaler.as_deref()).await?;
        let mut spec = resolve_upscale(
            &request.ask,
            (picture.width, picture.height),
            &choice,
            &self.config.limits,
        )?;
        // An upscaled gallery image keeps its prompt, so a search finds
        // both; its source is recorded with the job.
        let source = ImageId::parse(&request.image).ok();
        if let Some(id) = source {
            if let Some(record) = self.db.get_image(id).await? {
                spec.prompt = record.prompt;
                spec.negative_prompt = record.negative_prompt;
            }
        }
        if let Some(upscale) = spec.upscale.as_mut() {
            upscale.source_image = source.map(|id| id.to_string());
        }
        let store = self.store.clone();
        let sha256 = file_work(move || store.save_input(&picture)).await?;
        spec.init_image = Some(upscale_input(sha256));
        self.enqueue(spec).await
    }

    /// What the engine needs to run a queued upscaling job, or why it
    /// cannot (the upscaler gone, or replaced by another file).
    pub(crate) async fn upscale_request(
        &self,
        upscale: &UpscaleSpec,
        width: u32,
        height: u32,
    ) -> Result<UpscaleRequest, String> {
        Ok(UpscaleRequest {
            weights: self
                .upscaler_weights(&upscale.upscaler, &upscale.sha256)
                .await?,
            width,
            height,
            tile: upscale.tile,
        })
    }

    /// The file of upscaler `name`, when it is still the one whose digest
    /// the job was queued with.
    pub(crate) async fn upscaler_weights(
        &self,
        name: &str,
        sha256: &str,
    ) -> Result<std::path::PathBuf, String> {
        let store = self.store.clone();
        let wanted = name.to_owned();
        let file = file_work(move || store.upscalers().find(&wanted))
            .await
            .map_err(|e| format!("cannot read the upscaler: {e}"))?
            .ok_or_else(|| format!("upscaler {name:?} is no longer installed"))?;
        if file.sha256 != sha256 {
            return Err(format!(
                "upscaler {name:?} was replaced by another file since the job was queued"
            ));
        }
        Ok(file.path)
    }

    /// Fills in the digest of a hires pass's upscaler, refusing one that
    /// is not installed or that the engine cannot read.
    pub(crate) async fn check_hires_upscaler(
        &self,
        spec: &mut cyberimage_core::GenerationSpec,
    ) -> Result<(), JobsError> {
        let Some(hires) = spec.hires.as_mut() else {
            return Ok(());
        };
        let Some(name) = hires.upscaler.clone() else {
            return Ok(());
        };
        let choice = self
            .choose_upscaler(Some(&name))
            .await
            .map_err(|e| match e {
                JobsError::Invalid(v) => invalid("hires", format!("hires.upscaler: {}", v.message)),
                other => other,
            })?;
        hires.upscaler_sha256 = choice.sha256;
        Ok(())
    }
}
