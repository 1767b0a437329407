//! Times the pipeline stages of a diffusers SD 1.x/2.x/XL folder on the CPU:
//! text encoding (batch 2), one UNet step (batch 2, classifier-free
//! guidance), VAE decode (batch 1). Prints one JSON line per stage with
//! every run's seconds and the process's peak RSS, for
//! bench/engine_vs_diffusers.py and bench/sdxl_vs_diffusers.py.
//!
//! Stages whose folder is missing are skipped: without `text_encoder/` the
//! UNet gets random text states, and an SDXL UNet random pooled text and
//! the size conditioning of a SIZE² image. With LARGE_VAE_SIZE, also a VAE
//! decode at that size (batch 1). With `--bf16`, the UNet and VAE run as
//! `[engine] precision = "bf16"` runs them.
//!
//! cargo run --release -p cyberimage-engine --example bench_stages -- MODEL_DIR SIZE REPEATS [LARGE_VAE_SIZE] [--bf16]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use cyberimage_engine::models::clip::ClipTextEncoder;
use cyberimage_engine::models::unet::{AddedConditioning, UNet};
use cyberimage_engine::models::vae::VaeDecoder;

/// As the binary runs: large freed blocks reused (see block_cache_alloc).
#[global_allocator]
static ALLOCATOR: cyberimage_kernels::block_cache_alloc::BlockCacheAlloc =
    cyberimage_kernels::block_cache_alloc::BlockCacheAlloc::new();

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn time<T>(repeats: usize, mut f: impl FnMut() -> T) -> Vec<f64> {
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64()
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<String> = std::env::args().collect();
    let bf16 = all.iter().any(|a| a == "--bf16");
    let args: Vec<String> = all.into_iter().filter(|a| a != "--bf16").collect();
    let scoped = |f: &mut dyn FnMut() -> candle_core::Result<Tensor>| {
        cyberimage_kernels::bf16_gemm::scoped(bf16, f)
    };
    let dir = std::path::PathBuf::from(&args[1]);
    let size: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let repeats: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let large_vae: Option<usize> = args.get(4).map(|s| s.parse()).transpose()?;
    let device = Device::Cpu;
    let report = |stage: &str, seconds: Vec<f64>| {
        println!(
            "{}",
            serde_json::json!({"stage": stage, "seconds": seconds, "peak_rss_mib": peak_rss_mib()})
        );
    };

    let latent = size / 8;
    // The encoder is freed before the UNet loads, as before this stage list
    // grew, so the peak RSS compares with earlier runs.
    let encoded = if dir.join("text_encoder").exists() {
        let clip = ClipTextEncoder::load(&dir.join("text_encoder"), DType::F32, &device)?;
        let ids = Tensor::from_vec((0..154u32).map(|i| i % 400).collect(), (2, 77), &device)?;
        report(
            "text_encode_b2",
            time(repeats, || clip.forward(&ids).map(|o| o.last_hidden_state)),
        );
        Some(clip.forward(&ids)?.last_hidden_state)
    } else {
        None
    };
    if dir.join("unet").exists() {
        let unet = UNet::load(&dir.join("unet"), DType::F32, &device)?;
        let context = match encoded {
            Some(states) => states,
            None => Tensor::randn(
                0f32,
                1f32,
                (2, 77, unet.config.cross_attention_dim),
                &device,
            )?,
        };
        let added = match (
            unet.config.projection_class_embeddings_input_dim,
            unet.config.addition_time_embed_dim,
        ) {
            (Some(input), Some(time_dim)) if unet.needs_added_conditioning() => {
                let s = size as f32;
                Some(AddedConditioning {
                    text_embeds: Tensor::randn(0f32, 1f32, (2, input - 6 * time_dim), &device)?,
                    time_ids: Tensor::new(&[[s, s, 0.0, 0.0, s, s]; 2], &device)?,
                })
            }
            _ => None,
        };
        let sample = Tensor::randn(0f32, 1f32, (2, 4, latent, latent), &device)?;
        report(
            "unet_step_b2",
            time(repeats, || {
                scoped(&mut || unet.forward(&sample, 500.0, &context, added.as_ref()))
            }),
        );
        drop(unet);
    }

    if !dir.join("vae").exists() {
        return Ok(());
    }
    let vae = VaeDecoder::load(&dir.join("vae"), DType::F32, &device)?;
    let z = Tensor::randn(0f32, 1f32, (1, 4, latent, latent), &device)?;
    report(
        "vae_decode_b1",
        time(repeats, || scoped(&mut || vae.decode(&z))),
    );
    if let Some(large) = large_vae {
        let z = Tensor::randn(0f32, 1f32, (1, 4, large / 8, large / 8), &device)?;
        report(
            "vae_decode_large_b1",
            time(repeats, || scoped(&mut || vae.decode(&z))),
        );
    }
    Ok(())
}
