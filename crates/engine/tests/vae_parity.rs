//! Parity of the VAE decoder with diffusers on the tiny SD1.5-class model,
//! at batch 1 and batch 2 (candle's batched-matmul defect hits batch 2).

mod support;

use candle_core::{DType, Device, Tensor};
use cyberimage_engine::models::vae::VaeDecoder;
use cyberimage_kernels::relative_error;
use support::{model_dir, references};

#[test]
fn vae_decode_matches_diffusers_at_batch_1_and_2() {
    let refs = references();
    let vae = VaeDecoder::load(&model_dir().join("vae"), DType::F32, &Device::Cpu).unwrap();
    let latents = &refs["initial_latents"];
    let expected = &refs["vae_decode_of_initial"];
    let single = vae.decode(latents).unwrap();
    assert_eq!(single.dims(), expected.dims());
    let err = relative_error(&single, expected).unwrap();
    eprintln!("VAE relative error {err:e}");
    assert!(err <= 1e-4, "relative error {err}");

    // A batch of two (the second image different) decodes each image as a
    // batch of one would.
    let other = (latents * -0.5).unwrap();
    let batch = vae
        .decode(&Tensor::cat(&[latents, &other], 0).unwrap())
        .unwrap();
    let first = batch.narrow(0, 0, 1).unwrap();
    let second = batch.narrow(0, 1, 1).unwrap();
    assert!(relative_error(&first, expected).unwrap() <= 1e-4);
    let other_alone = vae.decode(&other).unwrap();
    assert!(relative_error(&second, &other_alone).unwrap() <= 1e-5);
}
