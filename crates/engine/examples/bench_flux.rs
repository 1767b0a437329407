//! FLUX timings for bench/flux_vs_diffusers.py. Prints one JSON line per
//! measurement (seconds of every run, the process's peak RSS).
//!
//! cargo run --release -p cyberimage-engine --example bench_flux -- blocks TRANSFORMER_DIR SIZE REPEATS
//!   One transformer forward (512 text tokens, SIZE² image) of a diffusers
//!   FLUX folder — full width, few blocks — in f32, GGUF Q8_0 and GGUF Q4_K
//!   (quantized in-process from the same weights).
//!
//! cargo run --release -p cyberimage-engine --example bench_flux -- lora TRANSFORMER_DIR LORA_FILE SIZE REPEATS
//!   The cost of a LoRA (for bench/lora_cost.py): the same forward without
//!   and with the LoRA, on f32 weights (merged in) and on GGUF Q8_0 / Q4_K
//!   (run as a branch beside the quantized product), and the time to merge
//!   it in and take it out again.
//!
//! cargo run --release -p cyberimage-engine --example bench_flux -- make-e2e OUT_DIR TINY_FLUX_DIR CONFIGS_DIR
//!   Writes a full-size FLUX.1-dev folder with random weights: the
//!   transformer as GGUF Q4_K, T5-XXL as bf16 safetensors, CLIP-L and the
//!   VAE as f32, configs from fixtures/configs/flux1-dev, tokenizers from
//!   the tiny model (T5 prompts padded to 512 tokens).
//!
//! cargo run --release -p cyberimage-engine --example bench_flux -- e2e MODEL_DIR SIZE
//!   One job end to end as the generator runs it with drop_text_encoders
//!   (encode with only the encoders resident, then load the transformer,
//!   1 step, decode); reports the peak RSS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use cyberimage_engine::models::flux::weights::{quantize_tensor, FluxWeights};
use cyberimage_engine::models::flux::{FluxConfig, FluxTransformer};
use cyberimage_engine::pipelines::flux::{load_transformer, Flux};
use cyberimage_engine::weights::lora::{Component, LoraFile};
use cyberimage_engine::weights::lora_merge::{LoraTarget, LoraUse, MergedLoras};

/// As the binary runs: mimalloc, freed memory kept for reuse (see
/// cyberimage_kernels::alloc).
#[path = "support/proc_stats.rs"]
#[allow(dead_code)] // minor_faults is for bench_stages
mod proc_stats;
use proc_stats::peak_rss_mib;

#[global_allocator]
static ALLOCATOR: cyberimage_kernels::alloc::EngineAllocator =
    cyberimage_kernels::alloc::EngineAllocator;

fn report(stage: &str, seconds: Vec<f64>) {
    println!(
        "{}",
        serde_json::json!({"stage": stage, "seconds": seconds, "peak_rss_mib": peak_rss_mib()})
    );
}

fn timed<T>(repeats: usize, mut f: impl FnMut() -> T) -> Vec<f64> {
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64()
        })
        .collect()
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The weights timed: as read (f32), and quantized in-process from them.
const VARIANTS: [(&str, Option<GgmlDType>); 3] = [
    ("f32", None),
    ("gguf_q8_0", Some(GgmlDType::Q8_0)),
    ("gguf_q4_k", Some(GgmlDType::Q4K)),
];

/// One forward's inputs: packed latents of a SIZE² image, 512 T5 tokens,
/// pooled CLIP text.
fn forward_inputs(config: &FluxConfig, size: usize, device: &Device) -> Result<[Tensor; 3]> {
    let tokens = (size / 16) * (size / 16);
    Ok([
        Tensor::randn(0f32, 1f32, (1, tokens, config.in_channels), device)?,
        Tensor::randn(0f32, 1f32, (1, 512, config.joint_attention_dim), device)?,
        Tensor::randn(0f32, 1f32, (1, config.pooled_projection_dim), device)?,
    ])
}

/// The transformer over `weights`, quantized to `dtype` first when given.
fn transformer_as(
    weights: &FluxWeights,
    config: &FluxConfig,
    dtype: Option<GgmlDType>,
) -> Result<FluxTransformer> {
    Ok(match dtype {
        None => FluxTransformer::new(weights, config.clone())?,
        Some(dtype) => FluxTransformer::new(&weights.quantized(dtype)?, config.clone())?,
    })
}

fn blocks(dir: &Path, size: usize, repeats: usize) -> Result<()> {
    let device = Device::Cpu;
    let (weights, config) = load_transformer(dir, &device)?;
    let [img, txt, pooled] = forward_inputs(&config, size, &device)?;
    for (name, dtype) in VARIANTS {
        let model = transformer_as(&weights, &config, dtype)?;
        let rope = model.rope(512, size / 16, size / 16, &device)?;
        // The first run warms up and is dropped by the caller.
        let seconds = timed(repeats + 1, || {
            model.forward(&img, &txt, &pooled, 0.75, 3.5, &rope)
        });
        report(&format!("flux_blocks_{size}_{name}"), seconds);
        if dtype.is_none() && cyberimage_kernels::bf16_gemm::available() {
            // The dense weights again with `precision = "bf16"` (AMX tiles
            // where the CPU has them); packed in the warm-up run.
            let seconds = timed(repeats + 1, || {
                cyberimage_kernels::bf16_gemm::scoped(true, || {
                    model.forward(&img, &txt, &pooled, 0.75, 3.5, &rope)
                })
            });
            report(&format!("flux_blocks_{size}_bf16"), seconds);
        }
    }
    Ok(())
}

fn lora(dir: &Path, file: &Path, size: usize, repeats: usize) -> Result<()> {
    let device = Device::Cpu;
    let (weights, config) = load_transformer(dir, &device)?;
    let [img, txt, pooled] = forward_inputs(&config, size, &device)?;
    let set = [LoraUse {
        id: "bench".into(),
        file: Arc::new(LoraFile::read(file)?),
        strength: 0.8,
    }];
    for (name, dtype) in VARIANTS {
        let model = transformer_as(&weights, &config, dtype)?;
        let rope = model.rope(512, size / 16, size / 16, &device)?;
        let mut forward = || model.forward(&img, &txt, &pooled, 0.75, 3.5, &rope);
        report(
            &format!("lora_{size}_{name}_without"),
            timed(repeats + 1, &mut forward),
        );
        let target = [(Component::Denoiser, model.lora_target() as &dyn LoraTarget)];
        let mut merged = MergedLoras::default();
        let start = Instant::now();
        merged.set_on(&target, &set)?;
        report(
            &format!("lora_{name}_apply"),
            vec![start.elapsed().as_secs_f64()],
        );
        let mut forward = || model.forward(&img, &txt, &pooled, 0.75, 3.5, &rope);
        report(
            &format!("lora_{size}_{name}_with"),
            timed(repeats + 1, &mut forward),
        );
        let start = Instant::now();
        merged.unmerge_on(&target)?;
        report(
            &format!("lora_{name}_remove"),
            vec![start.elapsed().as_secs_f64()],
        );
    }
    Ok(())
}

/// Random tensors for every name in a `shapes.json` (std 0.02, seeded).
fn random_tensors(shapes: &Path, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let shapes: HashMap<String, Vec<usize>> =
        serde_json::from_str(&std::fs::read_to_string(shapes)?)?;
    let mut out = HashMap::new();
    for (name, shape) in shapes {
        let t = (Tensor::randn(0f32, 1f32, shape.as_slice(), &Device::Cpu)? * 0.02)?;
        out.insert(name, t.to_dtype(dtype)?);
    }
    Ok(out)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap()))?;
        }
    }
    Ok(())
}

fn make_e2e(out: &Path, tiny: &Path, configs: &Path) -> Result<()> {
    for folder in ["scheduler", "tokenizer", "tokenizer_2"] {
        copy_dir(&tiny.join(folder), &out.join(folder))?;
    }
    std::fs::copy(tiny.join("model_index.json"), out.join("model_index.json"))?;
    // Real FLUX pads T5 prompts to 512 tokens.
    let t5_config = out.join("tokenizer_2/tokenizer_config.json");
    let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&t5_config)?)?;
    value["model_max_length"] = 512.into();
    std::fs::write(&t5_config, value.to_string())?;
    for (component, dtype) in [
        ("text_encoder", DType::F32),
        ("text_encoder_2", DType::BF16),
        ("vae", DType::F32),
    ] {
        let dir = out.join(component);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(
            configs.join(component).join("config.json"),
            dir.join("config.json"),
        )?;
        let tensors = random_tensors(&configs.join(component).join("shapes.json"), dtype)?;
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        eprintln!("wrote {component}");
    }
    let dir = out.join("transformer");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        configs.join("transformer/config.json"),
        dir.join("config.json"),
    )?;
    // Quantized tensor by tensor: the f32 model (48 GB) never exists. The
    // BFL names and shapes come from mapping zero-memory stand-ins.
    let shapes: HashMap<String, Vec<usize>> = serde_json::from_str(&std::fs::read_to_string(
        configs.join("transformer/shapes.json"),
    )?)?;
    let stand_ins = shapes
        .iter()
        .map(|(name, shape)| {
            let t = Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(shape.as_slice())?;
            Ok((name.clone(), t))
        })
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    let layout = FluxWeights::from_diffusers(stand_ins, &Device::Cpu)?;
    let mut quantized = HashMap::new();
    for name in layout.names() {
        let dims = layout.get(name).expect("listed").dims();
        let t = (Tensor::randn(0f32, 1f32, dims.as_slice(), &Device::Cpu)? * 0.02)?;
        quantized.insert(name.clone(), quantize_tensor(name, t, GgmlDType::Q4K)?);
    }
    FluxWeights::from_weights(quantized, &Device::Cpu, "GGUF")
        .write_gguf(&dir.join("flux1-dev-random-Q4_K.gguf"))?;
    eprintln!("wrote transformer");
    Ok(())
}

/// As the generator runs a job with `drop_text_encoders`: the prompt
/// encoded with only the encoders resident, then the transformer loaded.
fn e2e(dir: &Path, size: usize) -> Result<()> {
    let device = Device::Cpu;
    let start = Instant::now();
    let cond = Flux::encode_alone(dir, &device, "a lighthouse at dusk", &[])?;
    report("e2e_encode", vec![start.elapsed().as_secs_f64()]);
    let start = Instant::now();
    let flux = Flux::load_with(dir, &device, false)?;
    report("e2e_load", vec![start.elapsed().as_secs_f64()]);
    let noise = Tensor::randn(0f32, 1f32, (1, 16, size / 8, size / 8), &device)?;
    let start = Instant::now();
    let latents = flux
        .denoise(&cond, &noise, 1, 3.5, &mut |_, _| true)?
        .expect("not cancelled");
    report("e2e_step", vec![start.elapsed().as_secs_f64()]);
    let start = Instant::now();
    flux.decode_unit(&latents)?;
    report("e2e_decode", vec![start.elapsed().as_secs_f64()]);
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "blocks" => blocks(Path::new(&arg(2)), arg(3).parse()?, arg(4).parse()?),
        "make-e2e" => make_e2e(
            &PathBuf::from(arg(2)),
            &PathBuf::from(arg(3)),
            &PathBuf::from(arg(4)),
        ),
        "e2e" => e2e(Path::new(&arg(2)), arg(3).parse()?),
        "lora" => lora(
            Path::new(&arg(2)),
            Path::new(&arg(3)),
            arg(4).parse()?,
            arg(5).parse()?,
        ),
        other => Err(format!("unknown mode {other:?}: blocks | lora | make-e2e | e2e").into()),
    }
}
