//! Panic isolation of the real generator: a job whose engine code panics
//! fails with the panic's message, the model is dropped, scoped settings
//! are restored, and the next job runs normally.

use cyberimage_core::{Catalogue, ProgressUpdate};

use super::*;

struct NoProgress;

impl ProgressObserver for NoProgress {
    fn on_progress(&self, _: ProgressUpdate) {}
}

fn tiny_job() -> (ModelEntry, GenerationSpec) {
    let model = Catalogue::builtin_test_models()
        .into_iter()
        .find(|m| m.key == "tiny-sd15-random")
        .unwrap();
    let spec = GenerationSpec {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: None,
        model: model.key.clone(),
        width: 64,
        height: 64,
        steps: 2,
        guidance_scale: model.defaults.guidance_scale,
        num_images: 1,
        seed: 5,
        init_image: None,
        loras: Vec::new(),
        upscale: None,
        hires: None,
    };
    (model, spec)
}

#[test]
fn a_panicking_job_fails_alone_and_the_next_one_runs() {
    let models = tempfile::tempdir().unwrap();
    // bf16 where the CPU has it, so the test also sees its thread-local
    // setting restored after the panic.
    let bf16 = cyberimage_kernels::bf16_gemm::available();
    let options = EngineOptions {
        precision: if bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        },
        ..Default::default()
    };
    let generator = CandleGenerator::new(models.path().to_path_buf(), options).unwrap();
    let (model, spec) = tiny_job();
    let cancel = CancelToken::new();

    PANIC_IN_NEXT_JOB.with(|cell| cell.set(Some("injected fault")));
    let failed = generator.generate(&model, &spec, &NoProgress, &cancel);
    match failed {
        Err(EngineError::Failed(message)) => {
            assert_eq!(message, "engine panicked: injected fault")
        }
        other => panic!("expected the panic as a failure, got {other:?}"),
    }
    assert!(
        generator.loaded.lock().expect("not poisoned").is_none(),
        "the model whose state is unknown is dropped"
    );
    assert!(
        !cyberimage_kernels::bf16_gemm::in_use(),
        "the bf16 setting is restored"
    );
    if !bf16 {
        cyberimage_testkit::skipped("bf16 restore: this CPU has no AVX-512 BF16");
    }

    let images = generator
        .generate(&model, &spec, &NoProgress, &cancel)
        .expect("the next job runs normally");
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].rgb.len(), 64 * 64 * 3);
    assert!(generator.loaded.lock().unwrap().is_some());
}

#[test]
fn a_poisoned_model_lock_drops_the_model_and_serves_again() {
    let models = tempfile::tempdir().unwrap();
    let generator = CandleGenerator::new(models.path().to_path_buf(), Default::default()).unwrap();
    let (model, spec) = tiny_job();
    generator
        .generate(&model, &spec, &NoProgress, &CancelToken::new())
        .unwrap();
    // A panic while the lock is held, outside `generate`'s own guard.
    let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _held = generator.loaded.lock().unwrap();
        panic!("poison the lock");
    }));
    assert!(poisoned.is_err() && generator.loaded.is_poisoned());
    assert!(generator.lock_loaded().is_none(), "dropped, not trusted");
    assert!(!generator.loaded.is_poisoned());
    generator
        .generate(&model, &spec, &NoProgress, &CancelToken::new())
        .expect("serves again");
}
