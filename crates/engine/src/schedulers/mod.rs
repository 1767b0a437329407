//! Schedulers: the one interface the SD pipelines drive, over the
//! algorithm the model's scheduler config asks for. `_class_name` picks it:
//! Euler for `EulerDiscreteScheduler` (SD-Turbo ships it), Euler-ancestral
//! for `EulerAncestralDiscreteScheduler`, DDIM for everything else (SD
//! 1.5's PNDM and DDIM-family configs run as deterministic DDIM).
//! Flow matching (`flow`) serves SD3 and FLUX; `noise` is the seeded
//! Gaussian every sampler draws from.
//!
//! Arrows inside: `config` ← `ddim`, `euler`, `flow` ← this file.

pub mod config;
pub mod ddim;
pub mod euler;
pub mod flow;
pub mod noise;

use candle_core::Tensor;

use crate::error::EngineLoadError;
pub use config::SchedulerConfig;
use ddim::Ddim;
use euler::Euler;

pub enum Scheduler {
    Ddim(Ddim),
    Euler(Euler),
}

impl Scheduler {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self, EngineLoadError> {
        Ok(match cfg.class_name.as_str() {
            "EulerDiscreteScheduler" => Scheduler::Euler(Euler::new(cfg, steps)?),
            "EulerAncestralDiscreteScheduler" => {
                Scheduler::Euler(Euler::new_ancestral(cfg, steps)?)
            }
            _ => Scheduler::Ddim(Ddim::new(cfg, steps)?),
        })
    }

    /// The sampler's name as A1111 writes it in image metadata.
    pub fn name(&self) -> &'static str {
        match self {
            Scheduler::Ddim(_) => "DDIM",
            Scheduler::Euler(e) if e.is_ancestral() => "Euler a",
            Scheduler::Euler(_) => "Euler",
        }
    }

    /// Whether each step adds fresh noise (and so needs it passed in).
    pub fn needs_noise(&self) -> bool {
        matches!(self, Scheduler::Euler(e) if e.is_ancestral())
    }

    /// The timestep the denoiser sees at each step.
    pub fn timesteps(&self) -> Vec<f64> {
        match self {
            Scheduler::Ddim(d) => d.timesteps().iter().map(|&t| t as f64).collect(),
            Scheduler::Euler(e) => e.timesteps().to_vec(),
        }
    }

    /// Clean latents `x` noised to the level of step `index` (where an
    /// image-to-image run starts).
    pub fn add_noise(
        &self,
        x: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        match self {
            Scheduler::Ddim(d) => d.add_noise(x, noise, d.timesteps()[index]),
            Scheduler::Euler(e) => e.add_noise(x, noise, index),
        }
    }

    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Scheduler::Ddim(d) => d.init_noise_sigma(),
            Scheduler::Euler(e) => e.init_noise_sigma(),
        }
    }

    /// The denoiser's input at step `index`.
    pub fn scale_model_input(&self, sample: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        match self {
            Scheduler::Ddim(_) => Ok(sample.clone()),
            Scheduler::Euler(e) => e.scale_model_input(sample, index),
        }
    }

    pub fn step(
        &self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        match self {
            Scheduler::Ddim(d) => d.step(model_output, d.timesteps()[index], sample),
            Scheduler::Euler(e) => e.step(model_output, index, sample, noise),
        }
    }
}
