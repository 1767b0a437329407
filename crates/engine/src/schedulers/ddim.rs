//! The DDIM scheduler (deterministic, eta = 0), configured by a diffusers
//! `scheduler/scheduler_config.json`, with diffusers' "leading",
//! "trailing" and "linspace" timestep spacings and epsilon or v prediction.

use candle_core::Tensor;

use crate::error::EngineLoadError;
use crate::schedulers::config::{alphas_cumprod, linspace, predicts_v, SchedulerConfig};

pub struct Ddim {
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    timesteps: Vec<usize>,
    step_ratio: usize,
    v_prediction: bool,
    /// `Some(r)`: the predicted clean sample is clamped to `±r`.
    clip_sample: Option<f64>,
}

impl Ddim {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self, EngineLoadError> {
        let n = cfg.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(EngineLoadError::Unsupported(format!(
                "{steps} steps with {n} training timesteps"
            )));
        }
        if cfg.thresholding {
            return Err(EngineLoadError::Unsupported(
                "DDIM with dynamic thresholding".into(),
            ));
        }
        let clip_sample = cfg
            .clip_sample
            .unwrap_or(cfg.class_name == "DDIMScheduler")
            .then_some(cfg.clip_sample_range);
        let alphas_cumprod: Vec<f64> = alphas_cumprod(cfg)?.into_iter().map(f64::from).collect();
        let final_alpha_cumprod = if cfg.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let step_ratio = n / steps;
        let timesteps: Vec<usize> = match cfg.timestep_spacing.as_str() {
            "leading" => (0..steps)
                .rev()
                .map(|i| i * step_ratio + cfg.steps_offset)
                .collect(),
            "trailing" => {
                let ratio = n as f64 / steps as f64;
                (1..=steps)
                    .rev()
                    .map(|i| ((i as f64 * ratio).round() as usize).saturating_sub(1))
                    .collect()
            }
            "linspace" => linspace(0.0, (n - 1) as f64, steps)
                .map(|t| t.round() as usize)
                .rev()
                .collect(),
            other => {
                return Err(EngineLoadError::Unsupported(format!(
                    "timestep_spacing {other:?}"
                )))
            }
        };
        // "leading" adds steps_offset (1 in the SD 1.x configs), so as many
        // steps as training timesteps would reach timestep n, past the
        // noise schedule (diffusers fails there with an index error).
        if let Some(&last) = timesteps.iter().find(|&&t| t >= n) {
            return Err(EngineLoadError::Unsupported(format!(
                "{steps} steps reach timestep {last} with steps_offset {}, past the {n} training \
                 timesteps: use fewer steps",
                cfg.steps_offset
            )));
        }
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
            step_ratio,
            v_prediction: predicts_v(cfg)?,
            clip_sample,
        })
    }

    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// `√ᾱ_t · x + √(1 − ᾱ_t) · noise`, the forward process at `t`.
    pub fn add_noise(&self, x: &Tensor, noise: &Tensor, t: usize) -> candle_core::Result<Tensor> {
        // diffusers computes these in the sample's float32.
        let alpha = self.alphas_cumprod[t] as f32;
        let (signal, spread) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        (x * f64::from(signal))? + (noise * f64::from(spread))?
    }

    /// DDIM needs no input scaling and starts from unit-variance noise.
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// One denoising step from `t`: the model's output → the previous sample.
    pub fn step(
        &self,
        model_output: &Tensor,
        t: usize,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let alpha_t = self.alphas_cumprod[t];
        let alpha_prev = t
            .checked_sub(self.step_ratio)
            .map(|p| self.alphas_cumprod[p])
            .unwrap_or(self.final_alpha_cumprod);
        let beta_t = 1.0 - alpha_t;
        let (pred_x0, pred_eps) = if self.v_prediction {
            (
                ((sample * alpha_t.sqrt())? - (model_output * beta_t.sqrt())?)?,
                ((model_output * alpha_t.sqrt())? + (sample * beta_t.sqrt())?)?,
            )
        } else {
            (
                ((sample - (model_output * beta_t.sqrt())?)? / alpha_t.sqrt())?,
                model_output.clone(),
            )
        };
        let pred_x0 = match self.clip_sample {
            Some(range) => pred_x0.clamp(-range, range)?,
            None => pred_x0,
        };
        (pred_x0 * alpha_prev.sqrt())? + (pred_eps * (1.0 - alpha_prev).sqrt())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(spacing: &str) -> SchedulerConfig {
        crate::schedulers::config::sd_test_config("DDIMScheduler", spacing)
    }

    #[test]
    fn as_many_steps_as_timesteps_is_a_clear_error_not_a_panic() {
        let err = Ddim::new(&config("leading"), 1000)
            .err()
            .expect("timestep 1000");
        assert!(err.to_string().contains("use fewer steps"), "{err}");
        let ddim = Ddim::new(&config("leading"), 999).unwrap();
        assert_eq!(ddim.timesteps()[0], 999);
        let sample = Tensor::ones(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        for &t in ddim.timesteps() {
            ddim.step(&sample, t, &sample).unwrap();
        }
        for spacing in ["trailing", "linspace"] {
            let ddim = Ddim::new(&config(spacing), 1000).unwrap();
            assert_eq!(ddim.timesteps()[0], 999, "{spacing}");
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_vec1().unwrap()
    }

    #[test]
    fn zero_terminal_snr_v_prediction_starts_from_the_prediction_alone() {
        let mut cfg = config("trailing");
        cfg.rescale_betas_zero_snr = true;
        cfg.prediction_type = "v_prediction".into();
        let ddim = Ddim::new(&cfg, 4).unwrap();
        assert_eq!(ddim.timesteps(), [999, 749, 499, 249]);
        let cpu = &candle_core::Device::Cpu;
        let sample = Tensor::new(&[0.3f32, -2.0], cpu).unwrap();
        let v = Tensor::new(&[-0.5f32, 0.25], cpu).unwrap();
        // At alpha_bar = 0: x0 = -v and eps = the sample, whatever it is.
        let a = ddim.alphas_cumprod[749];
        let got = values(&ddim.step(&v, 999, &sample).unwrap());
        let want = [
            0.5 * a.sqrt() + 0.3 * (1.0 - a).sqrt(),
            -0.25 * a.sqrt() - 2.0 * (1.0 - a).sqrt(),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn clip_sample_follows_the_config_and_the_class_default() {
        let cpu = &candle_core::Device::Cpu;
        let sample = Tensor::new(&[5.0f32], cpu).unwrap();
        let eps = Tensor::new(&[0.0f32], cpu).unwrap();
        let step = |cfg: &SchedulerConfig| {
            values(
                &Ddim::new(cfg, 10)
                    .unwrap()
                    .step(&eps, 901, &sample)
                    .unwrap(),
            )[0]
        };
        let mut cfg = config("leading");
        let free = step(&cfg);
        cfg.clip_sample = None; // DDIMScheduler's own default is to clip
        let clipped = step(&cfg);
        assert!(
            free > 5.0 && clipped < 1.5,
            "unclipped {free}, clipped {clipped}"
        );
        cfg.class_name = "PNDMScheduler".into(); // run as DDIM, never clipped
        assert_eq!(step(&cfg), free);
        cfg.thresholding = true;
        assert!(Ddim::new(&cfg, 10)
            .err()
            .unwrap()
            .to_string()
            .contains("thresholding"));
    }
}
