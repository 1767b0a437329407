//! Test-only helpers. Nothing here is linked into the `cyberimage` binary.
//!
//! [`skipped`] is how a test says it could not run some of its checks here.
//!
//! [`ScriptedGenerator`] is a *test double* of the engine: it paints a
//! deterministic gradient (a function of seed and size) while walking through
//! the same progress and cancel protocol a real pipeline follows, so the jobs
//! service and the HTTP adapters can be tested without model weights.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cyberimage_core::{
    CancelToken, EngineError, GeneratedImage, GenerationSpec, Generator, InputImage, ModelEntry,
    PreviewImage, ProgressObserver, ProgressUpdate, UpscaleRequest, UpscalerInfo,
};

#[derive(Debug, Default)]
pub struct ScriptedGenerator {
    /// Sleep between denoising steps, so tests can catch a job mid-run.
    pub step_delay: Duration,
    /// When set, every generation fails with this engine error message.
    pub fail_with: Option<String>,
    /// When set, a job whose prompt is exactly this panics in the engine
    /// (fault injection: the jobs service must fail that job only).
    pub panic_on_prompt: Option<String>,
    /// How many generations were started (including failed/cancelled).
    pub calls: AtomicU32,
}

impl ScriptedGenerator {
    pub fn new(step_delay: Duration) -> Self {
        Self {
            step_delay,
            ..Default::default()
        }
    }

    pub fn failing(message: &str) -> Self {
        Self {
            fail_with: Some(message.into()),
            ..Default::default()
        }
    }

    /// The pixels the double paints for `seed`: tests compare against this.
    pub fn paint(width: u32, height: u32, seed: u64) -> Vec<u8> {
        let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
        let tint = (seed % 251) as u8;
        for y in 0..height {
            for x in 0..width {
                rgb.push((x * 255 / width.max(1)) as u8);
                rgb.push((y * 255 / height.max(1)) as u8);
                rgb.push(tint);
            }
        }
        rgb
    }
}

impl Generator for ScriptedGenerator {
    fn generate(
        &self,
        model: &ModelEntry,
        spec: &GenerationSpec,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        self.generate_from(model, spec, None, observer, cancel)
    }

    /// With an input picture, each image is that picture with its bytes
    /// XORed by the image's seed (only where an inpainting mask is light):
    /// the input visibly decides the output.
    fn generate_from(
        &self,
        _model: &ModelEntry,
        spec: &GenerationSpec,
        input: Option<&InputImage>,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        if spec.init_image.is_some() != input.is_some() {
            return Err(EngineError::Failed(
                "the input picture and the spec disagree".into(),
            ));
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        observer.on_progress(ProgressUpdate::LoadingModel);
        if let Some(msg) = &self.fail_with {
            return Err(EngineError::Failed(msg.clone()));
        }
        if self.panic_on_prompt.as_deref() == Some(spec.prompt.as_str()) {
            panic!("scripted panic for prompt {:?}", spec.prompt);
        }
        let total = spec.total_steps();
        let mut images = Vec::new();
        let steps = spec.steps_run();
        for index in 0..spec.num_images {
            for step in 0..steps {
                cancel.check()?;
                std::thread::sleep(self.step_delay);
                observer.on_progress(ProgressUpdate::Step {
                    done: index * steps + step + 1,
                    total,
                });
                // A 2×2 preview after every step but the last, as the
                // engine sends them.
                if step + 1 < steps {
                    observer.on_preview(PreviewImage {
                        step: step + 1,
                        width: 2,
                        height: 2,
                        rgb: vec![(step * 10) as u8; 12],
                    });
                }
            }
            observer.on_progress(ProgressUpdate::Decoding);
            let seed = spec.image_seed(index);
            images.push(GeneratedImage {
                width: spec.width,
                height: spec.height,
                rgb: match input {
                    // Inpainting keeps the input where the mask is dark.
                    Some(input) => input
                        .rgb
                        .iter()
                        .enumerate()
                        .map(|(i, b)| match &input.mask {
                            Some(mask) if mask[i / 3] < 128 => *b,
                            _ => b ^ seed as u8,
                        })
                        .collect(),
                    None => Self::paint(spec.width, spec.height, seed),
                },
                seed,
                extra_metadata: vec![("engine".into(), "scripted test double".into())],
            });
        }
        cancel.check()?;
        Ok(images)
    }

    /// A stand-in upscaler: nearest-neighbour to the asked size, one
    /// progress step per tile of the grid the engine would run.
    fn upscale(
        &self,
        request: &UpscaleRequest,
        input: &InputImage,
        observer: &dyn ProgressObserver,
        cancel: &CancelToken,
    ) -> Result<GeneratedImage, EngineError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        observer.on_progress(ProgressUpdate::LoadingModel);
        let tile = if request.tile == 0 { 192 } else { request.tile };
        let tiles = cyberimage_core::upscale::tile_grid(
            input.width as usize,
            input.height as usize,
            tile as usize,
            1,
        )
        .len() as u32;
        for done in 1..=tiles {
            cancel.check()?;
            std::thread::sleep(self.step_delay);
            observer.on_progress(ProgressUpdate::Step { done, total: tiles });
        }
        let (w, h) = (request.width, request.height);
        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
        for y in 0..h {
            let sy = (u64::from(y) * u64::from(input.height) / u64::from(h)) as usize;
            for x in 0..w {
                let sx = (u64::from(x) * u64::from(input.width) / u64::from(w)) as usize;
                let i = (sy * input.width as usize + sx) * 3;
                rgb.extend_from_slice(&input.rgb[i..i + 3]);
            }
        }
        Ok(GeneratedImage {
            width: w,
            height: h,
            rgb,
            seed: 0,
            extra_metadata: vec![("engine".into(), "scripted test double".into())],
        })
    }

    /// A file whose bytes begin `scripted upscaler xN` is a ×N stand-in
    /// upscaler; anything else is refused as the engine refuses files that
    /// are no upscaler.
    fn inspect_upscaler(&self, weights: &std::path::Path) -> Result<UpscalerInfo, EngineError> {
        let bytes = std::fs::read(weights).map_err(|e| EngineError::Failed(e.to_string()))?;
        let scale = bytes
            .strip_prefix(b"scripted upscaler x")
            .and_then(|rest| rest.first())
            .filter(|d| d.is_ascii_digit())
            .map(|d| u32::from(d - b'0'));
        match scale {
            Some(scale) => Ok(UpscalerInfo {
                architecture: "scripted".into(),
                scale,
                size_multiple: 1,
            }),
            None => Err(EngineError::Unsupported(
                "not an upscaler this engine knows".into(),
            )),
        }
    }
}

/// Tells whoever runs the tests that the calling test skipped part or all
/// of its checks, and why. Written straight to stderr, which the test
/// harness does not capture (it captures `print!`/`eprint!`), so a skip
/// never reads as a silent pass; the harness names the test's thread after
/// the test.
pub fn skipped(reason: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}
