//! The "hires fix" (AUTOMATIC1111's name, which its users know): a picture
//! made at the size the model was trained for, then made larger (by an
//! upscaler network or Lanczos) and denoised again at that size from a
//! low strength, so the large picture keeps the small one's composition
//! and gains detail, where asking the model for the large size directly
//! repeats subjects. This module judges a request's `hires` part into the
//! [`HiresSpec`] stored with the job; the worker runs the three stages.

use serde::{Deserialize, Serialize};

use crate::spec::{img2img_steps, Limits, ValidationError};

/// AUTOMATIC1111's defaults: twice the size, redrawn at 0.7.
pub const DEFAULT_HIRES_SCALE: f64 = 2.0;
pub const DEFAULT_HIRES_STRENGTH: f64 = 0.7;
/// The largest factor a request may ask (A1111's slider goes to 4).
pub const MAX_HIRES_SCALE: f64 = 4.0;
/// The upscaler name that means "no network: Lanczos resampling".
pub const LANCZOS: &str = "lanczos";

/// The hires part of a request, as an adapter decoded it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HiresRequest {
    /// Factor over the first pass's size; unset: 2 (or what `width` /
    /// `height` imply).
    pub scale: Option<f64>,
    /// The final size, when asked directly (A1111's `hr_resize_x/y`); a
    /// side left out follows the other's factor.
    pub width: Option<i64>,
    pub height: Option<i64>,
    /// Steps of the second pass's schedule, of which `strength` runs;
    /// unset or 0: the first pass's.
    pub steps: Option<i64>,
    /// 0 < strength ≤ 1; unset: 0.7.
    pub strength: Option<f64>,
    /// An upscaler in `upscalers/` (or built in); unset or `lanczos`:
    /// Lanczos resampling.
    pub upscaler: Option<String>,
}

/// A job's hires pass, stored with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HiresSpec {
    /// The final picture's size.
    pub width: u32,
    pub height: u32,
    /// The second pass's schedule; `img2img_steps(steps, strength)` run.
    pub steps: u32,
    pub strength: f64,
    /// The upscaler network; `None`: Lanczos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscaler: Option<String>,
    /// Its file's digest when the job was made (the jobs service fills it
    /// in; a worker that finds another file fails the job).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upscaler_sha256: String,
}

impl HiresSpec {
    /// The second pass's steps per image.
    pub fn steps_run(&self) -> u32 {
        img2img_steps(self.steps, self.strength)
    }

    /// The upscaler's name as pictures' metadata gives it.
    pub fn upscaler_name(&self) -> &str {
        self.upscaler.as_deref().unwrap_or("Lanczos")
    }
}

fn invalid(message: String) -> ValidationError {
    ValidationError::new("hires", message)
}

/// `request` for a first pass of `width × height` and `steps` steps, on a
/// model whose sides are multiples of `multiple`.
pub fn resolve_hires(
    request: HiresRequest,
    (width, height): (u32, u32),
    steps: u32,
    num_images: u32,
    multiple: u32,
    limits: &Limits,
) -> Result<HiresSpec, ValidationError> {
    let scale = match request.scale {
        Some(s) if !(1.0..=MAX_HIRES_SCALE).contains(&s) => {
            return Err(invalid(format!(
                "hires.scale must be between 1 and {MAX_HIRES_SCALE}, got {s}"
            )))
        }
        Some(s) => s,
        None => DEFAULT_HIRES_SCALE,
    };
    let side = |name: &str, asked: Option<i64>| -> Result<Option<u32>, ValidationError> {
        match asked {
            None | Some(0) => Ok(None),
            Some(v) if v < 0 || v > i64::from(limits.max_dimension) => Err(invalid(format!(
                "hires.{name} must be between 1 and {}, got {v}",
                limits.max_dimension
            ))),
            Some(v) => Ok(Some(v as u32)),
        }
    };
    // As A1111 does with hr_resize_x/y: one side given, the other keeps
    // the picture's proportions.
    let (final_width, final_height) = match (
        side("width", request.width)?,
        side("height", request.height)?,
    ) {
        (Some(w), Some(h)) => (f64::from(w), f64::from(h)),
        (Some(w), None) => (
            f64::from(w),
            f64::from(w) * f64::from(height) / f64::from(width),
        ),
        (None, Some(h)) => (
            f64::from(h) * f64::from(width) / f64::from(height),
            f64::from(h),
        ),
        (None, None) => (f64::from(width) * scale, f64::from(height) * scale),
    };
    // To the model's multiple, as the first pass's sides are.
    let round = |v: f64| ((v / f64::from(multiple)).round() as u32).max(1) * multiple;
    let (final_width, final_height) = (round(final_width), round(final_height));
    if final_width < width || final_height < height {
        return Err(invalid(format!(
            "the hires size {final_width}×{final_height} is smaller than the first pass's \
             {width}×{height}"
        )));
    }
    for (name, v) in [("width", final_width), ("height", final_height)] {
        if v > limits.max_dimension {
            return Err(invalid(format!(
                "the hires {name} would be {v}; the limit is {} (lower hires.scale)",
                limits.max_dimension
            )));
        }
    }
    let pixels = u64::from(final_width) * u64::from(final_height) * u64::from(num_images);
    if pixels > limits.max_job_pixels {
        return Err(invalid(format!(
            "the hires pictures are {pixels} pixels in all; the limit per job is {}",
            limits.max_job_pixels
        )));
    }
    let hires_steps = match request.steps {
        None | Some(0) => steps,
        Some(v) if v < 0 || v > i64::from(limits.max_steps) => {
            return Err(invalid(format!(
                "hires.steps must be between 1 and {}, got {v} (0 or none: the first pass's)",
                limits.max_steps
            )))
        }
        Some(v) => v as u32,
    };
    let strength = match request.strength {
        Some(s) if !s.is_finite() || s <= 0.0 || s > 1.0 => {
            return Err(invalid(format!(
                "hires.strength must be above 0 and at most 1, got {s}"
            )))
        }
        Some(s) => s,
        None => DEFAULT_HIRES_STRENGTH,
    };
    if img2img_steps(hires_steps, strength) == 0 {
        return Err(invalid(format!(
            "hires.strength {strength} of {hires_steps} steps runs none: raise hires.strength or \
             hires.steps"
        )));
    }
    let upscaler = match request.upscaler {
        None => None,
        Some(name) if name.trim().is_empty() || name.eq_ignore_ascii_case(LANCZOS) => None,
        Some(name) => {
            crate::upscale::check_upscaler_name(&name).map_err(|e| invalid(e.message))?;
            Some(name)
        }
    };
    Ok(HiresSpec {
        width: final_width,
        height: final_height,
        steps: hires_steps,
        strength,
        upscaler,
        upscaler_sha256: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(request: HiresRequest) -> Result<HiresSpec, ValidationError> {
        resolve_hires(request, (512, 768), 20, 1, 8, &Limits::default())
    }

    #[test]
    fn defaults_are_automatic1111s() {
        let spec = resolve(HiresRequest::default()).unwrap();
        assert_eq!((spec.width, spec.height), (1024, 1536));
        assert_eq!((spec.steps, spec.strength), (20, 0.7));
        assert_eq!(spec.steps_run(), 14);
        assert_eq!(spec.upscaler, None);
        assert_eq!(spec.upscaler_name(), "Lanczos");
    }

    #[test]
    fn sizes_follow_the_factor_or_the_given_side_rounded_to_the_multiple() {
        let spec = resolve(HiresRequest {
            scale: Some(1.5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((spec.width, spec.height), (768, 1152));
        let spec = resolve(HiresRequest {
            width: Some(1000),
            ..Default::default()
        })
        .unwrap();
        // 1000 → 1000 (a multiple of 8); 1000 · 768 / 512 = 1500 → 1504.
        assert_eq!((spec.width, spec.height), (1000, 1504));
        let spec = resolve(HiresRequest {
            width: Some(700),
            height: Some(900),
            upscaler: Some("Lanczos".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((spec.width, spec.height, spec.upscaler), (704, 904, None));
        let spec = resolve(HiresRequest {
            upscaler: Some("4x-UltraSharp".into()),
            steps: Some(10),
            strength: Some(0.5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(spec.upscaler.as_deref(), Some("4x-UltraSharp"));
        assert_eq!(spec.steps_run(), 5);
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (
                HiresRequest {
                    scale: Some(0.5),
                    ..Default::default()
                },
                "hires.scale",
            ),
            (
                HiresRequest {
                    scale: Some(f64::NAN),
                    ..Default::default()
                },
                "hires.scale",
            ),
            (
                HiresRequest {
                    scale: Some(4.0),
                    ..Default::default()
                },
                "hires height would be 3072",
            ),
            (
                HiresRequest {
                    width: Some(256),
                    ..Default::default()
                },
                "smaller",
            ),
            (
                HiresRequest {
                    width: Some(-3),
                    ..Default::default()
                },
                "hires.width",
            ),
            (
                HiresRequest {
                    steps: Some(151),
                    ..Default::default()
                },
                "hires.steps",
            ),
            (
                HiresRequest {
                    strength: Some(0.0),
                    ..Default::default()
                },
                "hires.strength",
            ),
            (
                HiresRequest {
                    strength: Some(1.5),
                    ..Default::default()
                },
                "hires.strength",
            ),
            (
                HiresRequest {
                    strength: Some(0.04),
                    ..Default::default()
                },
                "runs none",
            ),
            (
                HiresRequest {
                    upscaler: Some("../x".into()),
                    ..Default::default()
                },
                "not an upscaler name",
            ),
        ];
        for (request, words) in cases {
            let err = resolve(request.clone()).unwrap_err();
            assert_eq!(err.field, "hires", "{request:?}");
            assert!(err.message.contains(words), "{request:?}: {}", err.message);
        }
        let four = resolve_hires(
            HiresRequest::default(),
            (2048, 2048),
            20,
            2,
            8,
            &Limits {
                max_dimension: 8192,
                ..Limits::default()
            },
        )
        .unwrap_err();
        assert!(four.message.contains("limit per job"), "{}", four.message);
    }
}
