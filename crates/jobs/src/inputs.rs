//! The input picture of an image-to-image request (and an inpainting
//! request's mask): found (a gallery image id) or decoded (base64, or a
//! `data:` URL), checked against the pixel limit, sized to the job, and
//! kept in the store under its digest before the job is queued; so a
//! queued job never depends on a request body or on a gallery image that
//! may be deleted.

use base64::Engine as _;
use cyberimage_core::spec::DEFAULT_STRENGTH;
use cyberimage_core::{ImageId, InitImage, InputImage, SpecRequest, ValidationError};
use cyberimage_store::{decode_picture, RgbPicture, StoreError, Variant};

use crate::service::{file_work, JobService};
use crate::JobsError;

fn invalid_field(field: &'static str, message: impl Into<String>) -> JobsError {
    JobsError::Invalid(ValidationError::new(field, message))
}

/// Pixels of the picture an outpainting mask also takes, so the seam
/// between picture and new border is redrawn.
const OUTPAINT_OVERLAP: u32 = 8;

/// How an inpainting request's mask is shaped and used (checked by
/// `resolve`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MaskOptions {
    pub blur: u32,
    pub keep_unmasked: bool,
}

impl MaskOptions {
    pub(crate) fn of(request: &SpecRequest) -> Self {
        Self {
            blur: request.mask_blur.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
            keep_unmasked: request.keep_unmasked.unwrap_or(false),
        }
    }
}

/// The pictures of an image-to-image request, before they are kept.
pub(crate) struct Pictures {
    image: RgbPicture,
    mask: Option<RgbPicture>,
}

/// ITU-R 601 luma, as PIL's `convert("L")` computes it (which diffusers'
/// mask processor calls).
fn luma(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| {
            let v = u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471;
            ((v + 0x8000) >> 16) as u8
        })
        .collect()
}

/// The base64 payload of `reference`, with or without a `data:` URL head.
fn base64_payload(reference: &str) -> &str {
    match reference.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, data)| data).unwrap_or(rest),
        None => reference,
    }
}

impl JobService {
    /// The picture `reference` names: a gallery image, or base64 data.
    pub(crate) async fn picture(
        &self,
        reference: &str,
        field: &'static str,
    ) -> Result<RgbPicture, JobsError> {
        let invalid = |message: String| invalid_field(field, message);
        let max_pixels = self.config.limits.max_input_pixels;
        let bytes = match ImageId::parse(reference) {
            Ok(id) => self
                .image_bytes(id, Variant::Full)
                .await
                .map_err(|e| match e {
                    JobsError::ImageNotFound => invalid(format!("no gallery image {reference}")),
                    other => other,
                })?,
            Err(_) => base64::engine::general_purpose::STANDARD
                .decode(base64_payload(reference).trim())
                .map_err(|_| {
                    invalid(format!(
                        "{field} must be a gallery image id (img_…) or base64 image data"
                    ))
                })?,
        };
        file_work(move || decode_picture(&bytes, max_pixels))
            .await
            .map_err(|e| match e {
                StoreError::Decode(why) => invalid(format!("{field}: {why}")),
                other => JobsError::Storage(other),
            })
    }

    /// Prepares an image-to-image request: its size defaults to the
    /// picture's (rounded down to the model's multiple). Returns the
    /// picture, to be kept once the request is valid.
    pub(crate) async fn init_picture(
        &self,
        request: &mut SpecRequest,
    ) -> Result<Option<Pictures>, JobsError> {
        let Some(reference) = request.init_image.clone() else {
            return Ok(None);
        };
        let mut picture = self.picture(&reference, "init_image").await?;
        let mut mask = match request.mask_image.clone() {
            Some(reference) => {
                let mask = self.picture(&reference, "mask_image").await?;
                if (mask.width, mask.height) != (picture.width, picture.height) {
                    return Err(invalid_field(
                        "mask_image",
                        format!(
                            "the mask is {}×{}, the init_image {}×{}: they must be the same size",
                            mask.width, mask.height, picture.width, picture.height
                        ),
                    ));
                }
                Some(mask)
            }
            None => None,
        };
        if let Some(o) = request.outpaint {
            // Checked before the canvas is allocated: each side within the
            // dimension limit, the canvas within the input pixel limit
            // (`resolve` then judges the job's size as usual).
            let limits = &self.config.limits;
            let side = |name: &str, v: i64| -> Result<u32, JobsError> {
                u32::try_from(v)
                    .ok()
                    .filter(|&v| v <= limits.max_dimension)
                    .ok_or_else(|| {
                        invalid_field(
                            "outpaint",
                            format!(
                                "outpaint.{name} must be between 0 and {} pixels, got {v}",
                                limits.max_dimension
                            ),
                        )
                    })
            };
            let sides = (
                side("left", o.left)?,
                side("right", o.right)?,
                side("top", o.top)?,
                side("bottom", o.bottom)?,
            );
            let canvas_pixels = u64::from(picture.width + sides.0 + sides.1)
                * u64::from(picture.height + sides.2 + sides.3);
            if canvas_pixels > limits.max_input_pixels {
                return Err(invalid_field(
                    "outpaint",
                    format!(
                        "the extended canvas would be {canvas_pixels} pixels; the limit is {}",
                        limits.max_input_pixels
                    ),
                ));
            }
            let (canvas, border) = picture.extended(sides, OUTPAINT_OVERLAP);
            picture = canvas;
            mask = Some(border);
            // The new border starts as a copy of the edge: it must be
            // redrawn from noise, not touched up.
            request.strength = request.strength.or(Some(1.0));
        }
        let model = request
            .model
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or(self.catalogue.default_key());
        if let Some(entry) = self.catalogue.get(model) {
            let multiple = i64::from(entry.family.size_multiple());
            let round = |v: u32| (i64::from(v) / multiple) * multiple;
            request.width = request.width.or(Some(round(picture.width)));
            request.height = request.height.or(Some(round(picture.height)));
        }
        Ok(Some(Pictures {
            image: picture,
            mask,
        }))
    }

    /// Keeps `picture` at the job's size (its mask blurred by
    /// `mask.blur`) and returns what the job stores.
    pub(crate) async fn keep_init_picture(
        &self,
        pictures: Pictures,
        width: u32,
        height: u32,
        strength: Option<f64>,
        mask: MaskOptions,
    ) -> Result<InitImage, JobsError> {
        let store = self.store.clone();
        let blur = mask.blur;
        let (sha256, mask_sha256) = file_work(move || {
            let image = store.save_input(&pictures.image.resized(width, height)?)?;
            let mask = match pictures.mask {
                Some(mask) => {
                    // Kept as grey RGB: its luma in every channel.
                    let grey = luma(&mask.rgb);
                    let rgb = grey.iter().flat_map(|&v| [v, v, v]).collect();
                    let mask = RgbPicture { rgb, ..mask }
                        .resized(width, height)?
                        .blurred(blur as f32)?;
                    Some(store.save_input(&mask)?)
                }
                None => None,
            };
            Ok((image, mask))
        })
        .await?;
        let masked = mask_sha256.is_some();
        Ok(InitImage {
            sha256,
            strength: strength.unwrap_or(DEFAULT_STRENGTH),
            mask_sha256,
            mask_blur: if masked { mask.blur } else { 0 },
            keep_unmasked: masked && mask.keep_unmasked,
        })
    }

    /// A queued job's input picture (and mask), as the engine takes them.
    pub(crate) async fn load_init_picture(&self, init: &InitImage) -> Result<InputImage, String> {
        let store = self.store.clone();
        let digests = (init.sha256.clone(), init.mask_sha256.clone());
        let max_pixels = self.config.limits.max_input_pixels;
        let (picture, mask) = file_work(move || {
            let read = |digest: &str| {
                let bytes = store
                    .read_input(digest)?
                    .ok_or_else(|| StoreError::Decode(format!("input {digest} is missing")))?;
                decode_picture(&bytes, max_pixels)
            };
            let mask = digests.1.as_deref().map(read).transpose()?;
            Ok((read(&digests.0)?, mask))
        })
        .await
        .map_err(|e| format!("cannot read the job's input image: {e}"))?;
        Ok(InputImage {
            width: picture.width,
            height: picture.height,
            rgb: picture.rgb,
            // Stored grey: any channel is the luma.
            mask: mask.map(|m| m.rgb.chunks_exact(3).map(|p| p[0]).collect()),
        })
    }
}
