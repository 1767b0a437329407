//! Input pictures of image-to-image jobs: decoded from what a request sent
//! (PNG or JPEG), checked against a pixel limit before any pixel buffer is
//! allocated, normalised to an RGB PNG and kept as `inputs/{sha256}.png`,
//! named by content so the same upload is stored once and a job's record
//! says exactly what it started from.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{ImageBuffer, ImageReader, Limits, Rgb};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// A decoded picture: 8-bit RGB, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbPicture {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Decodes a PNG or JPEG, refusing one above `max_pixels` before decoding
/// it (a small file can claim an enormous canvas).
pub fn decode_picture(bytes: &[u8], max_pixels: u64) -> Result<RgbPicture, StoreError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| StoreError::Decode(e.to_string()))?;
    let format = reader.format().ok_or_else(|| {
        StoreError::Decode("not a PNG or JPEG image (unrecognised format)".into())
    })?;
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg) {
        return Err(StoreError::Decode(format!(
            "{format:?} images are not accepted: send a PNG or JPEG"
        )));
    }
    // The header alone, from a second reader (decoding consumes one).
    let (width, height) = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .and_then(|r| r.into_dimensions().map_err(std::io::Error::other))
        .map_err(|e| StoreError::Decode(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(StoreError::Decode(format!(
            "the image is {width}×{height} ({pixels} pixels); the limit is {max_pixels}"
        )));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| StoreError::Decode(e.to_string()))?
        .into_rgb8();
    Ok(RgbPicture {
        width,
        height,
        rgb: image.into_raw(),
    })
}

impl RgbPicture {
    /// This picture at `width × height` (Lanczos, as PIL resizes for
    /// diffusers' image processor); itself when already that size.
    pub fn resized(self, width: u32, height: u32) -> Result<Self, StoreError> {
        if (self.width, self.height) == (width, height) {
            return Ok(self);
        }
        let buf: ImageBuffer<Rgb<u8>, _> = ImageBuffer::from_raw(self.width, self.height, self.rgb)
            .ok_or_else(|| StoreError::Decode("pixel buffer has the wrong size".into()))?;
        let out = image::imageops::resize(&buf, width, height, FilterType::Lanczos3);
        Ok(Self {
            width,
            height,
            rgb: out.into_raw(),
        })
    }

    /// This picture under a Gaussian blur of `sigma` pixels (a mask's
    /// soft edge; 0 leaves it as it is).
    pub fn blurred(self, sigma: f32) -> Result<Self, StoreError> {
        if sigma <= 0.0 {
            return Ok(self);
        }
        let buf: ImageBuffer<Rgb<u8>, _> = ImageBuffer::from_raw(self.width, self.height, self.rgb)
            .ok_or_else(|| StoreError::Decode("pixel buffer has the wrong size".into()))?;
        let out = image::imageops::blur(&buf, sigma);
        Ok(Self {
            width: self.width,
            height: self.height,
            rgb: out.into_raw(),
        })
    }

    /// Outpainting's canvas: this picture with `left`, `right`, `top` and
    /// `bottom` pixels added, filled by repeating the nearest edge pixel
    /// (a plain colour there would bias the new content towards it), and
    /// its mask: white over the new border and `overlap` pixels into the
    /// picture, so the seam is redrawn too; black elsewhere.
    pub fn extended(
        &self,
        (left, right, top, bottom): (u32, u32, u32, u32),
        overlap: u32,
    ) -> (Self, Self) {
        let (w, h) = (self.width + left + right, self.height + top + bottom);
        // The part of the picture that stays: the seam sides give up
        // `overlap` pixels to the mask.
        let seam = |grown: u32| if grown > 0 { overlap } else { 0 };
        let (keep_x0, keep_x1) = (
            left + seam(left),
            (left + self.width).saturating_sub(seam(right)),
        );
        let (keep_y0, keep_y1) = (
            top + seam(top),
            (top + self.height).saturating_sub(seam(bottom)),
        );
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        let mut mask = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            let sy = y.saturating_sub(top).min(self.height - 1);
            for x in 0..w {
                let sx = x.saturating_sub(left).min(self.width - 1);
                let i = ((sy * self.width + sx) * 3) as usize;
                rgb.extend_from_slice(&self.rgb[i..i + 3]);
                let kept = (keep_x0..keep_x1).contains(&x) && (keep_y0..keep_y1).contains(&y);
                let v = if kept { 0 } else { 255 };
                mask.extend_from_slice(&[v, v, v]);
            }
        }
        (
            Self {
                width: w,
                height: h,
                rgb,
            },
            Self {
                width: w,
                height: h,
                rgb: mask,
            },
        )
    }

    /// An RGB PNG of the picture, without metadata.
    pub fn to_png(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let enc = |e: png::EncodingError| StoreError::Encode(e.to_string());
        let mut writer = encoder.write_header().map_err(enc)?;
        writer.write_image_data(&self.rgb).map_err(enc)?;
        writer.finish().map_err(enc)?;
        Ok(out)
    }
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `name` can be an input's file stem: 64 lowercase hex digits, so
/// no request names a file outside `inputs/`.
pub fn is_input_digest(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        RgbPicture {
            width,
            height,
            rgb: vec![7; (width * height * 3) as usize],
        }
        .to_png()
        .unwrap()
    }

    #[test]
    fn pictures_decode_within_the_limit_and_resize() {
        let picture = decode_picture(&png(20, 10), 1000).unwrap();
        assert_eq!(
            (picture.width, picture.height, picture.rgb.len()),
            (20, 10, 600)
        );
        let big = decode_picture(&png(40, 30), 1000).unwrap_err().to_string();
        assert!(
            big.contains("1200 pixels") && big.contains("limit is 1000"),
            "{big}"
        );
        let resized = picture.resized(8, 4).unwrap();
        assert_eq!(
            (resized.width, resized.height, resized.rgb.len()),
            (8, 4, 96)
        );
        assert!(decode_picture(b"not an image", 1000).is_err());
        assert!(is_input_digest(&sha256_hex(b"x")));
        assert!(!is_input_digest("../../etc/passwd"));
    }

    #[test]
    fn outpainting_extends_the_edges_and_masks_the_border_and_seam() {
        let picture = RgbPicture {
            width: 4,
            height: 2,
            rgb: (0..24).collect(),
        };
        let (canvas, mask) = picture.extended((0, 3, 1, 0), 1);
        assert_eq!((canvas.width, canvas.height), (7, 3));
        // Row 0 is new: a copy of the picture's first row, its last pixel
        // repeated to the right.
        assert_eq!(
            &canvas.rgb[..21],
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 9, 10, 11, 9, 10, 11, 9, 10, 11]
        );
        let row = |y: usize| -> Vec<u8> { (0..7).map(|x| mask.rgb[(y * 7 + x) * 3]).collect() };
        assert_eq!(row(0), vec![255; 7], "the new top row");
        // The top seam's overlap takes row 1 too; row 2 keeps the
        // picture but its last column (the right seam) and the new border.
        assert_eq!(row(1), vec![255; 7]);
        assert_eq!(row(2), vec![0, 0, 0, 255, 255, 255, 255]);
    }
}
