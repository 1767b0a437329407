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

#[path = "support/stages.rs"]
mod stages;

/// As the binary runs: mimalloc, freed memory kept for reuse (see
/// cyberimage_kernels::alloc).
#[global_allocator]
static ALLOCATOR: cyberimage_kernels::alloc::EngineAllocator =
    cyberimage_kernels::alloc::EngineAllocator;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    stages::main()
}
