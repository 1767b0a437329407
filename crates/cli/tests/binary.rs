//! The real `cyberimage` binary as a child process: start-up on port 0,
//! the seed's catalogue, honest failure without an engine, persistence
//! across restarts, and the CLI subcommands.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cyberimage");

struct Running {
    child: Child,
    base: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary, isolated from the machine that runs the tests: its own
/// `HOME`, `HF_HOME` and cache folder under `dir`, `dir` as its working
/// folder (so no `./cyberimage.toml` is found), and none of the caller's
/// `CYBERIMAGE_*` or `HF_*` settings. Without it a machine whose Hugging
/// Face cache holds real weights would change what these tests see.
fn isolated(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("CYBERIMAGE_") || name.starts_with("HF_") {
            command.env_remove(&key);
        }
    }
    let home = dir.join("home");
    command
        .env("HOME", &home)
        .env("HF_HOME", home.join("huggingface"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .current_dir(dir);
    command
}

/// The binary looks for weights in the isolated Hugging Face cache and
/// nowhere else: FLUX.1-dev is missing until a snapshot with weights is
/// planted there.
#[test]
fn the_isolated_binary_reads_only_its_own_hugging_face_cache() {
    let dir = tempfile::tempdir().unwrap();
    let flux_line = |dir: &Path| {
        let out = isolated(dir).args(["models", "list"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .find(|l| l.contains(" flux-1 "))
            .unwrap_or_else(|| panic!("no flux-1 line in {text}"))
            .to_owned()
    };
    assert!(flux_line(dir.path()).contains("missing"));
    let snapshot = dir
        .path()
        .join("home/huggingface/hub/models--black-forest-labs--FLUX.1-dev/snapshots/abc");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(snapshot.join("model_index.json"), "{}").unwrap();
    // Configs alone (as pulled for a checkpoint file) are not the model.
    assert!(flux_line(dir.path()).contains("missing"));
    std::fs::create_dir_all(snapshot.join("transformer")).unwrap();
    std::fs::write(
        snapshot.join("transformer/diffusion_pytorch_model.safetensors"),
        "",
    )
    .unwrap();
    assert!(flux_line(dir.path()).contains("ready"));
}

fn serve(data_dir: &Path) -> Running {
    serve_with(data_dir, &[])
}

fn serve_with(data_dir: &Path, env: &[(&str, &str)]) -> Running {
    let mut command = isolated(data_dir);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("cyberimage listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Running { child, base }
}

fn rpc(base: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": "t"});
    let client = reqwest::blocking_client();
    client.post(format!("{base}/api/mcp"), body)
}

mod reqwest {
    //! A tiny blocking wrapper so these tests need no async runtime.
    pub fn blocking_client() -> Client {
        Client(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        )
    }

    pub struct Client(tokio::runtime::Runtime);

    impl Client {
        pub fn post(&self, url: String, body: serde_json::Value) -> serde_json::Value {
            self.0.block_on(async {
                ::reqwest::Client::new()
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap()
            })
        }

        pub fn get(&self, url: String) -> (u16, serde_json::Value) {
            self.0.block_on(async {
                let r = ::reqwest::Client::new().get(url).send().await.unwrap();
                (r.status().as_u16(), r.json().await.unwrap())
            })
        }
    }
}

#[test]
fn serve_speaks_the_seed_contract_and_never_fakes_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let client = reqwest::blocking_client();
    let (status, health) = client.get(format!("{}/health", server.base));
    assert_eq!((status, health["status"].clone()), (200, json!("healthy")));

    let models = rpc(&server.base, "context.image_generation.models", json!({}));
    let result = &models["result"];
    // A fresh machine: flux-1 has no weights, so the first model that can
    // run is the default (README, "The default model").
    assert_eq!(result["default"], "shapes-64");
    let keys: Vec<_> = result["models"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        vec![
            "flux-2",
            "flux-1",
            "sd-3.5",
            "flux-abliterated",
            "shapes-64",
            "tiny-sd15-random",
            "tiny-sdxl-random",
            "tiny-sd3-random",
            "tiny-flux-random"
        ]
    );
    assert_eq!(
        result["models"]["sd-3.5"]["id"],
        "stabilityai/stable-diffusion-3.5-large"
    );

    let submitted = rpc(
        &server.base,
        "context.image_generation.generate",
        json!({"prompt": "A beautiful sunset over mountains", "model": "flux-1"}),
    );
    let job_id = submitted["result"]["job_id"].as_str().unwrap().to_owned();
    let mut last = Value::Null;
    for _ in 0..500 {
        last = rpc(
            &server.base,
            "context.image_generation.status",
            json!({"job_id": job_id}),
        )["result"]
            .clone();
        if last["status"] == "failed" || last["status"] == "completed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // No FLUX weights on this machine: the job must fail and say what is
    // missing and how to get it, not hand back a placeholder picture.
    assert_eq!(last["status"], "failed", "{last}");
    assert_eq!(last["model"], "flux-1");
    assert_eq!(last["progress"]["failed"], true);
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("are not on this machine"), "{error}");
    assert!(error.contains("cyberimage models pull flux-1"), "{error}");
    assert!(last.get("images").is_none());
    assert!(std::fs::read_dir(dir.path().join("images"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn jobs_and_their_state_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let job_id = {
        let server = serve(dir.path());
        let r = rpc(
            &server.base,
            "context.image_generation.generate",
            json!({"prompt": "remember me", "model": "sd-3.5"}),
        );
        r["result"]["job_id"].as_str().unwrap().to_owned()
        // dropped: the process is killed
    };
    let server = serve(dir.path());
    let status = rpc(
        &server.base,
        "context.image_generation.status",
        json!({"job_id": job_id}),
    );
    assert_eq!(status["result"]["prompt"], "remember me");
    assert_eq!(status["result"]["model"], "sd-3.5");
}

#[test]
fn models_list_marks_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = isolated(dir.path())
        .args(["models", "list"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let default_line = text.lines().find(|l| l.starts_with('*')).unwrap();
    assert!(default_line.contains("shapes-64"), "{text}");
    assert_eq!(text.lines().count(), 9);
    // No FLUX weights here; the built-in models can always run, and the
    // first of them is the default.
    let flux = text.lines().find(|l| l.contains(" flux-1 ")).unwrap();
    assert!(flux.contains("missing"), "{text}");
    for key in [
        "shapes-64",
        "tiny-sd15-random",
        "tiny-sdxl-random",
        "tiny-sd3-random",
        "tiny-flux-random",
    ] {
        let tiny = text.lines().find(|l| l.contains(key)).unwrap();
        assert!(tiny.contains("ready"), "{text}");
    }
}

#[test]
fn generate_without_the_weights_fails_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.png");
    let out = isolated(dir.path())
        .args([
            "generate",
            "--prompt",
            "a cat",
            "--model",
            "sd-3.5",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("are not on this machine"), "{stderr}");
    assert!(stderr.contains("cyberimage models pull sd-3.5"), "{stderr}");
    assert!(!out_file.exists());

    let bad = isolated(dir.path())
        .args([
            "generate",
            "--prompt",
            "a cat",
            "--width",
            "100",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    // The default here is shapes-64, of the SD 1.5 family, whose sizes go
    // in steps of 8.
    let bad_stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        bad_stderr.contains("width must be a multiple of 8"),
        "{bad_stderr}"
    );
}

fn generate_tiny(
    dir: &Path,
    model: &str,
    out: &str,
    seed: &str,
) -> (Vec<u8>, Vec<(String, String)>) {
    let path = dir.join(out);
    let run = isolated(dir)
        .args([
            "generate",
            "--prompt",
            "a lighthouse at dusk",
            "--model",
            model,
        ])
        .args([
            "--seed",
            seed,
            "--width",
            "64",
            "--height",
            "96",
            "--data-dir",
        ])
        .arg(dir)
        .arg("--out")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains(&format!("(seed {seed})")));
    let bytes = std::fs::read(&path).unwrap();
    let text = cyberimage_store::read_png_text(&bytes).unwrap();
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (64, 96));
    (img.into_raw(), text)
}

#[test]
fn generate_with_the_builtin_models_is_real_and_reproducible() {
    for (model, sampler) in [
        ("tiny-sd15-random", "DDIM"),
        ("tiny-sdxl-random", "Euler"),
        ("tiny-sd3-random", "Flow-match Euler"),
        ("tiny-flux-random", "Flow-match Euler"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (first, text) = generate_tiny(dir.path(), model, "a.png", "1234");
        let (again, _) = generate_tiny(dir.path(), model, "b.png", "1234");
        let (other, _) = generate_tiny(dir.path(), model, "c.png", "1235");
        assert_eq!(first, again, "{model}: the same seed gives the same pixels");
        assert_ne!(first, other, "{model}: another seed gives another image");
        let distinct: std::collections::HashSet<_> = first.chunks(3).collect();
        assert!(
            distinct.len() > 50,
            "{model}: a diffusion output, not a flat fill"
        );
        let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
        assert!(params.contains("Seed: 1234"), "{params}");
        assert!(params.contains(&format!("Sampler: {sampler}")), "{params}");
        assert!(params.contains(&format!("Model: {model}")), "{params}");
    }
}

#[test]
fn hash_key_prints_the_sha256_digest_the_config_takes() {
    let dir = tempfile::tempdir().unwrap();
    let out = isolated(dir.path())
        .args(["hash-key", "abc"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn api_keys_from_the_environment_protect_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = isolated(dir.path())
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env(
            "CYBERIMAGE_AUTH__API_KEY_SHA256",
            r#"["ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]"#,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Running {
        base: line
            .trim()
            .trim_start_matches("cyberimage listening on ")
            .to_owned(),
        child,
    };
    let client = reqwest::blocking_client();
    assert_eq!(client.get(format!("{}/health", server.base)).0, 200);
    let (status, body) = client.get(format!("{}/api/models", server.base));
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
}

/// `[enrich] local_model`: the engine's Qwen3 answers in this process (the
/// tiny random model of `fixtures/qwen3_references.py`, whose answer is
/// words from its vocabulary, not a meaningful prompt); a folder that is
/// not a model stops start-up with the reason.
#[test]
fn enrichment_runs_a_local_qwen3_model_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny/tiny-qwen3");
    let model = model.to_str().unwrap();
    let server = serve_with(dir.path(), &[("CYBERIMAGE_ENRICH__LOCAL_MODEL", model)]);
    let client = reqwest::blocking_client();
    let answer = client.post(
        format!("{}/api/enrich", server.base),
        json!({"prompt": "a red fox", "style": "cinematic"}),
    );
    assert_eq!(answer["enriched_by"], "tiny-qwen3", "{answer}");
    assert_eq!(answer["original_prompt"], "a red fox");
    assert!(
        answer["prompt"]
            .as_str()
            .is_some_and(|p| !p.trim().is_empty()),
        "{answer}"
    );
    drop(server);

    let out = isolated(dir.path())
        .env("CYBERIMAGE_ENRICH__LOCAL_MODEL", dir.path())
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no config.json"), "{err}");
}
