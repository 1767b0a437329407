//! The f32 matmul rate this machine gives the engine: a 2048³ product
//! through candle (the gemm crate), median of 5 after a warm-up, printed as
//! one JSON line. The benchmarks take the better of this and torch's rate
//! as the anchor of their FLOP floors.
//!
//! cargo run --release -p cyberimage-engine --example matmul_rate

use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    const N: usize = 2048;
    let a = Tensor::randn(0f32, 1.0, (N, N), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (N, N), &Device::Cpu)?;
    a.matmul(&b)?;
    let mut seconds: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            a.matmul(&b).map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<candle_core::Result<_>>()?;
    seconds.sort_by(f64::total_cmp);
    let gflops = 2.0 * (N * N * N) as f64 / seconds[2] / 1e9;
    println!("{}", serde_json::json!({ "gflops": gflops }));
    Ok(())
}
