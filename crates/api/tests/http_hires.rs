//! The hires fix over REST and AUTOMATIC1111's txt2img, with the testkit's
//! scripted engine double (a STAND-IN: its text-to-image paints a seeded
//! pattern, its image-to-image XORs the input with the seed, its upscaler
//! is nearest-neighbour; the real engine's hires jobs are checked against
//! a hand-made chain of jobs in `tests/ecosystem/test_a1111_api.py`).
//! Checked: the final size, both passes' steps counted as one job's,
//! the first pass's seed carried into the second, the upscaler named or
//! Lanczos, the PNG's A1111 text, and every bad request refused with a
//! 400 naming `hires`, queueing nothing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cyberimage_testkit::ScriptedGenerator;
use serde_json::{json, Value};
use support::*;

async fn start_with_upscaler() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path(), 20, Some(Duration::from_millis(1))).await;
    service.set_file_reader(Arc::new(ScriptedGenerator::default()));
    std::fs::write(
        dir.path().join("upscalers").join("scripted-x4.pth"),
        b"scripted upscaler x4",
    )
    .unwrap();
    let base = serve_on_port_0(service, &Default::default()).await;
    Server::new(base, dir)
}

async fn picture(s: &Server, status: &Value, index: usize) -> (image::RgbImage, Vec<u8>) {
    let url = status["images"][index]["url"].as_str().unwrap();
    let bytes = s.get(url).await.bytes().await.unwrap().to_vec();
    (image::load_from_memory(&bytes).unwrap().into_rgb8(), bytes)
}

fn parameters(png: &[u8]) -> String {
    let text = cyberimage_store::read_png_text(png).unwrap();
    text.into_iter().find(|(k, _)| k == "parameters").unwrap().1
}

async fn run(s: &Server, body: Value) -> Value {
    let r = s.post("/api/generate", body).await;
    assert_eq!(r.status(), 202);
    let r: Value = r.json().await.unwrap();
    s.wait_status(r["job_id"].as_str().unwrap(), &["completed", "failed"])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hires_job_enlarges_then_redraws_each_picture_with_its_seed() {
    let s = start_with_upscaler().await;
    let settings = json!({"num_inference_steps": 10, "width": 64, "height": 80,
                          "seed": 40, "num_images": 2});
    let plain = run(
        &s,
        json!({"model_id": "tiny", "prompt": "a harbour", "settings": settings}),
    )
    .await;
    assert_eq!(plain["status"], "completed", "{plain}");

    let mut hires_settings = settings.clone();
    hires_settings["hires"] = json!({"upscaler": "scripted-x4", "strength": 0.5});
    let done = run(
        &s,
        json!({"model_id": "tiny", "prompt": "a harbour", "settings": hires_settings}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    // Two pictures: 10 first-pass steps each, then int(10 · 0.5) each.
    assert_eq!(done["progress"]["total_steps"], 30, "{done}");
    assert_eq!(done["progress"]["step"], 30, "{done}");
    assert_eq!(
        done["settings"]["hires"],
        json!({"width": 128, "height": 160, "steps": 10, "strength": 0.5,
               "upscaler": "scripted-x4",
               "upscaler_sha256": done["settings"]["hires"]["upscaler_sha256"]}),
    );
    assert_eq!(
        done["settings"]["hires"]["upscaler_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    for index in 0..2 {
        let (small, _) = picture(&s, &plain, index).await;
        let (large, png) = picture(&s, &done, index).await;
        assert_eq!(large.dimensions(), (128, 160));
        // Nearest ×2, then the double's second pass: XOR with the seed.
        let seed = 40 + index as u8;
        for (x, y) in [(0, 0), (17, 5), (63, 79)] {
            let want = small.get_pixel(x, y).0.map(|b| b ^ seed);
            assert_eq!(large.get_pixel(2 * x + 1, 2 * y).0, want, "({x}, {y})");
        }
        let text = parameters(&png);
        assert!(
            text.contains("Steps: 10,")
                && text.contains(&format!("Seed: {},", 40 + index))
                && text.contains("Size: 64x80,")
                && text.contains("Denoising strength: 0.5")
                && text.contains(
                    "Hires resize: 128x160, Hires steps: 10, Hires upscaler: scripted-x4"
                ),
            "{text}"
        );
    }

    // Lanczos when no upscaler is named (and `true` asks for every default).
    let mut lanczos = settings.clone();
    lanczos["num_images"] = json!(1);
    lanczos["hires"] = json!(true);
    let done = run(
        &s,
        json!({"model_id": "tiny", "prompt": "a harbour", "settings": lanczos}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["total_steps"], 17, "{done}");
    let (large, png) = picture(&s, &done, 0).await;
    assert_eq!(large.dimensions(), (128, 160));
    assert!(
        parameters(&png)
            .contains("Hires resize: 128x160, Hires steps: 10, Hires upscaler: Lanczos"),
        "{}",
        parameters(&png)
    );

    // AUTOMATIC1111's txt2img fields; its latent upscaler enlarges by
    // Lanczos here, and the picture says so.
    let r = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "a harbour", "steps": 4, "width": 64, "height": 64, "seed": 3,
                   "enable_hr": true, "hr_scale": 1.5, "hr_upscaler": "Latent",
                   "denoising_strength": 0.5, "hr_second_pass_steps": 6,
                   "override_settings": {"sd_model_checkpoint": "tiny"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["denoising_strength"], 0.5, "{info}");
    let infotext = info["infotexts"][0].as_str().unwrap();
    assert!(
        infotext.contains("Size: 64x64,")
            && infotext.contains("Hires resize: 96x96, Hires steps: 6, Hires upscaler: Lanczos"),
        "{infotext}"
    );
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(v["images"][0].as_str().unwrap())
        .unwrap();
    assert_eq!(
        image::load_from_memory(&png)
            .unwrap()
            .into_rgb8()
            .dimensions(),
        (96, 96)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hires_requests_are_refused_naming_the_field() {
    let s = start_with_upscaler().await;
    let png = {
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::new(64, 64))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(out)
    };
    // Fields that do not decode are invalid requests; values out of
    // range, invalid parameters.
    let (decode, value) = ("invalid_request", "invalid_parameter");
    let cases = [
        (
            json!({"scale": 9}),
            value,
            "hires.scale must be between 1 and 4",
        ),
        (
            json!({"scale": "2"}),
            decode,
            "hires.scale must be a number",
        ),
        (
            json!({"strength": 0}),
            value,
            "hires.strength must be above 0",
        ),
        (json!({"steps": -1}), value, "hires.steps"),
        (json!({"width": 32}), value, "smaller than the first pass"),
        (json!({"upscaler": "nope"}), value, "no upscaler \"nope\""),
        (
            json!({"upscaler": "../escape"}),
            value,
            "not an upscaler name",
        ),
        (
            json!({"scales": 2}),
            decode,
            "unknown field settings.hires.scales",
        ),
        (json!("yes"), decode, "must be an object"),
    ];
    for (hires, code, words) in cases {
        let r = s
            .post(
                "/api/generate",
                json!({"model_id": "tiny", "prompt": "x",
                       "settings": {"width": 64, "height": 64, "hires": hires}}),
            )
            .await;
        let message = assert_error(r, 400, code).await;
        assert!(message.contains(words), "{hires}: {message}");
    }
    let r = s
        .post(
            "/api/generate",
            json!({"model_id": "tiny", "prompt": "x", "init_image": png, "hires": true}),
        )
        .await;
    let message = assert_error(r, 400, "invalid_parameter").await;
    assert!(
        message.contains("does not apply to an init_image"),
        "{message}"
    );
    let queue: Value = s.get("/api/queue").await.json().await.unwrap();
    assert_eq!(queue["total"], 0, "nothing was queued: {queue}");
}
