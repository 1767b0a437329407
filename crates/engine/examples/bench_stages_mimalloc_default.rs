//! `bench_stages` with mimalloc on its default options (a 10 ms purge
//! delay) as the global allocator, against `bench_stages` (the engine's
//! allocator: mimalloc with a 10 s delay), to compare allocators on the same
//! stages (BENCHMARKS.md, "Allocator"): same arguments, same JSON lines.
//!
//! cargo run --release -p cyberimage-engine --example bench_stages_mimalloc_default -- MODEL_DIR SIZE REPEATS [LARGE_VAE_SIZE] [--bf16]

#[path = "support/stages.rs"]
mod stages;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    stages::main()
}
