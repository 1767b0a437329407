//! Upscaling a picture with a super-resolution network, tile by tile: a
//! large picture never goes through the network whole (a 1024² input to
//! RRDBNet would hold gigabytes of activations), and the job can report
//! progress and stop between tiles. Each tile is run with `padding` pixels
//! of its neighbours around it and only its centre is kept, so seams get
//! the context they need (Real-ESRGAN's `tile` / `tile_pad` scheme). The
//! network's own scale is the output's; a request for another factor
//! (2× from a 4× network, as AUTOMATIC1111 allows) resizes the result with
//! Lanczos.

use candle_core::{Device, Tensor};
use cyberimage_core::upscale::tile_grid;

use crate::error::EngineLoadError;
use crate::models::upscalers::UpscalerNet;

/// One picture to upscale: 8-bit RGB, row-major.
pub struct Picture<'a> {
    pub width: usize,
    pub height: usize,
    pub rgb: &'a [u8],
}

/// The result: 8-bit RGB at `width × height`.
#[derive(Debug)]
pub struct Upscaled {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    pub tiles: usize,
}

/// Upscales `picture` to `out_width × out_height` (the network's scale,
/// or another size the caller asked for). `on_tile(done, total)` runs after
/// each tile; `false` stops the run with `Ok(None)`.
pub fn upscale(
    net: &UpscalerNet,
    picture: &Picture,
    out_size: (usize, usize),
    tile: usize,
    device: &Device,
    on_tile: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Option<Upscaled>, EngineLoadError> {
    let (width, height) = (picture.width, picture.height);
    let expected = width * height * 3;
    if picture.rgb.len() != expected || width == 0 || height == 0 {
        return Err(EngineLoadError::Unsupported(format!(
            "a {width}×{height} picture needs {expected} RGB bytes, got {}",
            picture.rgb.len()
        )));
    }
    let scale = net.scale();
    let multiple = net.size_multiple();
    // Padded to the network's multiple; the output is cropped back.
    let padded_w = width.div_ceil(multiple) * multiple;
    let padded_h = height.div_ceil(multiple) * multiple;
    let input = to_tensor(picture, padded_w, padded_h, device)?;
    let pad = net
        .tile_padding()
        .div_ceil(multiple)
        .checked_mul(multiple)
        .unwrap_or(multiple);
    let grid = tile_grid(width, height, tile.max(1), multiple);
    let (native_w, native_h) = (width * scale, height * scale);
    let mut out = vec![0u8; native_w * native_h * 3];
    for (done, t) in grid.iter().enumerate() {
        let (px0, py0) = (t.x0.saturating_sub(pad), t.y0.saturating_sub(pad));
        let (px1, py1) = ((t.x1 + pad).min(padded_w), (t.y1 + pad).min(padded_h));
        let region = input
            .narrow(2, py0, py1 - py0)?
            .narrow(3, px0, px1 - px0)?
            .contiguous()?;
        let result = net.forward(&region)?.clamp(0f32, 1f32)?;
        let result = result
            .narrow(2, (t.y0 - py0) * scale, (t.y1 - t.y0) * scale)?
            .narrow(3, (t.x0 - px0) * scale, (t.x1 - t.x0) * scale)?
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_device(&Device::Cpu)?;
        write_tile(
            &result,
            &mut out,
            native_w,
            native_h,
            t.x0 * scale,
            t.y0 * scale,
        )?;
        if !on_tile(done + 1, grid.len()) {
            return Ok(None);
        }
    }
    let (out_w, out_h) = out_size;
    let rgb = if (out_w, out_h) == (native_w, native_h) {
        out
    } else {
        resize(out, (native_w, native_h), (out_w, out_h))?
    };
    Ok(Some(Upscaled {
        width: out_w,
        height: out_h,
        rgb,
        tiles: grid.len(),
    }))
}

/// `[1, 3, h, w]` in [0, 1], padded to `padded_w × padded_h`.
fn to_tensor(
    picture: &Picture,
    padded_w: usize,
    padded_h: usize,
    device: &Device,
) -> Result<Tensor, EngineLoadError> {
    let plane = padded_w * padded_h;
    let mut data = vec![0f32; 3 * plane];
    // Mirrored past the last row and column, as spandrel and Real-ESRGAN
    // pad for their unshuffling networks.
    let reflect = |v: usize, n: usize| {
        if v < n {
            v
        } else {
            (2 * (n - 1)).saturating_sub(v)
        }
    };
    for y in 0..padded_h {
        let sy = reflect(y, picture.height);
        for x in 0..padded_w {
            let sx = reflect(x, picture.width);
            let src = (sy * picture.width + sx) * 3;
            for c in 0..3 {
                data[c * plane + y * padded_w + x] = f32::from(picture.rgb[src + c]) / 255.0;
            }
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, padded_h, padded_w), device)?)
}

/// Writes a `[3, h, w]` tile at (`x0`, `y0`) of the output, cropping what
/// falls outside it (the padding to the network's multiple).
fn write_tile(
    tile: &Tensor,
    out: &mut [u8],
    out_w: usize,
    out_h: usize,
    x0: usize,
    y0: usize,
) -> Result<(), EngineLoadError> {
    let (_, h, w) = tile.dims3()?;
    let values = tile.flatten_all()?.to_vec1::<f32>()?;
    let plane = h * w;
    for y in 0..h.min(out_h.saturating_sub(y0)) {
        for x in 0..w.min(out_w.saturating_sub(x0)) {
            let dst = ((y0 + y) * out_w + x0 + x) * 3;
            for c in 0..3 {
                out[dst + c] = (values[c * plane + y * w + x] * 255.0).round() as u8;
            }
        }
    }
    Ok(())
}

fn resize(
    rgb: Vec<u8>,
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
) -> Result<Vec<u8>, EngineLoadError> {
    let too_large = |_| EngineLoadError::Unsupported("picture too large to resize".into());
    let image = image::RgbImage::from_raw(
        u32::try_from(w).map_err(too_large)?,
        u32::try_from(h).map_err(too_large)?,
        rgb,
    )
    .ok_or_else(|| EngineLoadError::Unsupported("upscaled buffer has the wrong size".into()))?;
    let resized = image::imageops::resize(
        &image,
        u32::try_from(out_w).map_err(too_large)?,
        u32::try_from(out_h).map_err(too_large)?,
        image::imageops::FilterType::Lanczos3,
    );
    Ok(resized.into_raw())
}
