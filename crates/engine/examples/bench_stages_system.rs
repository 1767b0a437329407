//! `bench_stages` with the system allocator (glibc), no block cache, to compare allocators on the same stages
//! (BENCHMARKS.md, "Allocator"): same arguments, same JSON lines.
//!
//! cargo run --release -p cyberimage-engine --example bench_stages_system -- MODEL_DIR SIZE REPEATS [LARGE_VAE_SIZE] [--bf16]

#[path = "support/stages.rs"]
mod stages;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    stages::main()
}
