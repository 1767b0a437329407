//! The body of `bench_stages` and its allocator variants (each example
//! installs its own global allocator, then runs this).

use std::time::Instant;

#[path = "proc_stats.rs"]
mod proc_stats;
use proc_stats::{minor_faults, peak_rss_mib};

use candle_core::{DType, Device, Tensor};
use cyberimage_engine::models::clip::ClipTextEncoder;
use cyberimage_engine::models::unet::{AddedConditioning, UNet};
use cyberimage_engine::models::vae::VaeDecoder;
use cyberimage_engine::models::vae_encoder::VaeEncoder;

/// Each run's seconds and minor page faults.
fn time<T>(repeats: usize, mut f: impl FnMut() -> T) -> (Vec<f64>, Vec<u64>) {
    (0..repeats)
        .map(|_| {
            let (faults, start) = (minor_faults(), Instant::now());
            std::hint::black_box(f());
            (start.elapsed().as_secs_f64(), minor_faults() - faults)
        })
        .unzip()
}

pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<String> = std::env::args().collect();
    let bf16 = all.iter().any(|a| a == "--bf16");
    // Only the VAE encoder (image-to-image's extra stage), at SIZE and at
    // the large size.
    let encode_only = all.iter().any(|a| a == "--encode-only");
    // The bf16 kernel (`--bf16-kernel=avx512` or `=amx`; the engine's own
    // choice otherwise), Winograd off (`--no-winograd`) and AMX tap tiles
    // off (`--no-tap-tiles`: the im2col kernel), to compare
    // kernels on one CPU.
    use cyberimage_kernels::bf16_gemm::{self, Preference};
    for flag in &all {
        match flag.as_str() {
            "--bf16-kernel=avx512" => bf16_gemm::prefer(Preference::Avx512)?,
            "--bf16-kernel=amx" => bf16_gemm::prefer(Preference::Amx)?,
            "--no-winograd" => cyberimage_kernels::conv::set_winograd(false),
            "--no-tap-tiles" => cyberimage_kernels::conv::set_tap_tiles(false),
            _ => {}
        }
    }
    let args: Vec<String> = all.into_iter().filter(|a| !a.starts_with("--")).collect();
    let scoped = |f: &mut dyn FnMut() -> candle_core::Result<Tensor>| {
        cyberimage_kernels::bf16_gemm::scoped(bf16, f)
    };
    let dir = std::path::PathBuf::from(&args[1]);
    let size: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let repeats: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let large_vae: Option<usize> = args.get(4).map(|s| s.parse()).transpose()?;
    let device = Device::Cpu;
    let report = |stage: &str, (seconds, faults): (Vec<f64>, Vec<u64>)| {
        println!(
            "{}",
            serde_json::json!({
                "stage": stage, "seconds": seconds, "minor_faults": faults,
                "peak_rss_mib": peak_rss_mib(),
            })
        );
    };

    let latent = size / 8;
    if encode_only {
        let encoder = VaeEncoder::load(&dir.join("vae"), DType::F32, &device)?;
        let sizes = std::iter::once(("vae_encode_b1", size))
            .chain(large_vae.map(|large| ("vae_encode_large_b1", large)));
        for (stage, side) in sizes {
            let image = Tensor::randn(0f32, 0.5f32, (1, 3, side, side), &device)?;
            report(
                stage,
                time(repeats, || {
                    scoped(&mut || encoder.posterior(&image).map(|p| p.mean))
                }),
            );
        }
        return Ok(());
    }
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
        // Loaded as the generator loads it: under bf16 on AMX, the weights
        // are packed here rather than in the first step.
        let start = Instant::now();
        let pack_at_load = bf16 && !std::env::args().any(|a| a == "--pack-on-first-use");
        let unet = bf16_gemm::packing_at_load(pack_at_load, || {
            UNet::load(&dir.join("unet"), DType::F32, &device)
        })?;
        println!(
            "{}",
            serde_json::json!({"stage": "unet_load", "load_seconds": start.elapsed().as_secs_f64()})
        );
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
