//! Hires-fix jobs: the engine's three existing tasks in a row, on the
//! engine thread. The job's pictures are made at the first pass's size
//! (all of them in one call, so the prompt is encoded once), each is made
//! larger by its upscaler network (or Lanczos), then denoised again at the
//! final size from the job's hires strength, with the picture's own seed
//! (as AUTOMATIC1111's second pass takes it). Progress counts both passes'
//! steps as one job's: the first pass's N × steps, then each picture's
//! second pass.

use cyberimage_core::{
    CancelToken, EngineError, GeneratedImage, GenerationSpec, Generator, HiresSpec, InitImage,
    InputImage, ModelEntry, PreviewImage, ProgressObserver, ProgressUpdate, UpscaleRequest,
};
use cyberimage_store::RgbPicture;

/// An observer that moves a stage's step counts to where that stage sits
/// in the whole job; `steps: false` turns a stage's steps (an upscaler's
/// tiles) into "decoding", which the job's count does not include.
struct Stage<'a> {
    inner: &'a dyn ProgressObserver,
    done_before: u32,
    total: u32,
    steps: bool,
}

impl ProgressObserver for Stage<'_> {
    fn on_progress(&self, update: ProgressUpdate) {
        self.inner.on_progress(match update {
            ProgressUpdate::Step { done, .. } if self.steps => ProgressUpdate::Step {
                done: self.done_before + done,
                total: self.total,
            },
            ProgressUpdate::Step { .. } => ProgressUpdate::Decoding,
            other => other,
        });
    }

    fn on_preview(&self, preview: PreviewImage) {
        self.inner.on_preview(preview);
    }
}

/// Runs `spec` (whose `hires` is set) with `upscaler` (the network's
/// request when the pass names one; its size is set here).
pub(crate) fn run(
    generator: &dyn Generator,
    model: &ModelEntry,
    spec: &GenerationSpec,
    upscaler: Option<&UpscaleRequest>,
    observer: &dyn ProgressObserver,
    cancel: &CancelToken,
) -> Result<Vec<GeneratedImage>, EngineError> {
    let hires = spec
        .hires
        .as_ref()
        .ok_or_else(|| EngineError::Failed("a hires job without its hires pass".into()))?;
    let total = spec.total_steps();
    let first_pass = GenerationSpec {
        hires: None,
        ..spec.clone()
    };
    let small = generator.generate_from(
        model,
        &first_pass,
        None,
        &Stage {
            inner: observer,
            done_before: 0,
            total,
            steps: true,
        },
        cancel,
    )?;
    let mut done = first_pass.total_steps();
    let mut images = Vec::with_capacity(small.len());
    for picture in small {
        cancel.check()?;
        let upscaled = upscale(
            generator,
            hires,
            picture.clone(),
            upscaler,
            observer,
            cancel,
        )?;
        let second_pass = GenerationSpec {
            width: hires.width,
            height: hires.height,
            steps: hires.steps,
            num_images: 1,
            seed: picture.seed,
            init_image: Some(InitImage {
                // The intermediate picture is not stored; the metadata
                // below says how it was made instead.
                sha256: String::new(),
                strength: hires.strength,
                mask_sha256: None,
                mask_blur: 0,
                keep_unmasked: false,
            }),
            hires: None,
            ..spec.clone()
        };
        let mut large = generator.generate_from(
            model,
            &second_pass,
            Some(&upscaled),
            &Stage {
                inner: observer,
                done_before: done,
                total,
                steps: true,
            },
            cancel,
        )?;
        done += second_pass.total_steps();
        let mut image = large
            .pop()
            .ok_or_else(|| EngineError::Failed("the hires pass made no picture".into()))?;
        image.seed = picture.seed;
        image
            .extra_metadata
            .retain(|(k, _)| k != "init_image_sha256" && k != "denoising_strength");
        image.extra_metadata.extend(metadata(spec, hires));
        images.push(image);
    }
    Ok(images)
}

/// A first-pass picture at the hires size, by the pass's network or by
/// Lanczos.
fn upscale(
    generator: &dyn Generator,
    hires: &HiresSpec,
    picture: GeneratedImage,
    upscaler: Option<&UpscaleRequest>,
    observer: &dyn ProgressObserver,
    cancel: &CancelToken,
) -> Result<InputImage, EngineError> {
    let (width, height, rgb) = match upscaler {
        Some(request) => {
            let request = UpscaleRequest {
                width: hires.width,
                height: hires.height,
                ..request.clone()
            };
            let input = InputImage {
                width: picture.width,
                height: picture.height,
                rgb: picture.rgb,
                mask: None,
            };
            let quiet = Stage {
                inner: observer,
                done_before: 0,
                total: 0,
                steps: false,
            };
            let out = generator.upscale(&request, &input, &quiet, cancel)?;
            (out.width, out.height, out.rgb)
        }
        None => {
            observer.on_progress(ProgressUpdate::Decoding);
            let resized = RgbPicture {
                width: picture.width,
                height: picture.height,
                rgb: picture.rgb,
            }
            .resized(hires.width, hires.height)
            .map_err(|e| EngineError::Failed(format!("resizing for the hires pass: {e}")))?;
            (resized.width, resized.height, resized.rgb)
        }
    };
    if (width, height) != (hires.width, hires.height) {
        return Err(EngineError::Failed(format!(
            "the upscaler made {width}×{height}, the hires pass needs {}×{}",
            hires.width, hires.height
        )));
    }
    Ok(InputImage {
        width,
        height,
        rgb,
        mask: None,
    })
}

/// What the pictures' metadata records of the pass (`metadata.rs` writes
/// A1111's words for it).
fn metadata(spec: &GenerationSpec, hires: &HiresSpec) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "first_pass_size".to_string(),
            format!("{}x{}", spec.width, spec.height),
        ),
        (
            "hires_resize".into(),
            format!("{}x{}", hires.width, hires.height),
        ),
        ("hires_steps".into(), hires.steps.to_string()),
        ("denoising_strength".into(), hires.strength.to_string()),
        ("hires_upscaler".into(), hires.upscaler_name().to_string()),
    ];
    if !hires.upscaler_sha256.is_empty() {
        out.push((
            "hires_upscaler_sha256".into(),
            hires.upscaler_sha256.clone(),
        ));
    }
    out
}
