//! The Euler schedulers: diffusers' `EulerDiscreteScheduler` (without
//! churn) and `EulerAncestralDiscreteScheduler`. Sigmas from the noise
//! schedule at the chosen timesteps, a zero final sigma, inputs scaled by
//! `1 / sqrt(sigma² + 1)`, one Euler step of the probability-flow ODE per
//! timestep; the ancestral variant steps down to `sigma_down` and adds
//! fresh noise of `sigma_up`. Epsilon or v prediction; "leading",
//! "trailing" and "linspace" spacings.

use candle_core::Tensor;

use crate::error::EngineLoadError;
use crate::schedulers::config::{alphas_cumprod, linspace, predicts_v, SchedulerConfig};

pub struct Euler {
    timesteps: Vec<f64>,
    /// One per timestep, plus the final 0.
    sigmas: Vec<f64>,
    v_prediction: bool,
    trailing_or_linspace: bool,
    ancestral: bool,
}

impl Euler {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self, EngineLoadError> {
        Self::build(cfg, steps, false)
    }

    pub fn new_ancestral(cfg: &SchedulerConfig, steps: usize) -> Result<Self, EngineLoadError> {
        Self::build(cfg, steps, true)
    }

    pub fn is_ancestral(&self) -> bool {
        self.ancestral
    }

    fn build(
        cfg: &SchedulerConfig,
        steps: usize,
        ancestral: bool,
    ) -> Result<Self, EngineLoadError> {
        let n = cfg.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(EngineLoadError::Unsupported(format!(
                "{steps} steps with {n} training timesteps"
            )));
        }
        let unsupported = |what: String| Err(EngineLoadError::Unsupported(what));
        if cfg.interpolation_type != "linear" {
            return unsupported(format!(
                "Euler interpolation_type {:?}",
                cfg.interpolation_type
            ));
        }
        if cfg.use_karras_sigmas && !ancestral {
            return unsupported("Euler with Karras sigmas".into());
        }
        if cfg.final_sigmas_type != "zero" {
            return unsupported(format!("final_sigmas_type {:?}", cfg.final_sigmas_type));
        }
        // Timesteps are float32 in diffusers; these values are exact in it.
        let timesteps: Vec<f64> = match cfg.timestep_spacing.as_str() {
            "linspace" => linspace(0.0, (n - 1) as f64, steps)
                .map(|t| f64::from(t as f32))
                .rev()
                .collect(),
            "leading" => {
                let ratio = n / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + cfg.steps_offset) as f64)
                    .collect()
            }
            "trailing" => {
                let ratio = n as f64 / steps as f64;
                (0..steps)
                    .map(|i| (n as f64 - i as f64 * ratio).round() - 1.0)
                    .collect()
            }
            other => return unsupported(format!("timestep_spacing {other:?}")),
        };
        let mut alphas = alphas_cumprod(cfg)?;
        if cfg.rescale_betas_zero_snr {
            // As diffusers does: a zero terminal alpha_bar would make the
            // first sigma infinite.
            alphas[n - 1] = 2f32.powi(-24);
        }
        let train_sigmas: Vec<f64> = alphas
            .iter()
            .map(|a| f64::from(((1.0 - a) / a).sqrt()))
            .collect();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| {
                let lo = (t.floor() as usize).min(n - 1);
                let hi = (lo + 1).min(n - 1);
                let frac = t - lo as f64;
                let s = train_sigmas[lo] + (train_sigmas[hi] - train_sigmas[lo]) * frac;
                f64::from(s as f32)
            })
            .collect();
        sigmas.push(0.0);
        Ok(Self {
            timesteps,
            sigmas,
            v_prediction: predicts_v(cfg)?,
            trailing_or_linspace: matches!(cfg.timestep_spacing.as_str(), "trailing" | "linspace"),
            ancestral,
        })
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `x + σ · noise` at step `index`'s σ.
    pub fn add_noise(
        &self,
        x: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        x + (noise * self.sigmas[index])?
    }

    pub fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().copied().fold(0.0, f64::max);
        if self.trailing_or_linspace {
            max
        } else {
            (max * max + 1.0).sqrt()
        }
    }

    pub fn scale_model_input(&self, sample: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        let sigma = self.sigmas[index];
        sample / (sigma * sigma + 1.0).sqrt()
    }

    /// One step; the ancestral variant needs this step's `noise`.
    pub fn step(
        &self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let sigma = self.sigmas[index];
        let pred_x0 = if self.v_prediction {
            ((model_output * (-sigma / (sigma * sigma + 1.0).sqrt()))?
                + (sample / (sigma * sigma + 1.0))?)?
        } else {
            (sample - (model_output * sigma)?)?
        };
        let derivative = ((sample - pred_x0)? / sigma)?;
        let sigma_next = self.sigmas[index + 1];
        if !self.ancestral {
            return sample + (derivative * (sigma_next - sigma))?;
        }
        let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
            / (sigma * sigma))
            .sqrt();
        let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up)
            .max(0.0)
            .sqrt();
        let noise = noise
            .ok_or_else(|| candle_core::Error::Msg("an ancestral step needs its noise".into()))?;
        (sample + (derivative * (sigma_down - sigma))?)? + (noise * sigma_up)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(spacing: &str) -> SchedulerConfig {
        crate::schedulers::config::sd_test_config("EulerDiscreteScheduler", spacing)
    }

    #[test]
    fn zero_terminal_snr_sigmas_match_diffusers() {
        let mut cfg = config("trailing");
        cfg.rescale_betas_zero_snr = true;
        cfg.prediction_type = "v_prediction".into();
        let e = Euler::new(&cfg, 4).unwrap();
        // diffusers 0.42.1: the terminal alpha_bar is set to 2^-24, so the
        // first sigma is 4096, not infinite.
        let want = [4096.0, 5.398_740_8, 1.768_081_1, 0.727_056_1, 0.0];
        for (got, want) in e.sigmas.iter().zip(want) {
            assert!(
                (got - want).abs() <= 1e-4 * want.max(1.0),
                "{got} vs {want}"
            );
        }
        assert!((e.init_noise_sigma() - 4096.0).abs() < 1e-3);
    }

    #[test]
    fn timesteps_follow_diffusers_spacings() {
        assert_eq!(
            Euler::new(&config("leading"), 4).unwrap().timesteps(),
            [751.0, 501.0, 251.0, 1.0]
        );
        assert_eq!(
            Euler::new(&config("trailing"), 4).unwrap().timesteps(),
            [999.0, 749.0, 499.0, 249.0]
        );
        assert_eq!(
            Euler::new(&config("trailing"), 1).unwrap().timesteps(),
            [999.0]
        );
        let e = Euler::new(&config("trailing"), 1).unwrap();
        // SD-Turbo's single step starts at the largest sigma, about 14.6.
        assert!(
            (e.init_noise_sigma() - 14.6146).abs() < 1e-3,
            "{}",
            e.init_noise_sigma()
        );
    }
}
