//! Upscaling over REST and AUTOMATIC1111's Extras API, with the testkit's
//! scripted engine double as the upscaler (a STAND-IN: nearest-neighbour
//! to the asked size, one progress step per tile; the real networks are
//! parity-tested in the engine's `upscaler_parity.rs`, and the real binary
//! upscales in `tests/ecosystem/test_upscale.py`). Checked: the listing,
//! a gallery image upscaled keeps its prompt and records its source, the
//! output's size and pixels, the PNG's A1111 text, another factor, and
//! every bad request refused with 400 naming the field, queueing nothing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use cyberimage_testkit::ScriptedGenerator;
use serde_json::{json, Value};
use support::*;

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let buf = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 3) as u8])
    });
    image::DynamicImage::ImageRgb8(buf)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn start_with_upscalers() -> (Server, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path(), 20, Some(Duration::from_millis(1))).await;
    service.set_file_reader(Arc::new(ScriptedGenerator::default()));
    let folder = dir.path().join("upscalers");
    std::fs::write(folder.join("scripted-x4.pth"), b"scripted upscaler x4").unwrap();
    std::fs::write(
        folder.join("scripted-x2.safetensors"),
        b"scripted upscaler x2",
    )
    .unwrap();
    std::fs::write(folder.join("broken.pth"), b"no network here").unwrap();
    let base = serve_on_port_0(service, &Default::default()).await;
    (Server::new(base, dir), folder)
}

/// A 400 in the shape every REST error has; its message.
async fn refused(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    v["error"]["message"].as_str().unwrap().to_owned()
}

async fn image_bytes(s: &Server, id: &str) -> Vec<u8> {
    let r = s.get(&format!("/api/get_image/{id}")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gallery_image_is_upscaled_and_keeps_its_prompt() {
    let (s, _) = start_with_upscalers().await;
    let listed: Value = s.get("/api/upscalers").await.json().await.unwrap();
    let names: Vec<(&str, bool)> = listed["upscalers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap(),
                u["runnable"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("broken", false),
            ("scripted-x2", true),
            ("scripted-x4", true)
        ],
        "{listed}"
    );
    assert_eq!(listed["upscalers"][2]["scale"], 4);
    assert!(listed["upscalers"][0]["error"]
        .as_str()
        .unwrap()
        .contains("not an upscaler"));

    let r: Value = s
        .post(
            "/api/generate",
            json!({"model_id": "tiny", "prompt": "a lighthouse at dusk",
                   "settings": {"num_inference_steps": 2, "width": 64, "height": 72}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let done = s
        .wait_status(
            r["job_id"].as_str().unwrap_or_else(|| panic!("{r}")),
            &["completed", "failed"],
        )
        .await;
    assert_eq!(done["status"], "completed", "{r} {done}");
    let source = done["images"][0]["id"].as_str().unwrap().to_owned();

    let resp = s
        .post(
            "/api/upscale",
            json!({"image_id": source, "upscaler": "scripted-x4", "tile": 32}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let queued: Value = resp.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/status/{}", queued["job_id"].as_str().unwrap())
    );
    assert_eq!(
        (queued["width"].clone(), queued["height"].clone()),
        (json!(256), json!(288))
    );
    let up = s
        .wait_status(queued["job_id"].as_str().unwrap(), &["completed", "failed"])
        .await;
    assert_eq!(up["status"], "completed", "{up}");
    assert_eq!(up["model"], "scripted-x4");
    assert_eq!(up["prompt"], "a lighthouse at dusk");
    assert_eq!(up["message"], "Upscaled to 256x288");
    assert_eq!(up["upscale"]["source_image"], source);
    assert_eq!(up["upscale"]["native_scale"], 4);
    assert_eq!(
        (
            up["upscale"]["input_width"].clone(),
            up["upscale"]["input_height"].clone()
        ),
        (json!(64), json!(72))
    );
    // A 64×72 input in 32-pixel tiles: 2 × 3 tiles, counted as steps.
    assert_eq!(up["progress"]["total_steps"], 6);

    let original = image::load_from_memory(&image_bytes(&s, &source).await)
        .unwrap()
        .into_rgb8();
    let bytes = image_bytes(&s, up["images"][0]["id"].as_str().unwrap()).await;
    let upscaled = image::load_from_memory(&bytes).unwrap().into_rgb8();
    assert_eq!(upscaled.dimensions(), (256, 288));
    for (x, y) in [(0, 0), (13, 7), (63, 71)] {
        assert_eq!(
            upscaled.get_pixel(x * 4 + 1, y * 4 + 2),
            original.get_pixel(x, y)
        );
    }
    let text = cyberimage_store::read_png_text(&bytes).unwrap();
    let parameters = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert_eq!(
        parameters,
        "a lighthouse at dusk\nPostprocess upscale by: 4, Postprocess upscaler: scripted-x4, Size: 256x288"
    );
    let record = &text.iter().find(|(k, _)| k == "cyberimage").unwrap().1;
    assert!(
        record.contains(&format!("\"source_image\":\"{source}\"")),
        "{record}"
    );

    // Another factor: 2.5× of an uploaded picture, from the ×4 network.
    let r: Value = s
        .post(
            "/api/upscale",
            json!({"image": format!("data:image/png;base64,{}", b64(&png(30, 20))),
                   "upscaler": "scripted-x4", "scale": 2.5}),
        )
        .await
        .json()
        .await
        .unwrap();
    let done = s
        .wait_status(r["job_id"].as_str().unwrap(), &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        (
            done["settings"]["width"].clone(),
            done["settings"]["height"].clone()
        ),
        (json!(75), json!(50))
    );
    assert_eq!(done["prompt"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upscale_requests_are_refused_naming_the_field() {
    let (s, folder) = start_with_upscalers().await;
    let small = b64(&png(16, 16));
    let cases = [
        (json!({}), "image"),
        (json!({"image": small, "image_id": "img_x"}), "image_id"),
        (
            json!({"image": small, "upscaler": "missing"}),
            "scripted-x4",
        ),
        (
            json!({"image": small, "upscaler": "../escape"}),
            "not an upscaler name",
        ),
        (
            json!({"image": small, "upscaler": "broken"}),
            "not an upscaler",
        ),
        (
            json!({"image": small, "upscaler": "scripted-x4", "scale": 0.5}),
            "scale",
        ),
        (
            json!({"image": small, "upscaler": "scripted-x4", "scale": 9}),
            "scale",
        ),
        (
            json!({"image": small, "upscaler": "scripted-x4", "scale": "big"}),
            "scale",
        ),
        (
            json!({"image": small, "upscaler": "scripted-x4", "tile": 8}),
            "tile",
        ),
        (json!({"image": small, "prompt": "no"}), "unknown field"),
        (
            json!({"image": "img_0123456789abcdef0123456789abcdef"}),
            "no gallery image",
        ),
        (json!({"image": "%%% not base64"}), "image"),
        (json!({"image": b64(b"GIF89a not a picture")}), "image"),
        // 2100 × 4 = 8400 pixels a side, past the 8192 limit.
        (
            json!({"image": b64(&png(2100, 8)), "upscaler": "scripted-x4"}),
            "8192",
        ),
    ];
    for (body, needle) in cases {
        let resp = s.post("/api/upscale", body.clone()).await;
        let message = refused(resp).await;
        assert!(message.contains(needle), "{body}: {message}");
    }
    let queue: Value = s.get("/api/queue").await.json().await.unwrap();
    assert_eq!(queue["total"], 0, "nothing was queued: {queue}");
    assert_eq!(
        std::fs::read_dir(folder.parent().unwrap().join("inputs"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_extras_upscale_waits_for_the_picture() {
    let (s, _) = start_with_upscalers().await;
    let listed: Value = s.get("/sdapi/v1/upscalers").await.json().await.unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["None", "scripted-x2", "scripted-x4"]);

    let picture = b64(&png(32, 24));
    let r = s
        .post(
            "/sdapi/v1/extra-single-image",
            json!({"image": picture, "upscaler_1": "scripted-x2", "upscaling_resize": 2,
                   "resize_mode": 0, "gfpgan_visibility": 0, "upscaler_2": "None"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(answer["image"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        image::load_from_memory(&bytes)
            .unwrap()
            .into_rgb8()
            .dimensions(),
        (64, 48)
    );
    assert!(answer["html_info"]
        .as_str()
        .unwrap()
        .contains("Postprocess upscaler: scripted-x2"));

    // "Scale to" a size of the same ratio.
    let answer: Value = s
        .post(
            "/sdapi/v1/extra-single-image",
            json!({"image": picture, "upscaler_1": "scripted-x4", "resize_mode": 1,
                   "upscaling_resize_w": 96, "upscaling_resize_h": 72}),
        )
        .await
        .json()
        .await
        .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(answer["image"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        image::load_from_memory(&bytes)
            .unwrap()
            .into_rgb8()
            .dimensions(),
        (96, 72)
    );

    // Nothing to do: the picture comes back as sent.
    let same: Value = s
        .post(
            "/sdapi/v1/extra-single-image",
            json!({"image": picture, "upscaler_1": "None"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(same["image"], picture);

    for (body, needle) in [
        (
            json!({"image": picture, "upscaler_1": "scripted-x2", "gfpgan_visibility": 0.5}),
            "gfpgan",
        ),
        (
            json!({"image": picture, "upscaler_1": "scripted-x2", "resize_mode": 1,
                "upscaling_resize_w": 100, "upscaling_resize_h": 40}),
            "aspect ratio",
        ),
        (
            json!({"image": picture, "upscaler_1": "R-ESRGAN 4x+"}),
            "RealESRGAN_x4plus",
        ),
        (json!({"upscaler_1": "scripted-x2"}), "image"),
    ] {
        let message = refused(s.post("/sdapi/v1/extra-single-image", body.clone()).await).await;
        assert!(message.contains(needle), "{body}: {message}");
    }
}
