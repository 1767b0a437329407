//! An image-to-image job through the generator, as a worker runs it (text
//! encoding, the VAE encoder, the steps the strength keeps, the decode),
//! for bench/img2img_job.py. Prints one JSON line: seconds of every job,
//! peak RSS.
//!
//! cargo run --release -p cyberimage-engine --example bench_img2img_job -- MODEL_DIR SIZE STEPS STRENGTH REPEATS [--bf16]

use std::time::Instant;

use cyberimage_core::{
    CancelToken, Catalogue, GenerationSpec, Generator, InitImage, InputImage, ModelEntry,
    ProgressObserver, ProgressUpdate,
};
use cyberimage_engine::{CandleGenerator, EngineOptions, Precision};

#[path = "support/proc_stats.rs"]
#[allow(dead_code)] // minor_faults is for bench_stages
mod proc_stats;
use proc_stats::peak_rss_mib;

#[global_allocator]
static ALLOCATOR: cyberimage_kernels::alloc::EngineAllocator =
    cyberimage_kernels::alloc::EngineAllocator;

struct NoProgress;

impl ProgressObserver for NoProgress {
    fn on_progress(&self, _: ProgressUpdate) {}
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_img2img_job MODEL_DIR SIZE STEPS STRENGTH REPEATS [--bf16]";
    let arg = |i: usize| args.get(i).ok_or(usage);
    let (dir, size): (&str, u32) = (arg(0)?, arg(1)?.parse()?);
    let (steps, strength, repeats): (u32, f64, usize) =
        (arg(2)?.parse()?, arg(3)?.parse()?, arg(4)?.parse()?);
    let bf16 = args.iter().any(|a| a == "--bf16");
    let model = ModelEntry {
        key: "bench-sd15".into(),
        source: dir.into(),
        ..Catalogue::builtin_test_models()
            .into_iter()
            .find(|m| m.key == "tiny-sd15-random")
            .ok_or("no tiny-sd15-random entry")?
    };
    let options = EngineOptions {
        precision: if bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        },
        ..EngineOptions::default()
    };
    let cache = tempfile::tempdir()?;
    let generator = CandleGenerator::new(cache.path().to_path_buf(), options)?;
    let pixels = (size * size) as usize;
    let input = InputImage {
        width: size,
        height: size,
        rgb: (0..pixels * 3).map(|i| ((i * 37) % 251) as u8).collect(),
        mask: None,
    };
    let spec = GenerationSpec {
        prompt: "a lighthouse on a cliff at dusk, oil painting".into(),
        negative_prompt: Some("blurry".into()),
        model: model.key.clone(),
        width: size,
        height: size,
        steps,
        guidance_scale: 7.5,
        num_images: 1,
        seed: 1,
        init_image: Some(InitImage {
            sha256: "ab".repeat(32),
            strength,
            mask_sha256: None,
            mask_blur: 0,
            keep_unmasked: false,
        }),
        loras: Vec::new(),
        upscale: None,
        hires: None,
    };
    let seconds = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            generator
                .generate_from(
                    &model,
                    &spec,
                    Some(&input),
                    &NoProgress,
                    &CancelToken::new(),
                )
                .map(|images| std::hint::black_box(images.len()))?;
            Ok(start.elapsed().as_secs_f64())
        })
        .collect::<Result<Vec<f64>, cyberimage_core::EngineError>>()?;
    println!(
        "{}",
        serde_json::json!({"stage": "img2img_job", "seconds": seconds, "peak_rss_mib": peak_rss_mib()})
    );
    Ok(())
}
