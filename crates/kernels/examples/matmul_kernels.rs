//! The matrix kernels on this CPU, one square product each: f32 (candle's
//! gemm), bf16 on AVX-512 BF16, bf16 on AMX tiles, and the bare AMX tile
//! peak (products on resident tiles, no memory traffic), all threads busy.
//! Prints one JSON line; `bench/matmul_kernels.py` runs it.
//!
//! `cargo run --release -p cyberimage-kernels --example matmul_kernels -- 2048 5`

use std::time::Instant;

use candle_core::{Device, Module, Tensor};
use cyberimage_kernels::bf16_gemm::{self, Kernel, Preference};
use cyberimage_kernels::linear::Linear;
use rayon::prelude::*;

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().map_or(2048, |s| s.parse().expect("size"));
    let repeats: usize = args.next().map_or(5, |s| s.parse().expect("repeats"));
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (size, size), &dev).unwrap();
    let w = Tensor::randn(0f32, 0.02, (size, size), &dev).unwrap();
    let flops = 2.0 * (size as f64).powi(3);
    let time = |f: &dyn Fn() -> Tensor| {
        f(); // warm-up (and, for bf16, the weights' packing)
        median(
            (0..repeats)
                .map(|_| {
                    let start = Instant::now();
                    std::hint::black_box(f());
                    start.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let mut fields = vec![
        format!("\"size\":{size}"),
        format!("\"repeats\":{repeats}"),
        format!("\"threads\":{}", rayon::current_num_threads()),
    ];
    let f32_layer = Linear::from(candle_nn::Linear::new(w.clone(), None));
    let seconds = time(&|| f32_layer.forward(&x).unwrap());
    fields.push(format!("\"f32_gflops\":{:.1}", flops / seconds / 1e9));
    for (name, kernel, preference) in [
        ("avx512_bf16", Kernel::Avx512, Preference::Avx512),
        ("amx_bf16", Kernel::Amx, Preference::Amx),
    ] {
        if !kernel.usable() {
            fields.push(format!("\"{name}_gflops\":null"));
            continue;
        }
        bf16_gemm::prefer(preference).unwrap();
        // A new layer per kernel: its weights are packed for the one chosen.
        let layer = Linear::from(candle_nn::Linear::new(w.clone(), None));
        let seconds = time(&|| bf16_gemm::scoped(true, || layer.forward(&x).unwrap()));
        fields.push(format!("\"{name}_gflops\":{:.1}", flops / seconds / 1e9));
    }
    bf16_gemm::prefer(Preference::Auto).unwrap_or(());
    let passes = 2_000_000;
    let peak = (0..rayon::current_num_threads())
        .into_par_iter()
        .map(|_| {
            let start = Instant::now();
            let count = bf16_gemm::amx_peak_multiply_adds(passes)?;
            Some(2.0 * count as f64 / start.elapsed().as_secs_f64())
        })
        .collect::<Option<Vec<f64>>>();
    match peak {
        Some(per_thread) => fields.push(format!(
            "\"amx_peak_gflops\":{:.1}",
            per_thread.iter().sum::<f64>() / 1e9
        )),
        None => fields.push("\"amx_peak_gflops\":null".into()),
    }
    println!("{{{}}}", fields.join(","));
}
