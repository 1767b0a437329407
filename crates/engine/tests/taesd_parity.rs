//! The tiny preview decoder (TAESD's architecture) against diffusers'
//! `AutoencoderTiny` decoder on tiny random weights
//! (`fixtures/taesd_references.py`): the 4-channel one from diffusers'
//! folder and from the original files' layout (both must give the same
//! picture), and a 16-channel one (TAESD3 / TAEF1) in the original layout.

mod support;

use candle_core::Device;
use cyberimage_engine::models::taesd::TinyDecoder;
use support::{assert_close, fixture_dir};

#[test]
fn decoders_match_diffusers_in_both_layouts() {
    let dir = fixture_dir("taesd");
    let mut refs = support::references_of("taesd");
    let dev = Device::Cpu;
    for (path, channels) in [
        (dir.join("tiny-taesd"), 4),
        (dir.join("tiny-taesd_decoder.safetensors"), 4),
        (dir.join("tiny-taef1_decoder.safetensors"), 16),
    ] {
        let decoder = TinyDecoder::read(&path, &dev).unwrap();
        assert_eq!(decoder.latent_channels(), channels, "{}", path.display());
        let latents = refs[&format!("latents.{channels}")].clone();
        // diffusers' decoder maps its [0, 1] picture to [-1, 1].
        let ours = ((decoder.decode(&latents).unwrap() * 2.0).unwrap() - 1.0).unwrap();
        assert_close(
            &path.display().to_string(),
            &ours,
            refs.get(&format!("decoded.{channels}")).unwrap(),
            1e-5,
        );
    }
    let junk = fixture_dir("upscalers").join("tiny-compact-x4.safetensors");
    let err = TinyDecoder::read(&junk, &dev).err().unwrap().to_string();
    assert!(
        err.contains("tiny-autoencoder") || err.contains("fits no layer"),
        "{err}"
    );
    refs.clear();
}
