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
    /// Lin et al. 2023: betas rescaled so the last timestep is pure noise
    /// (zero terminal SNR), for models trained that way (with v
    /// prediction and "trailing" spacing, as that paper pairs them).
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// DDIM's clamp of the predicted clean sample to
    /// `±clip_sample_range`. Absent, it is the class's default: on for
    /// `DDIMScheduler`, which has it, off for the classes run as DDIM.
    #[serde(default)]
    pub clip_sample: Option<bool>,
    #[serde(default = "default_clip_range")]
    pub clip_sample_range: f64,
    /// Dynamic thresholding (Imagen's); not implemented, so a config that
    /// asks for it is refused rather than run without it.
    #[serde(default)]
    pub thresholding: bool,
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
fn default_clip_range() -> f64 {
    1.0
}

/// The cumulative products of `1 - beta`, in float32 as diffusers computes
/// them, so trajectories agree to the bits that matter. With
/// `rescale_betas_zero_snr` the last one is exactly 0.
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
    let betas = if cfg.rescale_betas_zero_snr {
        rescale_zero_terminal_snr(&betas)
    } else {
        betas
    };
    Ok(cumprod_of_alphas(&betas))
}

fn cumprod_of_alphas(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1f32;
    betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

/// Algorithm 1 of Lin et al. 2023, in float32 step for step as diffusers
/// runs it: `sqrt(alpha_bar)` shifted so its last value is 0 and scaled so
/// its first is unchanged, then turned back into betas.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let roots: Vec<f32> = cumprod_of_alphas(betas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (roots[0], roots[roots.len() - 1]);
    let scale = first / (first - last);
    let bars: Vec<f32> = roots
        .iter()
        .map(|r| {
            let r = (r - last) * scale;
            r * r
        })
        .collect();
    std::iter::once(1.0 - bars[0])
        .chain(bars.windows(2).map(|w| 1.0 - w[1] / w[0]))
        .collect()
}

/// Whether the model predicts v (`true`) or the noise (`false`); a
/// `prediction_type` we do not implement ("sample") is refused, not run as
/// noise prediction.
pub fn predicts_v(cfg: &SchedulerConfig) -> Result<bool, EngineLoadError> {
    match cfg.prediction_type.as_str() {
        "epsilon" => Ok(false),
        "v_prediction" => Ok(true),
        other => Err(EngineLoadError::Unsupported(format!(
            "prediction_type {other:?}"
        ))),
    }
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
        "clip_sample": false,
    }))
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero_snr() -> SchedulerConfig {
        let mut cfg = sd_test_config("DDIMScheduler", "trailing");
        cfg.rescale_betas_zero_snr = true;
        cfg
    }

    #[test]
    fn zero_terminal_snr_matches_diffusers() {
        // diffusers 0.42.1, DDIMScheduler(..., rescale_betas_zero_snr=True).alphas_cumprod
        let want = [
            (0, 0.999_15),
            (1, 0.998_233_5),
            (250, 0.652_456_76),
            (500, 0.241_018_64),
            (900, 0.002_960_391_3),
            (998, 1.967_963_4e-7),
        ];
        let got = alphas_cumprod(&zero_snr()).unwrap();
        for (i, w) in want {
            let rel = ((got[i] - w) / w).abs();
            assert!(rel < 1e-4, "alpha_bar[{i}] = {} (diffusers {w})", got[i]);
        }
        assert_eq!(got[999], 0.0, "the last timestep is pure noise");
        let plain = alphas_cumprod(&sd_test_config("DDIMScheduler", "trailing")).unwrap();
        assert!(plain[999] > 0.004, "without the option nothing changes");
    }

    #[test]
    fn unknown_prediction_types_are_refused() {
        let mut cfg = zero_snr();
        assert!(!predicts_v(&cfg).unwrap());
        cfg.prediction_type = "v_prediction".into();
        assert!(predicts_v(&cfg).unwrap());
        cfg.prediction_type = "sample".into();
        let err = predicts_v(&cfg).unwrap_err().to_string();
        assert!(err.contains("sample"), "{err}");
    }
}
