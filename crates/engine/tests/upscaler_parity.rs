//! Upscaler parity with spandrel (the reference loader of ComfyUI and
//! chaiNNer) on tiny random-weight networks recorded by
//! `fixtures/upscaler_references.py`: ESRGAN's RRDBNet ×4 in the original
//! names and again in BasicSR's inside a `params_ema` pickle, Real-ESRGAN's
//! pixel-unshuffled ×2, and SRVGGNetCompact ×4; and the built-in trained
//! RDN (converted from UpscalerJS) against TF.js. Also: the tiled pipeline
//! gives the whole picture's result where the padding covers the
//! network's reach, and files that are no upscaler are refused by name.

mod support;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use cyberimage_engine::models::upscalers::{Architecture, UpscalerNet};
use cyberimage_engine::pipelines::upscale::{upscale, Picture};
use cyberimage_engine::weights::upscaler_file::read_upscaler_tensors;
use support::{assert_close, fixture_dir};

fn file(name: &str) -> PathBuf {
    fixture_dir("upscalers").join(name)
}

fn net(name: &str) -> UpscalerNet {
    UpscalerNet::from_tensors(read_upscaler_tensors(&file(name), &Device::Cpu).unwrap()).unwrap()
}

fn reference(name: &str) -> Tensor {
    support::references_of("upscalers").remove(name).unwrap()
}

/// The built-in trained upscaler (UpscalerJS's esrgan-medium ×4, an RDN)
/// against TF.js running the package's own files.
#[test]
fn converted_upscalerjs_model_matches_tfjs() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/trained/upscalers");
    let path = dir.join("upscalerjs-esrgan-medium-x4.safetensors");
    let net =
        UpscalerNet::from_tensors(read_upscaler_tensors(&path, &Device::Cpu).unwrap()).unwrap();
    assert_eq!(net.architecture(), Architecture::Rdn);
    assert_eq!(net.scale(), 4);
    let mut references =
        candle_core::safetensors::load(dir.join("references.safetensors"), &Device::Cpu).unwrap();
    let input = references.remove("input").unwrap();
    let expected = references
        .remove("out.upscalerjs-esrgan-medium-x4")
        .unwrap();
    let ours = net.forward(&input).unwrap();
    assert_close("upscalerjs-esrgan-medium-x4", &ours, &expected, 1e-5);
}

#[test]
fn networks_match_spandrel() {
    let input = reference("input");
    for (file_name, stem, architecture, scale, multiple) in [
        (
            "tiny-rrdb-x4.safetensors",
            "tiny-rrdb-x4",
            Architecture::Rrdb,
            4,
            1,
        ),
        (
            "tiny-rrdb-x4-basicsr.pth",
            "tiny-rrdb-x4",
            Architecture::Rrdb,
            4,
            1,
        ),
        (
            "tiny-rrdb-x2.safetensors",
            "tiny-rrdb-x2",
            Architecture::Rrdb,
            2,
            2,
        ),
        (
            "tiny-compact-x4.safetensors",
            "tiny-compact-x4",
            Architecture::Compact,
            4,
            1,
        ),
    ] {
        let net = net(file_name);
        assert_eq!(net.architecture(), architecture, "{file_name}");
        assert_eq!(
            (net.scale(), net.size_multiple()),
            (scale, multiple),
            "{file_name}"
        );
        let ours = net.forward(&input).unwrap();
        assert_close(file_name, &ours, &reference(&format!("out.{stem}")), 1e-5);
    }
}

fn picture_of(tensor: &Tensor) -> (usize, usize, Vec<u8>) {
    let (_, _, h, w) = tensor.dims4().unwrap();
    let chw = tensor.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for plane in &chw {
                rgb.push((plane[y][x] * 255.0).round() as u8);
            }
        }
    }
    (w, h, rgb)
}

fn run(net: &UpscalerNet, w: usize, h: usize, rgb: &[u8], tile: usize) -> (Vec<u8>, usize) {
    let picture = Picture {
        width: w,
        height: h,
        rgb,
    };
    let out = (w * net.scale(), h * net.scale());
    let mut calls = 0;
    let upscaled = upscale(
        net,
        &picture,
        out,
        tile,
        &Device::Cpu,
        &mut |done, total| {
            calls += 1;
            assert!(done <= total);
            true
        },
    )
    .unwrap()
    .expect("not stopped");
    assert_eq!(calls, upscaled.tiles);
    assert_eq!((upscaled.width, upscaled.height), out);
    (upscaled.rgb, upscaled.tiles)
}

#[test]
fn tiles_give_the_whole_pictures_result() {
    let (w, h, rgb) = picture_of(&reference("input"));
    // The Compact network sees 5 pixels around each output pixel, well
    // within the 12 of tile padding: tiled and whole agree exactly.
    let compact = net("tiny-compact-x4.safetensors");
    let (whole, tiles) = run(&compact, w, h, &rgb, 64);
    assert_eq!(tiles, 1);
    let (tiled, tiles) = run(&compact, w, h, &rgb, 8);
    assert_eq!(tiles, 3 * 3);
    assert_eq!(whole, tiled);
    // The same bytes the network gives on the whole picture, clamped.
    let input = Tensor::from_vec(
        (0..3)
            .flat_map(|c| (0..w * h).map(move |p| (c, p)))
            .map(|(c, p)| f32::from(rgb[p * 3 + c]) / 255.0)
            .collect::<Vec<_>>(),
        (1, 3, h, w),
        &Device::Cpu,
    )
    .unwrap();
    let direct = compact.forward(&input).unwrap().clamp(0f32, 1f32).unwrap();
    assert_eq!(picture_of(&direct).2, whole);

    // RRDBNet reaches further than its 16 pixels of padding; the seams
    // still come out within a step or two of the whole picture.
    let rrdb = net("tiny-rrdb-x2.safetensors");
    let (whole, _) = run(&rrdb, w, h, &rgb, 64);
    let (tiled, tiles) = run(&rrdb, w, h, &rgb, 8);
    assert_eq!(tiles, 3 * 3);
    let worst = whole
        .iter()
        .zip(&tiled)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    eprintln!("RRDB x2, 8-pixel tiles: worst difference {worst}/255");
    assert!(worst <= 2, "{worst}");

    // An odd-sized picture through the unshuffling ×2 network: padded to
    // its multiple, cropped back.
    let (odd, _) = run(&rrdb, 23, 19, &rgb[..23 * 19 * 3], 64);
    assert_eq!(odd.len(), 46 * 38 * 3);
}

#[test]
fn another_factor_is_resized_and_cancel_stops_between_tiles() {
    let (w, h, rgb) = picture_of(&reference("input"));
    let compact = net("tiny-compact-x4.safetensors");
    let picture = Picture {
        width: w,
        height: h,
        rgb: &rgb,
    };
    let half = upscale(
        &compact,
        &picture,
        (w * 2, h * 2),
        64,
        &Device::Cpu,
        &mut |_, _| true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (half.width, half.height, half.rgb.len()),
        (48, 40, 48 * 40 * 3)
    );
    let mut seen = 0;
    let stopped = upscale(
        &compact,
        &picture,
        (w * 4, h * 4),
        8,
        &Device::Cpu,
        &mut |_, _| {
            seen += 1;
            false
        },
    )
    .unwrap();
    assert!(stopped.is_none());
    assert_eq!(seen, 1, "stopped after the first tile");
}

#[test]
fn files_that_are_no_upscaler_are_refused() {
    let lora = fixture_dir("tiny-sd15").join("loras/tiny-kohya.safetensors");
    let tensors = read_upscaler_tensors(&lora, &Device::Cpu).unwrap();
    let err = UpscalerNet::from_tensors(tensors)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not an upscaler"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"not a pickle").unwrap();
    let err = read_upscaler_tensors(&junk, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk.pth"), "{err}");
}
