//! Schedulers: what a model's `scheduler/scheduler_config.json` asks for,
//! the noise schedule they share, and the one interface the pipeline
//! drives. `_class_name` picks the algorithm: Euler for
//! `EulerDiscreteScheduler` (SD-Turbo ships it), Euler-ancestral for
//! `EulerAncestralDiscreteScheduler`, DDIM for everything else (SD 1.5's
//! PNDM and DDIM-family configs run as deterministic DDIM).

use candle_core::Tensor;
use serde::Deserialize;

use crate::ddim::Ddim;
use crate::euler::Euler;
use crate::EngineLoadError;

#[derive(Clone, Debug, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    #[serde(default)]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "default_prediction")]
    pub prediction_type: String,
    #[serde(default = "default_spacing")]
    pub timestep_spacing: String,
    // Euler options; the defaults are what we implement.
    #[serde(default = "default_interpolation")]
    pub interpolation_type: String,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default = "default_final_sigmas")]
    pub final_sigmas_type: String,
}

fn default_train_steps() -> usize {
    1000
}
fn default_prediction() -> String {
    "epsilon".into()
}
fn default_spacing() -> String {
    "leading".into()
}
fn default_interpolation() -> String {
    "linear".into()
}
fn default_final_sigmas() -> String {
    "zero".into()
}

/// The cumulative products of `1 - beta`, in float32 as diffusers computes
/// them, so trajectories agree to the bits that matter.
pub fn alphas_cumprod(cfg: &SchedulerConfig) -> Result<Vec<f32>, EngineLoadError> {
    let n = cfg.num_train_timesteps;
    let betas: Vec<f32> = match cfg.beta_schedule.as_str() {
        "scaled_linear" => linspace(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
            .map(|b| (b as f32) * (b as f32))
            .collect(),
        "linear" => linspace(cfg.beta_start, cfg.beta_end, n)
            .map(|b| b as f32)
            .collect(),
        other => {
            return Err(EngineLoadError::Unsupported(format!(
                "beta_schedule {other:?}"
            )))
        }
    };
    let mut acc = 1f32;
    Ok(betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect())
}

pub fn linspace(start: f64, end: f64, n: usize) -> impl DoubleEndedIterator<Item = f64> {
    let step = if n > 1 {
        (end - start) / (n - 1) as f64
    } else {
        0.0
    };
    (0..n).map(move |i| start + step * i as f64)
}

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

/// The SD 1.x noise schedule for scheduler `class_name` with timestep
/// `spacing` and `steps_offset` 1, as their configs ship it (for tests).
#[cfg(test)]
pub(crate) fn sd_test_config(class_name: &str, spacing: &str) -> SchedulerConfig {
    serde_json::from_value(serde_json::json!({
        "_class_name": class_name, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "steps_offset": 1, "timestep_spacing": spacing,
    }))
    .unwrap()
}
