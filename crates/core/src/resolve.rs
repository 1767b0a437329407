//! [`SpecRequest::resolve`]: the single place where a request's defaults
//! are applied (the model's, the server's) and every field is judged
//! against the [`Limits`], into the [`GenerationSpec`] a worker runs.

use crate::hires::resolve_hires;
use crate::lora::{resolve_loras, take_prompt_loras};
use crate::model::Catalogue;
use crate::spec::{
    img2img_steps, GenerationSpec, Limits, SpecRequest, ValidationError, DEFAULT_STRENGTH,
    MAX_MASK_BLUR, MAX_SEED, RANDOM_SEED,
};

fn in_range(field: &'static str, v: i64, lo: i64, hi: i64) -> Result<i64, ValidationError> {
    if v < lo || v > hi {
        return Err(ValidationError::new(
            field,
            format!("{field} must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(v)
}

fn check_text(field: &'static str, text: &str, max_chars: usize) -> Result<(), ValidationError> {
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(ValidationError::new(
            field,
            format!("{field} is {chars} characters long; the limit is {max_chars}"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ValidationError::new(
            field,
            format!("{field} contains control characters"),
        ));
    }
    Ok(())
}

impl SpecRequest {
    /// Applies the model's defaults and checks every field against `limits`.
    /// `random_seed` is called only when the request names no seed.
    pub fn resolve(
        self,
        catalogue: &Catalogue,
        limits: &Limits,
        random_seed: impl FnOnce() -> u64,
    ) -> Result<GenerationSpec, ValidationError> {
        let prompt = self
            .prompt
            .ok_or_else(|| ValidationError::new("prompt", "prompt is required"))?;
        if prompt.trim().is_empty() {
            return Err(ValidationError::new("prompt", "prompt must not be empty"));
        }
        check_text("prompt", &prompt, limits.max_prompt_chars)?;
        let (prompt, tagged) = take_prompt_loras(&prompt)?;
        if prompt.is_empty() {
            return Err(ValidationError::new(
                "prompt",
                "prompt must not be empty (it holds only <lora:…> tags)",
            ));
        }
        let loras = resolve_loras(self.loras.into_iter().chain(tagged).collect())?;
        let negative_prompt = match self.negative_prompt {
            Some(n) if n.trim().is_empty() => None,
            Some(n) => {
                check_text("negative_prompt", &n, limits.max_prompt_chars)?;
                Some(n)
            }
            None => None,
        };

        let model_key = self
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| catalogue.default_key().to_owned());
        let model = catalogue
            .get(&model_key)
            .ok_or_else(|| ValidationError::unknown_model(catalogue, &model_key))?;
        let d = model.defaults;

        let multiple = model.family.size_multiple();
        let dim = |field: &'static str, v: Option<i64>, default: u32| {
            let v = in_range(
                field,
                v.unwrap_or(default.into()),
                limits.min_dimension.into(),
                limits.max_dimension.into(),
            )?;
            if v % i64::from(multiple) != 0 {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "{field} must be a multiple of {multiple} for {} models, got {v}",
                        model.family.as_str()
                    ),
                ));
            }
            Ok(v as u32)
        };
        let width = dim("width", self.width, d.width)?;
        let height = dim("height", self.height, d.height)?;
        let (min_steps, max_steps) = match model.steps_range {
            Some([min, max]) => (min, max.min(limits.max_steps)),
            None => (1, limits.max_steps),
        };
        let steps = in_range(
            "num_inference_steps",
            self.steps.unwrap_or(d.steps.into()),
            min_steps.into(),
            max_steps.into(),
        )
        .map_err(|mut e| {
            if model.steps_range.is_some() {
                e.message = format!("{} (the range of model {})", e.message, model.key);
            }
            e
        })? as u32;
        // A distilled model runs its own count, whatever was asked.
        let steps = model.fixed_steps.unwrap_or(steps);
        let num_images = in_range(
            "num_images",
            self.num_images.unwrap_or(1),
            1,
            limits.max_num_images.into(),
        )? as u32;

        let guidance = self.guidance_scale.unwrap_or(d.guidance_scale.into());
        let max_g = f64::from(limits.max_guidance_scale);
        if !guidance.is_finite() || !(0.0..=max_g).contains(&guidance) {
            return Err(ValidationError::new(
                "guidance_scale",
                format!("guidance_scale must be between 0 and {max_g}, got {guidance}"),
            ));
        }

        let pixels = u64::from(width) * u64::from(height) * u64::from(num_images);
        if pixels > limits.max_job_pixels {
            return Err(ValidationError::new(
                "num_images",
                format!(
                    "width × height × num_images is {pixels} pixels; the limit per job is {}",
                    limits.max_job_pixels
                ),
            ));
        }

        if let Some(o) = &self.outpaint {
            if self.init_image.is_none() {
                return Err(ValidationError::new(
                    "outpaint",
                    "outpaint extends an init_image: send the init_image too",
                ));
            }
            if self.mask_image.is_some() {
                return Err(ValidationError::new(
                    "outpaint",
                    "outpaint makes its own mask (the new border): send no mask_image with it",
                ));
            }
            for (side, v) in [
                ("left", o.left),
                ("right", o.right),
                ("top", o.top),
                ("bottom", o.bottom),
            ] {
                if !(0..=i64::from(limits.max_dimension)).contains(&v) {
                    return Err(ValidationError::new(
                        "outpaint",
                        format!(
                            "outpaint.{side} must be between 0 and {} pixels, got {v}",
                            limits.max_dimension
                        ),
                    ));
                }
            }
            if o.left + o.right + o.top + o.bottom == 0 {
                return Err(ValidationError::new(
                    "outpaint",
                    "outpaint adds nothing: give at least one side a width",
                ));
            }
        }
        if self.mask_image.is_some() && self.init_image.is_none() {
            return Err(ValidationError::new(
                "mask_image",
                "mask_image says which part of an init_image to repaint: send the init_image too",
            ));
        }
        // Outpainting makes its own mask, which these shape as well.
        let masked = self.mask_image.is_some() || self.outpaint.is_some();
        if let Some(blur) = self.mask_blur {
            if !masked && blur != 0 {
                return Err(ValidationError::new(
                    "mask_blur",
                    "mask_blur softens an inpainting mask: send a mask_image (or outpaint) with it",
                ));
            }
            if !(0..=MAX_MASK_BLUR).contains(&blur) {
                return Err(ValidationError::new(
                    "mask_blur",
                    format!("mask_blur must be between 0 and {MAX_MASK_BLUR} pixels, got {blur}"),
                ));
            }
        }
        if self.keep_unmasked == Some(true) && !masked {
            return Err(ValidationError::new(
                "keep_unmasked",
                "keep_unmasked keeps what an inpainting mask leaves out: send a mask_image (or \
                 outpaint) with it",
            ));
        }
        match (self.strength, &self.init_image) {
            (Some(_), None) => {
                return Err(ValidationError::new(
                    "strength",
                    "strength applies to image-to-image: send an init_image with it",
                ))
            }
            (Some(s), Some(_)) if !s.is_finite() || s <= 0.0 || s > 1.0 => {
                return Err(ValidationError::new(
                    "strength",
                    format!("strength must be above 0 and at most 1, got {s}"),
                ))
            }
            (strength, Some(_)) => {
                let strength = strength.unwrap_or(DEFAULT_STRENGTH);
                if img2img_steps(steps, strength) == 0 {
                    return Err(ValidationError::new(
                        "strength",
                        format!(
                            "strength {strength} of {steps} steps runs none: raise the strength \
                             or num_inference_steps"
                        ),
                    ));
                }
            }
            (None, None) => {}
        }

        // -1 is "random" in A1111's and stable-diffusion.cpp's APIs, and
        // their users send it.
        let seed = match self.seed {
            None | Some(RANDOM_SEED) => random_seed() & MAX_SEED,
            Some(s) => in_range("seed", s, 0, MAX_SEED as i64)? as u64,
        };

        let hires = match self.hires {
            None => None,
            Some(_) if self.init_image.is_some() => {
                return Err(ValidationError::new(
                    "hires",
                    "hires redraws a text-to-image picture larger: it does not apply to an \
                     init_image (send the larger size and a strength instead)",
                ))
            }
            Some(request) => Some(resolve_hires(
                request,
                (width, height),
                steps,
                num_images,
                multiple,
                limits,
            )?),
        };

        Ok(GenerationSpec {
            prompt,
            negative_prompt,
            model: model.key.clone(),
            width,
            height,
            steps,
            guidance_scale: guidance as f32,
            num_images,
            seed,
            // The jobs service stores the input and fills this in.
            init_image: None,
            // ... and these LoRAs' digests.
            loras,
            upscale: None,
            hires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(req: SpecRequest) -> Result<GenerationSpec, ValidationError> {
        let cat = Catalogue::new(Catalogue::seed_models()).unwrap();
        req.resolve(&cat, &Limits::default(), || 42)
    }

    fn prompt(p: &str) -> SpecRequest {
        SpecRequest {
            prompt: Some(p.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_come_from_the_default_model() {
        let spec = resolve(prompt("a cat")).unwrap();
        assert_eq!(spec.model, "flux-1");
        assert_eq!((spec.width, spec.height, spec.steps), (1024, 1024, 30));
        assert_eq!(spec.guidance_scale, 3.5);
        assert_eq!(spec.num_images, 1);
        assert_eq!(spec.seed, 42);
        assert_eq!(spec.negative_prompt, None);
    }

    #[test]
    fn a_models_step_range_and_fixed_steps_hold() {
        let mut models = Catalogue::seed_models();
        models[0].steps_range = Some([10, 40]);
        models[1].fixed_steps = Some(2);
        let cat = Catalogue::new(models.clone()).unwrap();
        let run = |model: &str, steps: Option<i64>| {
            SpecRequest {
                model: Some(model.into()),
                steps,
                ..prompt("a cat")
            }
            .resolve(&cat, &Limits::default(), || 1)
        };
        let first = models[0].key.clone();
        let second = models[1].key.clone();
        assert_eq!(run(&first, Some(10)).unwrap().steps, 10);
        let e = run(&first, Some(50)).unwrap_err();
        assert!(
            e.message.contains("between 10 and 40") && e.message.contains(&first),
            "{}",
            e.message
        );
        assert_eq!(run(&second, Some(30)).unwrap().steps, 2, "fixed steps win");
        assert_eq!(run(&second, None).unwrap().steps, 2);

        let mut bad = models.clone();
        bad[0].steps_range = Some([50, 60]);
        assert!(
            Catalogue::new(bad).is_err(),
            "the default must be in the range"
        );
        let mut bad = models;
        bad[0].fixed_steps = Some(0);
        assert!(Catalogue::new(bad).is_err());
    }

    #[test]
    fn seed_minus_one_is_random_like_omitting_it() {
        let spec = resolve(SpecRequest {
            seed: Some(RANDOM_SEED),
            ..prompt("a cat")
        })
        .unwrap();
        assert_eq!(spec.seed, 42, "the random seed, as without one");
        let fixed = resolve(SpecRequest {
            seed: Some(0),
            ..prompt("a cat")
        })
        .unwrap();
        assert_eq!(fixed.seed, 0);
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: Vec<(SpecRequest, &str)> = vec![
            (SpecRequest::default(), "prompt"),
            (prompt("   "), "prompt"),
            (prompt(&"x".repeat(4001)), "prompt"),
            (prompt("a\u{0}b"), "prompt"),
            (
                SpecRequest {
                    model: Some("nope".into()),
                    ..prompt("a")
                },
                "model",
            ),
            (
                SpecRequest {
                    width: Some(-512),
                    ..prompt("a")
                },
                "width",
            ),
            (
                SpecRequest {
                    width: Some(4096),
                    ..prompt("a")
                },
                "width",
            ),
            (
                SpecRequest {
                    height: Some(1000),
                    ..prompt("a")
                },
                "height",
            ),
            (
                SpecRequest {
                    steps: Some(0),
                    ..prompt("a")
                },
                "num_inference_steps",
            ),
            (
                SpecRequest {
                    steps: Some(151),
                    ..prompt("a")
                },
                "num_inference_steps",
            ),
            (
                SpecRequest {
                    guidance_scale: Some(-0.1),
                    ..prompt("a")
                },
                "guidance_scale",
            ),
            (
                SpecRequest {
                    guidance_scale: Some(f64::NAN),
                    ..prompt("a")
                },
                "guidance_scale",
            ),
            (
                SpecRequest {
                    num_images: Some(9),
                    ..prompt("a")
                },
                "num_images",
            ),
            (
                SpecRequest {
                    num_images: Some(0),
                    ..prompt("a")
                },
                "num_images",
            ),
            (
                SpecRequest {
                    seed: Some(-2),
                    ..prompt("a")
                },
                "seed",
            ),
            (
                SpecRequest {
                    width: Some(2048),
                    height: Some(2048),
                    num_images: Some(8),
                    ..prompt("a")
                },
                "num_images",
            ),
        ];
        for (req, field) in cases {
            let err = resolve(req.clone()).expect_err(&format!("{req:?} must fail"));
            assert_eq!(err.field, field, "{req:?}: {err}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn exactly_the_limit_is_accepted() {
        let spec = resolve(SpecRequest {
            prompt: Some("é".repeat(4000)),
            width: Some(64),
            height: Some(2048),
            steps: Some(150),
            guidance_scale: Some(30.0),
            num_images: Some(4),
            seed: Some(MAX_SEED as i64),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(spec.total_steps(), 600);
        assert_eq!(
            spec.image_seed(1),
            0,
            "per-image seeds wrap inside the safe range"
        );
    }

    #[test]
    fn mask_blur_and_keep_unmasked_need_a_mask_and_a_range() {
        let masked = |blur: Option<i64>, keep: Option<bool>, mask: bool| SpecRequest {
            init_image: Some("img".into()),
            mask_image: mask.then(|| "mask".into()),
            mask_blur: blur,
            keep_unmasked: keep,
            ..prompt("a fox")
        };
        assert!(resolve(masked(Some(4), Some(true), true)).is_ok());
        assert!(resolve(masked(Some(0), Some(false), false)).is_ok());
        for (request, field) in [
            (masked(Some(4), None, false), "mask_blur"),
            (masked(Some(65), None, true), "mask_blur"),
            (masked(Some(-1), None, true), "mask_blur"),
            (masked(None, Some(true), false), "keep_unmasked"),
        ] {
            assert_eq!(resolve(request).unwrap_err().field, field);
        }
    }
}
