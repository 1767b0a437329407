//! Upscaling jobs: a picture made larger by a super-resolution network
//! (ESRGAN, Real-ESRGAN, RDN) from the data dir's `upscalers/` folder or
//! built into the binary. Such a job is a [`GenerationSpec`] whose
//! `upscale` is set: its `model` is the upscaler's name, its `init_image`
//! the stored input at its own size, its size the output's and its steps
//! the tiles the engine runs (so progress reads as usual). This module
//! checks a request into that spec ([`resolve_upscale`]); the tile grid
//! lives here too, so that the jobs service (which counts tiles as steps)
//! and the engine (which runs them) agree.

use serde::{Deserialize, Serialize};

use crate::spec::{GenerationSpec, InitImage, Limits, ValidationError};

/// Input pixels per tile side when the request names none.
pub const DEFAULT_TILE: u32 = 192;
pub const MIN_TILE: u32 = 32;
pub const MAX_TILE: u32 = 1024;
/// The largest output factor asked of any network (AUTOMATIC1111's
/// "Resize" slider goes to 8).
pub const MAX_SCALE: f64 = 8.0;

/// What an upscaling job runs, stored with the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpscaleSpec {
    /// The upscaler's name (its file name in `upscalers/` without the
    /// extension, or a built-in one's).
    pub upscaler: String,
    /// SHA-256 of the upscaler file when the job was made; a worker that
    /// finds another file under the name fails the job.
    pub sha256: String,
    /// `esrgan-rrdb`, `realesrgan-compact`, `rdn`.
    pub architecture: String,
    /// The network's own factor; the output is resized from it when the
    /// job asked for another.
    pub native_scale: u32,
    /// The factor asked for.
    pub scale: f64,
    pub input_width: u32,
    pub input_height: u32,
    /// Input pixels per tile side.
    pub tile: u32,
    /// The gallery image upscaled, when the input was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image: Option<String>,
}

/// An upscaler as the jobs service found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpscalerChoice {
    pub name: String,
    pub sha256: String,
    pub architecture: String,
    pub scale: u32,
    /// Input sides must be multiples of this (the engine pads to it).
    pub size_multiple: u32,
}

/// An upscaling request as an adapter decoded it (numbers wide, checked
/// here).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpscaleAsk {
    /// Output factor; unset: the network's own.
    pub scale: Option<f64>,
    /// Input pixels per tile side; unset: [`DEFAULT_TILE`].
    pub tile: Option<i64>,
}

/// One tile of the input: `[x0, x1) × [y0, y1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub x0: usize,
    pub x1: usize,
    pub y0: usize,
    pub y1: usize,
}

/// The tiles covering a `width × height` input padded to `multiple`, row
/// by row; every tile side but the last ones is `tile` rounded up to the
/// multiple.
pub fn tile_grid(width: usize, height: usize, tile: usize, multiple: usize) -> Vec<Tile> {
    let multiple = multiple.max(1);
    let (width, height) = (
        width.div_ceil(multiple) * multiple,
        height.div_ceil(multiple) * multiple,
    );
    let tile = tile.max(multiple).div_ceil(multiple) * multiple;
    let mut out = Vec::new();
    for y0 in (0..height).step_by(tile) {
        for x0 in (0..width).step_by(tile) {
            out.push(Tile {
                x0,
                x1: (x0 + tile).min(width),
                y0,
                y1: (y0 + tile).min(height),
            });
        }
    }
    out
}

/// An upscaler's name: its file name without the extension, by the same
/// rule as a LoRA's (no separators, no leading dot: it cannot leave the
/// folder).
pub fn check_upscaler_name(name: &str) -> Result<(), ValidationError> {
    crate::lora::check_lora_name(name).map_err(|_| {
        ValidationError::new(
            "upscaler",
            format!(
                "{name:?} is not an upscaler name: up to {} letters, digits, '-', '_', '.', '+' \
                 or spaces, not starting with '.' (the file name in upscalers/ without its \
                 extension)",
                crate::lora::MAX_NAME_CHARS
            ),
        )
    })
}

/// The output size of a `width × height` input at `scale`.
pub fn output_size(width: u32, height: u32, scale: f64) -> (u64, u64) {
    let side = |v: u32| (f64::from(v) * scale).round().max(1.0) as u64;
    (side(width), side(height))
}

/// Checks an upscaling request for a `width × height` input and the
/// upscaler found into a job's spec. `init_image` is left unset: the
/// jobs service keeps the picture once the request is valid.
pub fn resolve_upscale(
    ask: &UpscaleAsk,
    (width, height): (u32, u32),
    upscaler: &UpscalerChoice,
    limits: &Limits,
) -> Result<GenerationSpec, ValidationError> {
    let scale = ask.scale.unwrap_or(f64::from(upscaler.scale));
    if !scale.is_finite() || !(1.0..=MAX_SCALE).contains(&scale) {
        return Err(ValidationError::new(
            "scale",
            format!("scale must be between 1 and {MAX_SCALE}, got {scale}"),
        ));
    }
    let tile = match ask.tile {
        None => DEFAULT_TILE,
        Some(t) if (i64::from(MIN_TILE)..=i64::from(MAX_TILE)).contains(&t) => t as u32,
        Some(t) => {
            return Err(ValidationError::new(
                "tile",
                format!("tile must be between {MIN_TILE} and {MAX_TILE} pixels, got {t}"),
            ))
        }
    };
    let (out_w, out_h) = output_size(width, height, scale);
    let max_side = u64::from(limits.max_upscaled_dimension);
    if out_w > max_side || out_h > max_side || out_w * out_h > limits.max_upscaled_pixels {
        return Err(ValidationError::new(
            "scale",
            format!(
                "a {width}×{height} picture at ×{scale} would be {out_w}×{out_h}; upscaled \
                 pictures may be up to {max_side} pixels a side and {} pixels in all",
                limits.max_upscaled_pixels
            ),
        ));
    }
    let tiles = tile_grid(
        width as usize,
        height as usize,
        tile as usize,
        upscaler.size_multiple as usize,
    )
    .len() as u32;
    Ok(GenerationSpec {
        prompt: String::new(),
        negative_prompt: None,
        model: upscaler.name.clone(),
        width: out_w as u32,
        height: out_h as u32,
        steps: tiles,
        guidance_scale: 0.0,
        num_images: 1,
        seed: 0,
        init_image: None,
        loras: Vec::new(),
        upscale: Some(UpscaleSpec {
            upscaler: upscaler.name.clone(),
            sha256: upscaler.sha256.clone(),
            architecture: upscaler.architecture.clone(),
            native_scale: upscaler.scale,
            scale,
            input_width: width,
            input_height: height,
            tile,
            source_image: None,
        }),
        hires: None,
    })
}

/// The init image of an upscaling job: the whole picture, kept as is.
pub fn upscale_input(sha256: String) -> InitImage {
    InitImage {
        sha256,
        strength: 1.0,
        mask_sha256: None,
        mask_blur: 0,
        keep_unmasked: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(scale: u32, multiple: u32) -> UpscalerChoice {
        UpscalerChoice {
            name: "net".into(),
            sha256: "ab".into(),
            architecture: "esrgan-rrdb".into(),
            scale,
            size_multiple: multiple,
        }
    }

    #[test]
    fn grid_covers_every_pixel_once() {
        let grid = tile_grid(100, 70, 32, 4);
        assert_eq!(grid.len(), 4 * 3);
        let mut covered = vec![0u8; 100 * 72];
        for t in &grid {
            assert_eq!((t.x0 % 4, t.y0 % 4), (0, 0));
            for y in t.y0..t.y1 {
                for x in t.x0..t.x1 {
                    covered[y * 100 + x] += 1;
                }
            }
        }
        // 70 rows padded to 72 for the multiple of 4.
        assert!(covered.iter().all(|&n| n == 1));
        assert_eq!(tile_grid(10, 10, 3, 4)[0].x1, 4);
    }

    #[test]
    fn resolves_scale_size_tiles_and_refuses_what_is_out_of_range() {
        let limits = Limits::default();
        let spec =
            resolve_upscale(&UpscaleAsk::default(), (300, 200), &choice(4, 1), &limits).unwrap();
        assert_eq!((spec.width, spec.height), (1200, 800));
        assert_eq!(spec.steps, 2 * 2);
        assert_eq!(spec.total_steps(), 4);
        let up = spec.upscale.unwrap();
        assert_eq!((up.native_scale, up.scale, up.tile), (4, 4.0, DEFAULT_TILE));

        let half = UpscaleAsk {
            scale: Some(2.5),
            tile: Some(64),
        };
        let spec = resolve_upscale(&half, (301, 200), &choice(4, 2), &limits).unwrap();
        assert_eq!((spec.width, spec.height), (753, 500));
        assert_eq!(spec.steps, 5 * 4);

        for (ask, field) in [
            (
                UpscaleAsk {
                    scale: Some(0.5),
                    tile: None,
                },
                "scale",
            ),
            (
                UpscaleAsk {
                    scale: Some(f64::NAN),
                    tile: None,
                },
                "scale",
            ),
            (
                UpscaleAsk {
                    scale: Some(9.0),
                    tile: None,
                },
                "scale",
            ),
            (
                UpscaleAsk {
                    scale: None,
                    tile: Some(8),
                },
                "tile",
            ),
        ] {
            let err = resolve_upscale(&ask, (64, 64), &choice(4, 1), &limits).unwrap_err();
            assert_eq!(err.field, field, "{ask:?}");
        }
        // 4096² at ×4 is past the output limit.
        let err = resolve_upscale(&UpscaleAsk::default(), (4096, 4096), &choice(4, 1), &limits)
            .unwrap_err();
        assert!(err.message.contains("16384×16384"), "{}", err.message);
    }
}
