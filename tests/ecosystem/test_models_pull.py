"""`cyberimage models pull|verify|remove` against a LOCAL STAND-IN for the
Hugging Face hub (this machine has no access to the real one): a small HTTP
server speaking the hub's download protocol (`/api/models/{repo}/revision/
{rev}?blobs=true`, `/{repo}/resolve/{commit}/{file}` with Range), serving the
committed tiny SD 1.5 model as repo `test-org/tiny-sd15`. It cuts the first
download of the UNet weights short, to prove resuming, and answers 403 for a
gated repo.

Then the pulled model runs through the real engine from the HF cache layout.

The same stand-in then serves over HTTPS (real TLS, Python's ssl module)
with a certificate signed by a certificate authority made in this test: a
pull that trusts it through SSL_CERT_FILE succeeds, and one that does not
fails saying the certificate is not trusted and how to trust a CA.

usage: python tests/ecosystem/test_models_pull.py path/to/cyberimage
"""

import hashlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import check, finish, make_ca_and_server_cert  # noqa: E402

BINARY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/cyberimage")
ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "fixtures" / "tiny" / "tiny-sd15"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REQUESTS = []
CUT_ONCE = {"unet/diffusion_pytorch_model.safetensors"}


def repo_files():
    files = {p.relative_to(MODEL).as_posix(): p.read_bytes() for p in MODEL.rglob("*")
             if p.is_file() and "references" not in p.name}
    # Files a pull must skip: docs, variants, a root single-file checkpoint.
    files["README.md"] = b"# tiny"
    files["unet/diffusion_pytorch_model.fp16.safetensors"] = b"variant"
    files["tiny-sd15.safetensors"] = b"single file checkpoint"
    return files


FILES = repo_files()


class Hub(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        REQUESTS.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/api/models/test-org/gated/"):
            return self.send_error(403)
        if self.path.startswith("/api/models/test-org/tiny-sd15/revision/main"):
            siblings = []
            for name, data in FILES.items():
                entry = {"rfilename": name, "size": len(data)}
                if name.endswith(".safetensors"):
                    entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                siblings.append(entry)
            body = json.dumps({"id": "test-org/tiny-sd15", "sha": COMMIT, "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        prefix = f"/test-org/tiny-sd15/resolve/{COMMIT}/"
        if not self.path.startswith(prefix) or self.path[len(prefix):] not in FILES:
            return self.send_error(404)
        name = self.path[len(prefix):]
        data = FILES[name]
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                # As the real hub (and RFC 9110) answers a range past the end.
                return self.send_error(416)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if name in CUT_ONCE:
            CUT_ONCE.discard(name)
            self.wfile.write(data[start:start + len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])


def https_hub(folder):
    """The stand-in hub over TLS with a certificate of a test CA; returns
    (server, endpoint, CA file)."""
    ca, cert, key = make_ca_and_server_cert(folder)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"https://127.0.0.1:{server.server_address[1]}", ca


def run(*args, env):
    return subprocess.run([BINARY, *args], capture_output=True, text=True, env=env)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    tmp = Path(tempfile.mkdtemp(prefix="cyberimage-pull-"))
    config = tmp / "cyberimage.toml"
    config.write_text(f"""data_dir = "{tmp / 'data'}"
[[models]]
key = "tiny-hub"
source = "test-org/tiny-sd15"
family = "sd15"
description = "the tiny model, from the stand-in hub"
defaults = {{ steps = 4, guidance_scale = 7.5, width = 64, height = 64 }}
[[models]]
key = "tiny-file"
source = "{ROOT / 'fixtures' / 'single-file' / 'tiny-sd15-ldm.safetensors'}"
family = "sd15"
config = "test-org/tiny-sd15"
description = "an A1111 checkpoint whose configs come from the stand-in hub"
defaults = {{ steps = 4, guidance_scale = 7.5, width = 64, height = 64 }}
[[models]]
key = "gated"
source = "test-org/gated"
family = "sd15"
description = "a gated repo"
defaults = {{ steps = 4, guidance_scale = 7.5, width = 64, height = 64 }}
""")
    env = {**os.environ, "CYBERIMAGE_CONFIG": str(config), "HF_HUB_CACHE": str(tmp / "hub"),
           "HF_ENDPOINT": endpoint, "RUST_LOG": "warn"}
    env.pop("HF_TOKEN", None)
    listed = run("models", "list", env=env).stdout
    check("before: the model is missing", "tiny-hub" in listed and "missing" in listed.split("tiny-hub")[1].splitlines()[0], listed)

    first = run("models", "pull", "tiny-hub", env=env)
    check("an interrupted download fails and says how to resume", first.returncode != 0 and "resume" in first.stderr, first.stderr)
    second = run("models", "pull", "tiny-hub", env=env)
    check("the second pull completes", second.returncode == 0, second.stderr)
    ranges = [r for p, r in REQUESTS if p.endswith("unet/diffusion_pytorch_model.safetensors") and r]
    check("it resumed the cut file with a Range request", len(ranges) == 1 and ranges[0] != "bytes=0-", REQUESTS)
    asked = {p.rsplit(f"{COMMIT}/", 1)[-1] for p, _ in REQUESTS if "/resolve/" in p}
    check("only pipeline files were fetched", not asked & {"README.md", "unet/diffusion_pytorch_model.fp16.safetensors", "tiny-sd15.safetensors"}, asked)
    snapshot = tmp / "hub" / "models--test-org--tiny-sd15" / "snapshots" / COMMIT
    check("HF cache layout with blobs and snapshot links", (snapshot / "unet" / "config.json").is_symlink()
          and (tmp / "hub" / "models--test-org--tiny-sd15" / "refs" / "main").read_text() == COMMIT)

    listed = run("models", "list", env=env).stdout
    check("after: the model is ready", "ready" in listed.split("tiny-hub")[1].splitlines()[0], listed)
    out = tmp / "out.png"
    gen = run("generate", "--prompt", "pulled", "--model", "tiny-hub", "--seed", "5", "--out", str(out), env=env)
    check("the pulled model generates a real PNG", gen.returncode == 0 and out.read_bytes()[:4] == b"\x89PNG", gen.stderr)

    ok = run("models", "verify", "tiny-hub", env=env)
    check("verify passes", ok.returncode == 0 and "match their SHA-256" in ok.stdout, ok.stdout + ok.stderr)
    unet_blob = (snapshot / "unet" / "diffusion_pytorch_model.safetensors").resolve()
    with open(unet_blob, "ab") as f:
        f.write(b"x")
    bad = run("models", "verify", "tiny-hub", env=env)
    check("verify catches a corrupted file", bad.returncode != 0 and unet_blob.name in bad.stderr, bad.stderr)

    gated = run("models", "pull", "gated", env=env)
    check("a gated repo says what to do", gated.returncode != 0 and "gated" in gated.stderr and "HF_TOKEN" in gated.stderr, gated.stderr)
    builtin = run("models", "pull", "tiny-sd15-random", env=env)
    check("pulling a non-hub model is refused clearly", builtin.returncode != 0, builtin.stderr)

    refused = run("models", "remove", "tiny-hub", env=env)
    check("remove needs --yes", refused.returncode != 0 and "--yes" in refused.stderr, refused.stderr)
    removed = run("models", "remove", "tiny-hub", "--yes", env=env)
    check("remove deletes the files", removed.returncode == 0 and not snapshot.exists(), removed.stderr)
    listed = run("models", "list", env=env).stdout
    check("after remove: missing again", "missing" in listed.split("tiny-hub")[1].splitlines()[0], listed)
    check("a checkpoint file without its configs is missing", "missing" in listed.split("tiny-file")[1].splitlines()[0], listed)

    # A single checkpoint file: the pull fetches only the configs and
    # tokenizers of its config repo; the weights are read from the file.
    REQUESTS.clear()
    configs = run("models", "pull", "tiny-file", env=env)
    asked = [p.rsplit(f"{COMMIT}/", 1)[-1] for p, _ in REQUESTS if "/resolve/" in p]
    check("pulling a checkpoint file's model fetches its configs and tokenizers",
          configs.returncode == 0 and "configs and tokenizers" in configs.stdout, configs.stdout + configs.stderr)
    check("and no weights", asked and not [a for a in asked if a.endswith(".safetensors")], asked)
    listed = run("models", "list", env=env).stdout
    check("the file's model is ready", "ready" in listed.split("tiny-file")[1].splitlines()[0], listed)
    check("a configs-only snapshot does not make the repo's own model ready",
          "missing" in listed.split("tiny-hub")[1].splitlines()[0], listed)
    out = tmp / "file.png"
    gen = run("generate", "--prompt", "from a file", "--model", "tiny-file", "--seed", "5", "--out", str(out), env=env)
    check("the checkpoint file generates a real PNG", gen.returncode == 0 and out.read_bytes()[:4] == b"\x89PNG", gen.stderr)

    # A crash after the last byte but before the rename leaves a complete
    # partial file: the next pull finishes it without asking past its end.
    unet = FILES["unet/diffusion_pytorch_model.safetensors"]
    blobs = tmp / "hub" / "models--test-org--tiny-sd15" / "blobs"
    (blobs / (hashlib.sha256(unet).hexdigest() + ".incomplete")).write_bytes(unet)
    REQUESTS.clear()
    whole = run("models", "pull", "tiny-hub", env=env)
    asked = [p for p, _ in REQUESTS if p.endswith("unet/diffusion_pytorch_model.safetensors")]
    check("a complete partial file is finished, not fetched again", whole.returncode == 0 and not asked,
          (whole.stderr, asked))
    check("and it became its blob", (blobs / hashlib.sha256(unet).hexdigest()).exists(), sorted(blobs.iterdir()))

    # [model_scan]: a ComfyUI-shaped folder joins the catalogue; a file
    # that is no model is listed with the reason.
    comfy = tmp / "ComfyUI" / "models"
    (comfy / "checkpoints").mkdir(parents=True)
    (comfy / "checkpoints" / "dreamy.safetensors").write_bytes(
        (ROOT / "fixtures" / "single-file" / "tiny-sd15-ldm.safetensors").read_bytes())
    (comfy / "checkpoints" / "notes.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}")
    scan_config = tmp / "scan.toml"
    scan_config.write_text(config.read_text() + f"""
[model_scan]
folders = ["{comfy}"]
configs = {{ sd15 = "test-org/tiny-sd15" }}
""")
    scanned = run("models", "list", env={**env, "CYBERIMAGE_CONFIG": str(scan_config)})
    dreamy = [line for line in scanned.stdout.splitlines() if line[2:].startswith("dreamy ")]
    check("a scanned checkpoint is listed, ready, with its detected family",
          scanned.returncode == 0 and dreamy and "sd15" in dreamy[0] and "ready" in dreamy[0], scanned.stdout + scanned.stderr)
    check("a scanned file that is no model is listed with the reason",
          "notes.safetensors: no known model" in scanned.stdout, scanned.stdout)
    server.shutdown()

    # HTTPS, trusted and not.
    tls_server, tls_endpoint, ca = https_hub(tmp)
    empty_dir = tmp / "no-cas"
    empty_dir.mkdir()
    tls_env = {**env, "HF_ENDPOINT": tls_endpoint, "HF_HUB_CACHE": str(tmp / "hub-tls")}
    untrusted = run("models", "pull", "tiny-hub", env={**tls_env, "SSL_CERT_FILE": str(tmp / "server.pem"),
                                                       "SSL_CERT_DIR": str(empty_dir)})
    check("an untrusted certificate fails, saying so and how to trust a CA",
          untrusted.returncode != 0 and "certificate is not trusted" in untrusted.stderr
          and "SSL_CERT_FILE" in untrusted.stderr, untrusted.stderr)
    trusted = run("models", "pull", "tiny-hub", env={**tls_env, "SSL_CERT_FILE": str(ca), "SSL_CERT_DIR": str(empty_dir)})
    tls_snapshot = tmp / "hub-tls" / "models--test-org--tiny-sd15" / "snapshots" / COMMIT
    check("over HTTPS with the test CA in SSL_CERT_FILE the pull completes",
          trusted.returncode == 0 and (tls_snapshot / "unet" / "diffusion_pytorch_model.safetensors").exists(),
          trusted.stderr)
    tls_server.shutdown()
    finish()


main()
