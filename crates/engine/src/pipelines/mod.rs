//! A family's text-to-image, from encoded prompt to decoded image: SD
//! 1.x/2.x/Turbo/XL (`sd`), SD 3.x (`sd3`), FLUX.1 (`flux`), with the text
//! encoders each keeps or loads per use (`text_encoders`); each also runs
//! image-to-image from clean latents of an input image (`img2img`). Beside
//! them, a picture upscaled tile by tile by a super-resolution network
//! (`upscale`), and a small chat model answering in this process (`chat`).

pub mod chat;
pub mod flux;
pub mod img2img;
pub mod preview;
pub mod sd;
pub mod sd3;
pub(crate) mod text_encoders;
pub mod upscale;

use candle_core::Tensor;

/// Called after each denoising step with (steps done, latents); returning
/// `false` stops the run.
pub type StepCallback<'a> = dyn FnMut(usize, &Tensor) -> bool + 'a;
