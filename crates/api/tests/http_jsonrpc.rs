//! The seed's JSON-RPC endpoint over real HTTP: shapes field by field,
//! every error code, notifications and batches.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_models_method_has_the_seed_shape() {
    let s = start(10, None).await;
    let v = s.rpc(json!({"jsonrpc": "2.0", "method": "context.image_generation.models", "id": "request-123"})).await;
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], "request-123");
    let result = &v["result"];
    assert_eq!(
        result["default"], "flux-1",
        "flux-1 is preferred even when not first"
    );
    let models = result["models"].as_object().unwrap();
    assert_eq!(models.keys().collect::<Vec<_>>(), vec!["tiny", "flux-1"]);
    assert_eq!(
        models["tiny"],
        json!({"id": "test/tiny", "description": "tiny test model"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_generate_and_status_follow_the_contract_field_by_field() {
    let s = start(10, Some(Duration::from_millis(5))).await;
    let v = s
        .rpc(rpc_call(
            "context.image_generation.generate",
            json!({
                "prompt": "A detailed description of the image you want to generate",
                "negative_prompt": "What to exclude from the image (optional)",
                "model": "tiny",
                "settings": {"num_images": 1, "num_inference_steps": 30, "guidance_scale": 7.5, "height": 128, "width": 64}
            }),
        ))
        .await;
    assert_eq!(v["id"], "request-123");
    let result = v["result"].as_object().unwrap();
    assert_eq!(result.len(), 3, "{result:?}");
    let job_id = result["job_id"].as_str().unwrap().to_owned();
    assert!(cyberimage_core::JobId::parse(&job_id).is_ok());
    assert_eq!(result["status"], "pending");
    assert_eq!(result["num_images"], 1);

    // While it runs, the status has the seed's processing shape.
    let running = loop {
        let v = s
            .rpc(rpc_call(
                "context.image_generation.status",
                json!({"job_id": job_id}),
            ))
            .await;
        let r = v["result"].clone();
        if r["status"] == "processing" && r["progress"]["generating"] == true {
            break r;
        }
        assert_ne!(r["status"], "completed", "caught no processing state");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(running["completed_at"], Value::Null);
    assert!(is_rfc3339_utc(&running["started_at"]));
    assert_eq!(running["progress"]["total_steps"], 30);
    assert!(running.get("images").is_none());

    let mut done = running;
    for _ in 0..1000 {
        let v = s
            .rpc(rpc_call(
                "context.image_generation.status",
                json!({"job_id": job_id}),
            ))
            .await;
        done = v["result"].clone();
        if done["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let keys: Vec<_> = done.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            "job_id",
            "status",
            "model",
            "prompt",
            "created_at",
            "started_at",
            "completed_at",
            "progress",
            "images"
        ]
    );
    assert_eq!(done["job_id"], job_id.as_str());
    assert_eq!(done["model"], "tiny");
    assert_eq!(
        done["prompt"],
        "A detailed description of the image you want to generate"
    );
    for t in ["created_at", "started_at", "completed_at"] {
        assert!(is_rfc3339_utc(&done[t]), "{t}: {}", done[t]);
    }
    assert_eq!(
        done["progress"],
        json!({"preparing": false, "loading_model": false, "generating": false, "saving": false,
               "completed": true, "failed": false, "step": 30, "total_steps": 30})
    );
    let images = done["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    let img = &images[0];
    let id = img["id"].as_str().unwrap();
    assert_eq!(img["url"], format!("/api/get_image/{id}"));
    let meta = &img["metadata"];
    assert_eq!(meta["model_id"], "tiny");
    assert_eq!(
        meta["prompt"],
        "A detailed description of the image you want to generate"
    );
    let settings = &meta["settings"];
    assert_eq!(settings["num_inference_steps"], 30);
    assert_eq!(settings["guidance_scale"], 7.5);
    assert_eq!(settings["height"], 128);
    assert_eq!(settings["width"], 64);
    assert!(settings["seed"].is_u64(), "the seed is reported back");

    let png = s.get(img["url"].as_str().unwrap()).await;
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert!(png.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let etag = png.headers()["etag"].clone();
    let bytes = png.bytes().await.unwrap();
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 128));
    let again = s
        .http
        .get(format!("{}{}", s.base, img["url"].as_str().unwrap()))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let thumb = s.get(&format!("/api/images/{id}/thumbnail")).await;
    assert_eq!(thumb.status(), 200);
    assert_eq!(thumb.headers()["content-type"], "image/png");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_rpc_error_code() {
    let s = start(10, None).await;
    let code = |v: &Value| v["error"]["code"].as_i64().unwrap();

    let v: Value = s.rpc_raw("{not json").await.json().await.unwrap();
    assert_eq!((code(&v), &v["id"]), (-32700, &Value::Null));
    let v: Value = s.rpc_raw("42").await.json().await.unwrap();
    assert_eq!(code(&v), -32600);
    let v = s
        .rpc(json!({"method": "context.image_generation.models", "id": 1}))
        .await;
    assert_eq!((code(&v), &v["id"]), (-32600, &json!(1)));
    let v = s.rpc(json!({"jsonrpc": "2.0", "method": 5, "id": 1})).await;
    assert_eq!(code(&v), -32600);
    let v = s
        .rpc(json!({"jsonrpc": "2.0", "method": "x", "id": {"a": 1}}))
        .await;
    assert_eq!(code(&v), -32600);
    let v = s
        .rpc(json!({"jsonrpc": "2.0", "method": "context.image_generation.nope", "id": 7}))
        .await;
    assert_eq!((code(&v), &v["id"]), (-32601, &json!(7)));

    let gen = "context.image_generation.generate";
    for params in [
        json!({}),
        json!({"prompt": ""}),
        json!({"prompt": 12}),
        json!({"prompt": "x", "model": "no-such-model"}),
        json!({"prompt": "x", "model": "flux-1", "settings": {"width": 1000}}),
        json!({"prompt": "x", "model": "tiny", "settings": {"width": 100}}),
        json!({"prompt": "x", "settings": {"height": 4096}}),
        json!({"prompt": "x", "settings": {"width": -64}}),
        json!({"prompt": "x", "settings": {"num_inference_steps": 0}}),
        json!({"prompt": "x", "settings": {"num_inference_steps": 151}}),
        json!({"prompt": "x", "settings": {"guidance_scale": 30.5}}),
        json!({"prompt": "x", "settings": {"num_images": 9}}),
        json!({"prompt": "x", "settings": {"num_images": "1"}}),
        json!({"prompt": "x", "settings": {"width": 1e30}}),
        json!({"prompt": "x".repeat(4001)}),
        json!(["positional", "params"]),
    ] {
        let v = s.rpc(rpc_call(gen, params.clone())).await;
        assert_eq!(code(&v), -32602, "{params}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // Params that are not structured make the request itself invalid.
    let v = s.rpc(rpc_call(gen, json!("just a string"))).await;
    assert_eq!(code(&v), -32600);
    let queue: Value = s.get("/api/queue").await.json().await.unwrap();
    assert_eq!(queue["pending"], 0, "no invalid request was stored");

    let status = "context.image_generation.status";
    let v = s.rpc(rpc_call(status, json!({}))).await;
    assert_eq!(code(&v), -32602);
    let v = s.rpc(rpc_call(status, json!({"job_id": 5}))).await;
    assert_eq!(code(&v), -32602);
    let v = s
        .rpc(rpc_call(
            status,
            json!({"job_id": "0c907066-985e-467b-8d11-07419060ef91"}),
        ))
        .await;
    assert_eq!(code(&v), -32001);
    let v = s
        .rpc(rpc_call(status, json!({"job_id": "../../etc/passwd"})))
        .await;
    assert_eq!(code(&v), -32001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_batches_follow_json_rpc() {
    let s = start(10, None).await;
    let r = s
        .rpc_raw(r#"{"jsonrpc":"2.0","method":"context.image_generation.models"}"#)
        .await;
    assert_eq!(r.status(), 204, "a notification gets no response");
    assert!(r.bytes().await.unwrap().is_empty());

    let v: Value = s.rpc_raw("[]").await.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32600);

    let v: Value = s
        .rpc_raw(
            r#"[{"jsonrpc":"2.0","method":"context.image_generation.models","id":1},
                {"jsonrpc":"2.0","method":"context.image_generation.models"},
                {"jsonrpc":"2.0","method":"nope","id":"b"},
                7,
                {"jsonrpc":"2.0","method":"context.image_generation.generate","params":{"prompt":"batched","model":"tiny"},"id":3}]"#,
        )
        .await
        .json()
        .await
        .unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(
        arr.len(),
        4,
        "one response per request with an id, plus the invalid one"
    );
    assert_eq!(arr[0]["id"], 1);
    assert_eq!(arr[0]["result"]["default"], "flux-1");
    assert_eq!(
        (arr[1]["id"].clone(), arr[1]["error"]["code"].clone()),
        (json!("b"), json!(-32601))
    );
    assert_eq!(arr[2]["error"]["code"], -32600);
    assert_eq!(arr[3]["result"]["status"], "pending");

    let r = s
        .rpc_raw(r#"[{"jsonrpc":"2.0","method":"context.image_generation.models"}]"#)
        .await;
    assert_eq!(r.status(), 204);
}
