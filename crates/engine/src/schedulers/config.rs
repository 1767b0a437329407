//! What a model's `scheduler/scheduler_config.json` asks for, and the
//! noise schedule the SD schedulers share (every algorithm file builds on
//! this one; none of them on each other).

use serde::Deserialize;

use crate::error::EngineLoadError;

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
