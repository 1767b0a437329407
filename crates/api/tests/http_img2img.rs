//! Image-to-image over REST (with the scripted engine double, whose output
//! is the input picture XORed with the image seed, so the test can see the
//! input reached the engine): a gallery image or a base64 PNG as
//! `init_image`, the size taken from the picture, strength validated, and
//! bad pictures refused with 400 naming `init_image`, queueing nothing.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use support::*;

fn png(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let buf = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([shade, (x * 3) as u8, (y * 5) as u8])
    });
    image::DynamicImage::ImageRgb8(buf)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn decode(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().into_rgb8()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_image_reaches_the_engine_and_is_recorded() {
    let s = start(10, Some(Duration::from_millis(1))).await;
    let upload = base64::engine::general_purpose::STANDARD.encode(png(76, 68, 200));
    let r: Value = s
        .post(
            "/api/generate",
            json!({"model_id": "tiny", "prompt": "from a picture",
                   "settings": {"init_image": format!("data:image/png;base64,{upload}"),
                                "strength": 0.5, "num_inference_steps": 4, "seed": 9}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let done = s
        .wait_status(r["job_id"].as_str().unwrap(), &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    // The size comes from the picture, rounded down to the SD multiple of 8.
    assert_eq!(
        (
            done["settings"]["width"].clone(),
            done["settings"]["height"].clone()
        ),
        (json!(72), json!(64))
    );
    assert_eq!(done["settings"]["strength"], 0.5);
    assert_eq!(
        done["settings"]["init_image"].as_str().unwrap().len(),
        64,
        "the input's digest"
    );
    assert_eq!(
        done["progress"]["total_steps"], 2,
        "strength 0.5 of 4 steps: {done}"
    );
    let id = done["images"][0]["id"].as_str().unwrap().to_owned();
    let bytes = s
        .get(&format!("/api/get_image/{id}"))
        .await
        .bytes()
        .await
        .unwrap();
    let out = decode(&bytes);
    // 76×68 was resized to 72×64; the red channel is flat, so it survives.
    let input = decode(&png(76, 68, 200));
    assert_eq!(
        out.get_pixel(10, 10).0[0],
        200 ^ 9,
        "the engine saw the uploaded picture"
    );
    assert_eq!(input.get_pixel(0, 0).0[0], 200);

    // A gallery image as the input, resized to the size asked for.
    let again: Value = s
        .post(
            "/api/generate",
            json!({"model": "tiny", "prompt": "again", "init_image": id, "width": 64, "height": 64, "seed": 3}),
        )
        .await
        .json()
        .await
        .unwrap();
    let done = s
        .wait_status(again["job_id"].as_str().unwrap(), &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["settings"]["strength"], 0.8,
        "diffusers' default strength"
    );
    let img = done["images"][0]["id"].as_str().unwrap();
    let parameters = s.get(&format!("/api/image/{img}/metadata")).await;
    assert_eq!(parameters.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_init_images_are_refused_naming_the_field() {
    let s = start(10, None).await;
    let cases = [
        (
            json!({"prompt": "x", "model": "tiny", "init_image": "img_0123456789abcdef0123456789abcdef"}),
            "no gallery image",
        ),
        (
            json!({"prompt": "x", "model": "tiny", "init_image": "!!!"}),
            "base64",
        ),
        (
            json!({"prompt": "x", "model": "tiny", "init_image": base64::engine::general_purpose::STANDARD.encode(b"not a picture")}),
            "PNG or JPEG",
        ),
        (
            json!({"prompt": "x", "model": "tiny", "strength": 0.5}),
            "send an init_image",
        ),
        (
            json!({"prompt": "x", "model": "tiny", "strength": 1.5,
                "init_image": base64::engine::general_purpose::STANDARD.encode(png(64, 64, 1))}),
            "at most 1",
        ),
        (
            json!({"prompt": "x", "model": "tiny",
                "init_image": base64::engine::general_purpose::STANDARD.encode(png(16, 16, 1))}),
            "width must be between 64",
        ),
        (
            json!({"prompt": "x", "model": "tiny", "strength": 0.1, "steps": 4,
                "init_image": base64::engine::general_purpose::STANDARD.encode(png(64, 64, 1))}),
            "runs none",
        ),
    ];
    for (body, words) in cases {
        let message = assert_error(
            s.post("/api/generate", body.clone()).await,
            400,
            "invalid_parameter",
        )
        .await;
        assert!(message.contains(words), "{body}: {message}");
    }
    let queue: Value = s.get("/api/queue").await.json().await.unwrap();
    assert_eq!(queue["total"], 0, "nothing was queued");
}

/// Inpainting: a mask (white = repaint) of the picture's size; the engine
/// double keeps the picture where the mask is dark, so the result shows
/// the mask reached it. A mask without a picture, or of another size, is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mask_decides_what_is_repainted() {
    let s = start(10, Some(Duration::from_millis(1))).await;
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut mask = Vec::new();
    let m = image::GrayImage::from_fn(64, 64, |x, _| image::Luma([if x >= 32 { 255 } else { 0 }]));
    image::DynamicImage::ImageLuma8(m)
        .write_to(
            &mut std::io::Cursor::new(&mut mask),
            image::ImageFormat::Png,
        )
        .unwrap();
    let r: Value = s
        .post(
            "/api/generate",
            json!({"model": "tiny", "prompt": "a new right half", "seed": 5, "strength": 1.0,
                   "init_image": b64(png(64, 64, 100)), "mask_image": b64(mask.clone())}),
        )
        .await
        .json()
        .await
        .unwrap();
    let done = s
        .wait_status(r["job_id"].as_str().unwrap(), &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["images"][0]["id"].as_str().unwrap();
    let out = decode(
        &s.get(&format!("/api/get_image/{id}"))
            .await
            .bytes()
            .await
            .unwrap(),
    );
    assert_eq!(
        out.get_pixel(5, 5).0[0],
        100,
        "kept where the mask is black"
    );
    assert_eq!(
        out.get_pixel(50, 5).0[0],
        100 ^ 5,
        "repainted where it is white"
    );

    assert_eq!(done["settings"]["mask_blur"], 0);
    assert_eq!(done["settings"]["keep_unmasked"], false);

    // A blurred mask is another stored mask; the blur and keep_unmasked
    // are recorded with the job.
    let r: Value = s
        .post(
            "/api/generate",
            json!({"model": "tiny", "prompt": "a soft edge", "seed": 5, "strength": 1.0,
                   "init_image": b64(png(64, 64, 100)), "mask_image": b64(mask.clone()),
                   "settings": {"mask_blur": 6, "keep_unmasked": true}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let soft = s
        .wait_status(r["job_id"].as_str().unwrap(), &["completed", "failed"])
        .await;
    assert_eq!(soft["status"], "completed", "{soft}");
    assert_eq!(soft["settings"]["mask_blur"], 6);
    assert_eq!(soft["settings"]["keep_unmasked"], true);
    assert_ne!(
        soft["settings"]["mask_image"],
        done["settings"]["mask_image"]
    );
    for (body, code, field) in [
        (
            json!({"model": "tiny", "prompt": "x", "init_image": b64(png(64, 64, 1)), "mask_blur": 4}),
            "invalid_parameter",
            "mask_image",
        ),
        (
            json!({"model": "tiny", "prompt": "x", "init_image": b64(png(64, 64, 1)),
                "mask_image": b64(mask.clone()), "mask_blur": 65}),
            "invalid_parameter",
            "between 0 and 64",
        ),
        (
            json!({"model": "tiny", "prompt": "x", "init_image": b64(png(64, 64, 1)),
                "mask_image": b64(mask.clone()), "keep_unmasked": "yes"}),
            "invalid_request",
            "true or false",
        ),
    ] {
        let message = assert_error(s.post("/api/generate", body.clone()).await, 400, code).await;
        assert!(message.contains(field), "{body}: {message}");
    }

    let lone = s
        .post(
            "/api/generate",
            json!({"model": "tiny", "prompt": "x", "mask_image": b64(mask.clone())}),
        )
        .await;
    let message = assert_error(lone, 400, "invalid_parameter").await;
    assert!(message.contains("send the init_image too"), "{message}");
    let mismatched = s
        .post(
            "/api/generate",
            json!({"model": "tiny", "prompt": "x", "init_image": b64(png(72, 64, 1)), "mask_image": b64(mask)}),
        )
        .await;
    let message = assert_error(mismatched, 400, "invalid_parameter").await;
    assert!(message.contains("the same size"), "{message}");
}

/// Outpainting: the canvas grows by the sides asked for, the new border
/// (and an 8-pixel seam) is repainted from noise, the picture is kept;
/// the job's size is the canvas's. Bad sides are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outpainting_extends_the_canvas_and_redraws_the_border() {
    let s = start(10, Some(Duration::from_millis(1))).await;
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    let r: Value = s
        .post(
            "/api/generate",
            json!({"model": "tiny", "prompt": "more sky to the right", "seed": 3,
                   "init_image": b64(png(64, 64, 60)), "outpaint": {"right": 32}}),
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
        (json!(96), json!(64))
    );
    assert_eq!(
        done["settings"]["strength"], 1.0,
        "the border is drawn from noise"
    );
    assert_eq!(done["settings"]["mask_image"].as_str().unwrap().len(), 64);
    let id = done["images"][0]["id"].as_str().unwrap();
    let out = decode(
        &s.get(&format!("/api/get_image/{id}"))
            .await
            .bytes()
            .await
            .unwrap(),
    );
    assert_eq!(out.dimensions(), (96, 64));
    assert_eq!(out.get_pixel(20, 10).0[0], 60, "the picture is kept");
    assert_eq!(out.get_pixel(60, 10).0[0], 60 ^ 3, "the seam is redrawn");
    assert_eq!(
        out.get_pixel(90, 10).0[0],
        60 ^ 3,
        "the new border is drawn"
    );

    for (body, words) in [
        (
            json!({"model": "tiny", "prompt": "x", "outpaint": {"left": 8}}),
            "send the init_image",
        ),
        (
            json!({"model": "tiny", "prompt": "x", "init_image": b64(png(64, 64, 1)), "outpaint": {}}),
            "adds nothing",
        ),
        (
            json!({"model": "tiny", "prompt": "x", "init_image": b64(png(64, 64, 1)), "outpaint": {"top": -8}}),
            "between 0 and",
        ),
        (
            json!({"model": "tiny", "prompt": "x", "init_image": b64(png(64, 64, 1)), "outpaint": {"left": 4000}}),
            "between 0 and",
        ),
    ] {
        let message = assert_error(
            s.post("/api/generate", body.clone()).await,
            400,
            "invalid_parameter",
        )
        .await;
        assert!(message.contains(words), "{body}: {message}");
    }
    // A side we do not know is the request's shape, refused when decoded.
    let body = json!({"model": "tiny", "prompt": "x", "init_image": b64(png(64, 64, 1)), "outpaint": {"up": 8}});
    let message = assert_error(s.post("/api/generate", body).await, 400, "invalid_request").await;
    assert!(message.contains("unknown field outpaint.up"), "{message}");
}

/// A multipart form body: text parts, then file parts.
fn form(boundary: &str, text: &[(&str, &str)], files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in text {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .bytes(),
        );
    }
    for (name, bytes) in files {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    body
}

/// The picture and mask uploaded as files in a multipart form, as a
/// browser form or `curl -F init_image=@photo.png` sends them; the other
/// fields as text parts (`settings` as JSON). Bad parts are 400s naming
/// the field, as in a JSON body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_form_uploads_the_picture_and_mask_as_files() {
    let s = start(10, Some(Duration::from_millis(1))).await;
    let boundary = "cyberimage-test-boundary";
    let post = |body: Vec<u8>| {
        s.http
            .post(format!("{}/api/generate", s.base))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
    };
    let mut mask = image::GrayImage::new(64, 64);
    for y in 0..64 {
        for x in 32..64 {
            mask.put_pixel(x, y, image::Luma([255]));
        }
    }
    let mut mask_png = Vec::new();
    image::DynamicImage::ImageLuma8(mask)
        .write_to(
            &mut std::io::Cursor::new(&mut mask_png),
            image::ImageFormat::Png,
        )
        .unwrap();
    let r = post(form(
        boundary,
        &[
            ("model_id", "tiny"),
            ("prompt", "1984"),
            ("strength", "0.5"),
            ("settings", r#"{"num_inference_steps": 4, "seed": 9}"#),
        ],
        &[("init_image", &png(64, 64, 100)), ("mask_image", &mask_png)],
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let r: Value = r.json().await.unwrap();
    let done = s
        .wait_status(r["job_id"].as_str().unwrap(), &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["prompt"], "1984", "a prompt part stays text");
    assert_eq!(done["settings"]["strength"], 0.5);
    assert_eq!(done["settings"]["seed"], 9);
    assert!(done["settings"]["mask_image"].is_string(), "{done}");
    let id = done["images"][0]["id"].as_str().unwrap().to_owned();
    let out = decode(
        &s.get(&format!("/api/get_image/{id}"))
            .await
            .bytes()
            .await
            .unwrap(),
    );
    // The double keeps the input where the mask is dark, XORs it by the
    // seed where it is light.
    assert_eq!(out.get_pixel(5, 5).0[0], 100);
    assert_eq!(out.get_pixel(50, 5).0[0], 100 ^ 9);

    for (text, files, words) in [
        (
            vec![("prompt", "x"), ("strength", "lots")],
            vec![("init_image", png(64, 64, 1))],
            "strength must be a number",
        ),
        (
            vec![("prompt", "x"), ("settings", "{not json")],
            vec![],
            "the settings part is not JSON",
        ),
        (
            vec![("prompt", "x"), ("num_inference_step", "4")],
            vec![],
            "unknown field \"num_inference_step\"",
        ),
        (
            vec![("prompt", "x")],
            vec![("init_image", b"not a picture".to_vec())],
            "init_image",
        ),
    ] {
        let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
        let r = post(form(boundary, &text, &files)).await.unwrap();
        assert_eq!(r.status(), 400, "{words}");
        let v: Value = r.json().await.unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{words}: {message}");
    }
    let queue: Value = s.get("/api/queue").await.json().await.unwrap();
    assert_eq!(queue["pending"], 0, "nothing more was queued: {queue}");
}
