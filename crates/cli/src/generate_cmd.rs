//! `cyberimage generate`: one job, run in-process, with a progress bar.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use cyberimage_core::{HiresRequest, JobStatus, LoraRequest, SpecRequest, Stage};
use cyberimage_jobs::ImageVariant;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::wiring;

#[derive(Args, Clone)]
pub struct GenerateArgs {
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Model key (default: the catalogue's default model).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub width: Option<i64>,
    #[arg(long)]
    pub height: Option<i64>,
    #[arg(long)]
    pub steps: Option<i64>,
    #[arg(long)]
    pub guidance: Option<f64>,
    #[arg(long)]
    pub seed: Option<i64>,
    #[arg(long)]
    pub num_images: Option<i64>,
    /// Image-to-image: start from this picture (PNG or JPEG file).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// With --init-image: how much of the schedule runs (0–1, default 0.8).
    #[arg(long)]
    pub strength: Option<f64>,
    /// A LoRA from the data dir's `loras/` folder, `NAME` or `NAME:WEIGHT`
    /// (repeat for several).
    #[arg(long = "lora", value_name = "NAME[:WEIGHT]")]
    pub loras: Vec<String>,
    /// Hires fix: make the picture, enlarge it by this factor (e.g. 2),
    /// then denoise it again at the larger size.
    #[arg(long, value_name = "FACTOR")]
    pub hires_scale: Option<f64>,
    /// Hires fix: how much the second pass may change (0–1, default 0.7).
    #[arg(long, requires = "hires_scale")]
    pub hires_strength: Option<f64>,
    /// Hires fix: the second pass's steps (default: --steps).
    #[arg(long, requires = "hires_scale")]
    pub hires_steps: Option<i64>,
    /// Hires fix: an upscaler from `upscalers/` to enlarge with (default:
    /// Lanczos).
    #[arg(long, requires = "hires_scale")]
    pub hires_upscaler: Option<String>,
    /// Output file; with several images, `-1`, `-2`, … are added before `.png`.
    #[arg(long, default_value = "cyberimage.png")]
    pub out: PathBuf,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub async fn run(config: Config, args: GenerateArgs) -> anyhow::Result<()> {
    let system = wiring::build(&config, true).await?;
    let service = system.service;
    let mut events = service.subscribe();
    let init_image = match &args.init_image {
        Some(path) => {
            use base64::Engine as _;
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        None => None,
    };
    let loras = args
        .loras
        .iter()
        .map(|arg| match arg.rsplit_once(':') {
            Some((name, weight)) => weight
                .parse::<f64>()
                .map(|w| LoraRequest {
                    name: name.into(),
                    weight: Some(w),
                })
                .with_context(|| format!("--lora {arg}: {weight:?} is not a weight")),
            None => Ok(LoraRequest {
                name: arg.clone(),
                weight: None,
            }),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let job = service
        .submit(SpecRequest {
            prompt: Some(args.prompt),
            negative_prompt: args.negative_prompt,
            model: args.model,
            width: args.width,
            height: args.height,
            steps: args.steps,
            guidance_scale: args.guidance,
            num_images: args.num_images,
            seed: args.seed,
            init_image,
            strength: args.strength,
            mask_image: None,
            outpaint: None,
            loras,
            hires: args.hires_scale.map(|scale| HiresRequest {
                scale: Some(scale),
                strength: args.hires_strength,
                steps: args.hires_steps,
                upscaler: args.hires_upscaler.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let bar = ProgressBar::new(u64::from(job.spec.total_steps()));
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} steps, {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("queued");
    let job = loop {
        let current = service.job(job.id).await?;
        if current.status.is_terminal() {
            break current;
        }
        bar.set_message(current.progress.stage.as_str());
        bar.set_position(u64::from(current.progress.step));
        // Events wake us early; the timeout covers jobs a server process runs.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), events.recv()).await;
    };
    match job.status {
        JobStatus::Completed => {
            bar.set_message(Stage::Completed.as_str());
            bar.finish();
        }
        status => {
            bar.abandon();
            bail!(
                "job {} {}: {}",
                job.id,
                status.as_str(),
                job.error.unwrap_or_default()
            );
        }
    }
    let many = job.images.len() > 1;
    for (i, image) in job.images.iter().enumerate() {
        let path = if many {
            let stem = args
                .out
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("image");
            args.out.with_file_name(format!("{stem}-{}.png", i + 1))
        } else {
            args.out.clone()
        };
        let bytes = service.image_bytes(image.id, ImageVariant::Full).await?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{} (seed {})", path.display(), image.seed);
    }
    Ok(())
}
