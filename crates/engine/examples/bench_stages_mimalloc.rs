//! `bench_stages` with mimalloc (its defaults) as the global allocator, to compare allocators on the same stages
//! (BENCHMARKS.md, "Allocator"): same arguments, same JSON lines.
//!
//! cargo run --release -p cyberimage-engine --example bench_stages_mimalloc -- MODEL_DIR SIZE REPEATS [LARGE_VAE_SIZE] [--bf16]

#[path = "support/stages.rs"]
mod stages;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    stages::main()
}
