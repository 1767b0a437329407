//! PNG encoding with text metadata, thumbnails, and reading text chunks back.

use std::io::Cursor;

use cyberimage_core::GeneratedImage;
use image::imageops::FilterType;
use image::{ImageBuffer, Rgb};

use crate::StoreError;

pub const THUMBNAIL_MAX_SIDE: u32 = 384;

/// Encodes RGB8 pixels as PNG with one text chunk per entry. Latin-1 text
/// goes into `tEXt` (what A1111-style readers look at first); anything else
/// into UTF-8 `iTXt`, which Pillow and ExifTool read as well.
pub fn encode_png(
    image: &GeneratedImage,
    text: &[(String, String)],
) -> Result<Vec<u8>, StoreError> {
    let expected = image.width as usize * image.height as usize * 3;
    if image.rgb.len() != expected {
        return Err(StoreError::Encode(format!(
            "{}×{} RGB needs {expected} bytes, got {}",
            image.width,
            image.height,
            image.rgb.len()
        )));
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let enc = |e: png::EncodingError| StoreError::Encode(e.to_string());
        for (key, value) in text {
            let latin1 = value.chars().all(|c| (c as u32) < 256 && c != '\0');
            if latin1 {
                encoder
                    .add_text_chunk(key.clone(), value.clone())
                    .map_err(enc)?;
            } else {
                encoder
                    .add_itxt_chunk(key.clone(), value.clone())
                    .map_err(enc)?;
            }
        }
        let mut writer = encoder.write_header().map_err(enc)?;
        writer.write_image_data(&image.rgb).map_err(enc)?;
        writer.finish().map_err(enc)?;
    }
    Ok(out)
}

/// A PNG no larger than `THUMBNAIL_MAX_SIDE` on its longer side.
pub fn thumbnail_png(image: &GeneratedImage) -> Result<Vec<u8>, StoreError> {
    let buf: ImageBuffer<Rgb<u8>, _> =
        ImageBuffer::from_raw(image.width, image.height, image.rgb.clone())
            .ok_or_else(|| StoreError::Encode("pixel buffer has the wrong size".into()))?;
    let longest = image.width.max(image.height);
    let thumb = if longest > THUMBNAIL_MAX_SIDE {
        let scale = f64::from(THUMBNAIL_MAX_SIDE) / f64::from(longest);
        let w = ((f64::from(image.width) * scale).round() as u32).max(1);
        let h = ((f64::from(image.height) * scale).round() as u32).max(1);
        image::imageops::resize(&buf, w, h, FilterType::Triangle)
    } else {
        buf
    };
    let mut out = Cursor::new(Vec::new());
    thumb
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    Ok(out.into_inner())
}

/// Every `tEXt`, `zTXt` and `iTXt` entry of a PNG, in file order.
pub fn read_png_text(bytes: &[u8]) -> Result<Vec<(String, String)>, StoreError> {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let reader = decoder
        .read_info()
        .map_err(|e| StoreError::Decode(e.to_string()))?;
    let info = reader.info();
    let mut out: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    for z in &info.compressed_latin1_text {
        let text = z
            .get_text()
            .map_err(|e| StoreError::Decode(e.to_string()))?;
        out.push((z.keyword.clone(), text));
    }
    for i in &info.utf8_text {
        let text = i
            .get_text()
            .map_err(|e| StoreError::Decode(e.to_string()))?;
        out.push((i.keyword.clone(), text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> GeneratedImage {
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 128]);
            }
        }
        GeneratedImage {
            width: w,
            height: h,
            rgb,
            seed: 7,
            extra_metadata: vec![],
        }
    }

    #[test]
    fn text_chunks_round_trip_including_unicode() {
        let img = gradient(64, 32);
        let text = vec![
            (
                "parameters".to_string(),
                "a cat\nSteps: 4, Seed: 7".to_string(),
            ),
            ("prompt".to_string(), "ネオンの街 🌃".to_string()),
        ];
        let png = encode_png(&img, &text).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert_eq!(read_png_text(&png).unwrap(), text);
        let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(decoded.into_raw(), img.rgb, "pixels are lossless");
    }

    #[test]
    fn thumbnail_keeps_aspect_and_caps_size() {
        let png = thumbnail_png(&gradient(1024, 512)).unwrap();
        let t = image::load_from_memory(&png).unwrap();
        assert_eq!((t.width(), t.height()), (384, 192));
        let small = image::load_from_memory(&thumbnail_png(&gradient(64, 64)).unwrap()).unwrap();
        assert_eq!((small.width(), small.height()), (64, 64));
    }

    #[test]
    fn wrong_buffer_size_is_refused() {
        let mut img = gradient(8, 8);
        img.rgb.pop();
        assert!(encode_png(&img, &[]).is_err());
        assert!(thumbnail_png(&img).is_err());
    }
}
