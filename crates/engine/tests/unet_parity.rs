//! Parity of the UNet with diffusers on the tiny SD1.5-class model: one
//! CFG-batched forward (batch 2, uncond then cond) at t = 500.

mod support;

use candle_core::{DType, Device, Tensor};
use cyberimage_engine::models::unet::UNet;
use cyberimage_kernels::relative_error;
use support::{model_dir, references};

#[test]
fn unet_forward_matches_diffusers() {
    let refs = references();
    let unet = UNet::load(&model_dir().join("unet"), DType::F32, &Device::Cpu).unwrap();
    let emb = &refs["text_embeddings"];
    // references: row 0 = prompt, row 1 = negative; CFG order is uncond, cond.
    let context = Tensor::cat(
        &[emb.narrow(0, 1, 1).unwrap(), emb.narrow(0, 0, 1).unwrap()],
        0,
    )
    .unwrap();
    let out = unet
        .forward(&refs["unet_input"], 500.0, &context, None)
        .unwrap();
    let expected = &refs["unet_output_t500"];
    assert_eq!(out.dims(), expected.dims());
    let err = relative_error(&out, expected).unwrap();
    eprintln!("UNet relative error {err:e}");
    assert!(err <= 1e-4, "relative error {err}");
}
