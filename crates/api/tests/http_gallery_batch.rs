//! Batch gallery work on a real server: a selection downloaded as a
//! streamed ZIP (read back with the `zip` crate: every member is the
//! served PNG, byte for byte) and deleted in one request.

mod support;

use std::io::Read;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

async fn three_images(s: &Server) -> Vec<String> {
    let job: Value = s
        .post(
            "/api/generate",
            json!({"prompt": "Neon koi, at night!", "model": "tiny", "num_images": 3, "steps": 1}),
        )
        .await
        .json()
        .await
        .unwrap();
    let done = s
        .wait_status(job["job_id"].as_str().unwrap(), &["completed"])
        .await;
    done["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

fn read_zip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a valid ZIP");
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).unwrap();
            let mut data = Vec::new();
            file.read_to_end(&mut data).unwrap();
            (file.name().expect("a UTF-8 name").to_string(), data)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_downloads_as_a_zip_of_the_served_pngs() {
    let s = start(10, Some(Duration::from_millis(1))).await;
    let ids = three_images(&s).await;
    let missing = "img_0123456789abcdef0123456789abcdef";
    let r = s
        .get(&format!(
            "/api/images/download?ids={},{},{missing}",
            ids[0], ids[2]
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename=\"cyberimage-"));
    assert_eq!(r.headers()["x-missing-images"], missing);
    let members = read_zip(&r.bytes().await.unwrap());
    assert_eq!(members.len(), 2);
    for ((name, data), id) in members.iter().zip([&ids[0], &ids[2]]) {
        assert_eq!(name, &format!("neon-koi-at-night-{id}.png"));
        let served = s
            .get(&format!("/api/get_image/{id}"))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(data.as_slice(), served.as_ref(), "{name} is the served PNG");
    }

    let r = s.post("/api/images/download", json!({"ids": ids})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(read_zip(&r.bytes().await.unwrap()).len(), 3);

    let message = assert_error(
        s.post("/api/images/download", json!({"ids": [missing]}))
            .await,
        404,
        "image_not_found",
    )
    .await;
    assert!(!message.is_empty());
    for (body, needle) in [
        (json!({"ids": []}), "empty"),
        (json!({"ids": ["../etc/passwd"]}), "not an image id"),
        (json!({"ids": "img_1"}), "list"),
        (json!({"ids": [1]}), "strings"),
        (json!({"ids": [ids[0]], "zip": true}), "unknown field"),
        (
            json!({"ids": (0..201).map(|i| format!("img_{i:032x}")).collect::<Vec<_>>()}),
            "at most 200",
        ),
    ] {
        let message = assert_error(
            s.post("/api/images/download", body.clone()).await,
            400,
            "invalid_request",
        )
        .await;
        assert!(message.contains(needle), "{body}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_is_deleted_in_one_request() {
    let s = start(10, Some(Duration::from_millis(1))).await;
    let ids = three_images(&s).await;
    let missing = "img_0123456789abcdef0123456789abcdef";
    let v: Value = s
        .post(
            "/api/images/delete",
            json!({"ids": [ids[0], ids[1], missing, ids[0]]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["deleted"],
        json!([ids[0], ids[1]]),
        "duplicates count once"
    );
    assert_eq!(v["missing"], json!([missing]));
    assert_eq!(s.get(&format!("/api/image/{}", ids[0])).await.status(), 404);
    assert_eq!(s.get(&format!("/api/image/{}", ids[2])).await.status(), 200);
    let gallery: Value = s.get("/api/gallery").await.json().await.unwrap();
    assert_eq!(gallery["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn favourites_are_marked_and_filter_the_gallery() {
    let s = start(10, Some(Duration::from_millis(1))).await;
    let ids = three_images(&s).await;
    let put = |id: &str, body: Value| {
        s.http
            .put(format!("{}/api/images/{id}/favorite", s.base))
            .json(&body)
            .send()
    };
    let v: Value = put(&ids[1], json!({"favorite": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["favorite"], true);
    let favs: Value = s
        .get("/api/gallery?favorites=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(favs["total"], 1);
    assert_eq!(favs["images"][0]["id"], ids[1].as_str());
    let all: Value = s.get("/api/gallery").await.json().await.unwrap();
    assert_eq!(all["total"], 3);
    let info: Value = s
        .get(&format!("/api/image/{}", ids[1]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["favorite"], true);
    // POST does the same (for clients without PUT).
    let r = s
        .post(
            &format!("/api/images/{}/favorite", ids[1]),
            json!({"favorite": false}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let favs: Value = s
        .get("/api/gallery?favorites=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(favs["total"], 0);

    assert_error(
        put(&ids[0], json!({"favorite": "yes"})).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        put(&ids[0], json!({})).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        put(
            "img_0123456789abcdef0123456789abcdef",
            json!({"favorite": true}),
        )
        .await
        .unwrap(),
        404,
        "image_not_found",
    )
    .await;
    assert_error(
        s.get("/api/gallery?favorites=maybe").await,
        400,
        "invalid_request",
    )
    .await;
}
