//! Upscaler timings for bench/upscale_vs_spandrel.py. Prints one JSON line
//! per network file: seconds of every forward of a SIZE² picture (the
//! whole picture in one tile, as spandrel runs it), and peak RSS.
//!
//! cargo run --release -p cyberimage-engine --example bench_upscale -- SIZE REPEATS [--bf16] FILE...

use std::time::Instant;

use candle_core::{Device, Tensor};
use cyberimage_engine::models::upscalers::UpscalerNet;
use cyberimage_engine::weights::upscaler_file::read_upscaler_tensors;

#[path = "support/proc_stats.rs"]
#[allow(dead_code)] // minor_faults is for bench_stages
mod proc_stats;
use proc_stats::peak_rss_mib;

#[global_allocator]
static ALLOCATOR: cyberimage_kernels::alloc::EngineAllocator =
    cyberimage_kernels::alloc::EngineAllocator;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_upscale SIZE REPEATS [--bf16] FILE...";
    let size: usize = args.first().ok_or(usage)?.parse()?;
    let repeats: usize = args.get(1).ok_or(usage)?.parse()?;
    let bf16 = args.iter().any(|a| a == "--bf16");
    let device = Device::Cpu;
    for file in args[2..].iter().filter(|a| *a != "--bf16") {
        let net = UpscalerNet::from_tensors(read_upscaler_tensors(file.as_ref(), &device)?)?;
        let x = (Tensor::rand(0f32, 1f32, (1, 3, size, size), &device)?).contiguous()?;
        let seconds: Vec<f64> = cyberimage_kernels::bf16_gemm::scoped(bf16, || {
            (0..repeats)
                .map(|_| {
                    let start = Instant::now();
                    std::hint::black_box(net.forward(&x).expect("forward"));
                    start.elapsed().as_secs_f64()
                })
                .collect()
        });
        println!(
            "{}",
            serde_json::json!({"file": file, "architecture": net.architecture().as_str(),
                               "scale": net.scale(), "seconds": seconds, "peak_rss_mib": peak_rss_mib()})
        );
    }
    Ok(())
}
