//! Flow-matching Euler (diffusers' `FlowMatchEulerDiscreteScheduler`), the
//! sampler of FLUX and SD3: the model predicts a velocity and each step
//! moves the latents by it over the gap to the next noise level σ.
//!
//! The noise levels are shifted toward 1 (more time at high noise): by a
//! fixed `shift` (SD3, FLUX schnell), or for FLUX dev by
//! exp(μ) / (exp(μ) + 1/σ − 1), where μ grows linearly with the number of
//! image tokens between `base_shift` and `max_shift`.

use candle_core::Tensor;
use serde::Deserialize;

use crate::error::EngineLoadError;

#[derive(Clone, Debug, Deserialize)]
pub struct FlowMatchConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    #[serde(default = "one")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "base_seq_len")]
    pub base_image_seq_len: usize,
    #[serde(default = "max_seq_len")]
    pub max_image_seq_len: usize,
    #[serde(default = "base_shift")]
    pub base_shift: f64,
    #[serde(default = "max_shift")]
    pub max_shift: f64,
    #[serde(default)]
    pub time_shift_type: Option<String>,
    // Variants we do not implement: refused rather than run differently.
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default)]
    pub invert_sigmas: bool,
    #[serde(default)]
    pub stochastic_sampling: bool,
}

fn thousand() -> usize {
    1000
}
fn one() -> f64 {
    1.0
}
fn base_seq_len() -> usize {
    256
}
fn max_seq_len() -> usize {
    4096
}
fn base_shift() -> f64 {
    0.5
}
fn max_shift() -> f64 {
    1.15
}

/// The noise levels of one run: `steps + 1` values from ~1 down to 0.
#[derive(Clone, Debug)]
pub struct FlowSchedule {
    sigmas: Vec<f32>,
}

impl FlowSchedule {
    /// FLUX's schedule for `steps` steps over `image_tokens` packed latent
    /// tokens: σ = linspace(1, 1/steps), then shifted.
    pub fn flux(
        cfg: &FlowMatchConfig,
        steps: usize,
        image_tokens: usize,
    ) -> Result<Self, EngineLoadError> {
        check(cfg, steps)?;
        let base: Vec<f64> =
            crate::schedulers::config::linspace(1.0, 1.0 / steps as f64, steps).collect();
        Ok(Self::shifted(cfg, &base, Some(flux_mu(cfg, image_tokens))))
    }

    /// SD3's schedule: timesteps spread between the shifted training
    /// schedule's largest and smallest σ, then shifted again (as diffusers
    /// does when no σ are given).
    pub fn sd3(cfg: &FlowMatchConfig, steps: usize) -> Result<Self, EngineLoadError> {
        check(cfg, steps)?;
        let n = cfg.num_train_timesteps as f64;
        let fixed = |s: f64| cfg.shift * s / (1.0 + (cfg.shift - 1.0) * s);
        let (sigma_max, sigma_min) = (fixed(1.0), fixed(1.0 / n));
        let base: Vec<f64> =
            crate::schedulers::config::linspace(sigma_max * n, sigma_min * n, steps)
                .map(|t| t / n)
                .collect();
        Ok(Self::shifted(cfg, &base, None))
    }

    fn shifted(cfg: &FlowMatchConfig, base: &[f64], mu: Option<f64>) -> Self {
        let mut sigmas: Vec<f32> = base
            .iter()
            .map(|&s| {
                let s = s as f32 as f64;
                let shifted = match (cfg.use_dynamic_shifting, mu) {
                    (true, Some(mu)) => mu.exp() / (mu.exp() + (1.0 / s - 1.0)),
                    _ => cfg.shift * s / (1.0 + (cfg.shift - 1.0) * s),
                };
                shifted as f32
            })
            .collect();
        sigmas.push(0.0);
        Self { sigmas }
    }

    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// σ at step `index`: FLUX's transformer takes it as its timestep (it
    /// scales by 1000 itself); SD3's takes σ·1000.
    pub fn sigma(&self, index: usize) -> f64 {
        f64::from(self.sigmas[index])
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Clean latents `x` at step `index`'s noise level:
    /// `σ · noise + (1 − σ) · x` (diffusers' `scale_noise`).
    pub fn noised(&self, x: &Tensor, noise: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        let sigma = f64::from(self.sigmas[index]);
        (noise * sigma)? + (x * (1.0 - sigma))?
    }

    /// One Euler step along the predicted velocity.
    pub fn step(
        &self,
        velocity: &Tensor,
        index: usize,
        latents: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let dt = self.sigmas[index + 1] - self.sigmas[index];
        latents + (velocity * f64::from(dt))?
    }
}

/// μ for FLUX dev: linear in the image token count, `base_shift` at
/// `base_image_seq_len` tokens and `max_shift` at `max_image_seq_len`.
fn flux_mu(cfg: &FlowMatchConfig, image_tokens: usize) -> f64 {
    let slope = (cfg.max_shift - cfg.base_shift)
        / (cfg.max_image_seq_len as f64 - cfg.base_image_seq_len as f64);
    let intercept = cfg.base_shift - slope * cfg.base_image_seq_len as f64;
    image_tokens as f64 * slope + intercept
}

fn check(cfg: &FlowMatchConfig, steps: usize) -> Result<(), EngineLoadError> {
    if steps == 0 {
        return Err(EngineLoadError::Unsupported("0 denoising steps".into()));
    }
    let unsupported = [
        (cfg.shift_terminal.is_some(), "shift_terminal"),
        (cfg.use_karras_sigmas, "use_karras_sigmas"),
        (cfg.use_exponential_sigmas, "use_exponential_sigmas"),
        (cfg.use_beta_sigmas, "use_beta_sigmas"),
        (cfg.invert_sigmas, "invert_sigmas"),
        (cfg.stochastic_sampling, "stochastic_sampling"),
        (
            cfg.time_shift_type
                .as_deref()
                .is_some_and(|t| t != "exponential"),
            "time_shift_type other than exponential",
        ),
    ];
    match unsupported.iter().find(|(set, _)| *set) {
        Some((_, what)) => Err(EngineLoadError::Unsupported(format!(
            "flow-matching scheduler option {what} is not implemented"
        ))),
        None => Ok(()),
    }
}
