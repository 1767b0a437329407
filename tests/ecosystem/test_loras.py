"""LoRAs end to end, against the real binary and engine: the tiny SD 1.5
model's two reference LoRAs (fixtures/lora_references.py) dropped into
the data dir's `loras/`, listed by REST and by AUTOMATIC1111's API (read
with `webuiapi`), used through REST (`loras` at the top level and in
`settings`, and `<lora:NAME:WEIGHT>` in the prompt), through A1111's
txt2img and the seed's JSON-RPC `generate`; the picture's PNG records the
tags and A1111's `Lora hashes`; a LoRA naming a layer the model lacks, or
of another model's sizes, is a 400 naming it (checked against the
weights' headers before queueing); the tiny FLUX and SD 3.5 models take
their own reference LoRAs (fixtures/transformer_lora_references.py); a ComfyUI models folder in [model_scan]
lends its loras/ and upscale_models/; a LoRA switched off gives back the
picture without it bit for bit; bad names, weights and families are 400s
that queue nothing; a file replaced after queueing fails its job, and the
next job runs.

usage: python tests/ecosystem/test_loras.py path/to/cyberimage
"""

import hashlib
import io
import json
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
import webuiapi
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import check, finish, start_server  # noqa: E402

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/debug/cyberimage"
ROOT = Path(__file__).resolve().parents[2]
LORAS = ROOT / "fixtures" / "tiny" / "tiny-sd15" / "loras"
TINY = "tiny-sd15-random"
BASE = {"prompt": "a red fox in the snow", "model": TINY,
        "settings": {"seed": 5, "num_inference_steps": 3, "guidance_scale": 7.0}}


def data_sha256(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + n:]).hexdigest()


def renamed_lora(source, target, old, new):
    """`source` with layer `old` renamed `new` in its header (the data
    is left as it is)."""
    raw = source.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header = {k.replace(old + ".", new + ".", 1) if k.startswith(old + ".") else k: v for k, v in header.items()}
    text = json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def generate(base, body):
    job = requests.post(f"{base}/api/generate", json=body)
    if job.status_code != 202:
        return job, None
    job_id = job.json()["job_id"]
    for _ in range(1200):
        status = requests.get(f"{base}/api/status/{job_id}").json()
        if status["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.1)
    return job, status


def picture(base, status):
    png = requests.get(f"{base}{status['images'][0]['url']}").content
    return Image.open(io.BytesIO(png))


def with_settings(**extra):
    body = {**BASE, "settings": {**BASE["settings"]}}
    for key, value in extra.items():
        if key.startswith("settings_"):
            body["settings"][key[len("settings_"):]] = value
        else:
            body[key] = value
    return body


def run(base, data):
    listed = requests.get(f"{base}/api/loras").json()["loras"]
    check("GET /api/loras lists the files with their tensor-data digest",
          [l["name"] for l in listed] == ["not-a-lora", "tiny-kohya", "tiny-peft"]
          and listed[1]["sha256"] == data_sha256(LORAS / "tiny-kohya.safetensors")
          and listed[1]["short_hash"] == listed[1]["sha256"][:12], listed)
    url = urlsplit(base)
    a1111 = webuiapi.WebUIApi(host=url.hostname, port=url.port)
    names = [l["name"] for l in a1111.get_loras()]
    check("webuiapi's get_loras reads A1111's list", names == ["not-a-lora", "tiny-kohya", "tiny-peft"], names)

    _, plain = generate(base, BASE)
    check("the job without a LoRA completes", plain and plain["status"] == "completed", plain)
    plain_pixels = picture(base, plain).tobytes()
    _, listed_job = generate(base, with_settings(loras=[{"name": "tiny-kohya", "weight": 0.8}]))
    check("a job with a LoRA completes", listed_job and listed_job["status"] == "completed", listed_job)
    lora_picture = picture(base, listed_job)
    check("the LoRA changes the picture", lora_picture.tobytes() != plain_pixels)
    params = lora_picture.text.get("parameters", "")
    short = data_sha256(LORAS / "tiny-kohya.safetensors")[:12]
    check("PNG parameters keep the tag in the prompt and A1111's Lora hashes",
          params.startswith("a red fox in the snow <lora:tiny-kohya:0.8>\n")
          and f'Lora hashes: "tiny-kohya: {short}"' in params, params)
    png = requests.get(f"{base}{listed_job['images'][0]['url']}").content
    info = requests.post(f"{base}/api/png-info", data=png, headers={"Content-Type": "image/png"}).json()
    check("png-info reads the prompt back without the tags", info.get("prompt") == "a red fox in the snow", info)

    _, tagged = generate(base, with_settings(prompt="a red fox <lora:tiny-kohya:0.8> in the snow"))
    check("<lora:NAME:WEIGHT> in the prompt is the same LoRA: the same picture",
          tagged["status"] == "completed" and picture(base, tagged).tobytes() == lora_picture.tobytes(), tagged)
    _, in_settings = generate(base, with_settings(settings_loras={"tiny-kohya": 0.8}))
    check("loras in settings, as {name: weight}", picture(base, in_settings).tobytes() == lora_picture.tobytes())
    _, both = generate(base, with_settings(loras=["tiny-peft", {"name": "tiny-kohya", "weight": -0.5}]))
    check("two LoRAs at once, one negative", both["status"] == "completed"
          and picture(base, both).tobytes() not in (plain_pixels, lora_picture.tobytes()))
    _, plain_again = generate(base, BASE)
    check("without the LoRA again: the first picture, bit for bit", picture(base, plain_again).tobytes() == plain_pixels)

    rpc = requests.post(f"{base}/api/mcp", json={"jsonrpc": "2.0", "id": 1,
                                                 "method": "context.image_generation.generate",
                                                 "params": with_settings(settings_loras=[{"name": "tiny-kohya", "weight": 0.8}])}).json()
    check("the seed's JSON-RPC generate takes loras in settings", "result" in rpc and rpc["result"].get("job_id"), rpc)
    a1111.util_set_model(TINY)
    txt = a1111.txt2img(prompt="a red fox in the snow <lora:tiny-kohya:0.8>", seed=5, steps=3, width=64, height=64,
                        cfg_scale=7.0)
    check("A1111 txt2img with a <lora:…> tag", "Lora hashes" in txt.info["infotexts"][0], txt.info["infotexts"][0])

    # A LoRA naming a layer the model lacks (its UNet's first projection
    # renamed in the header): refused at submit, naming the layer.
    renamed_lora(LORAS / "tiny-kohya.safetensors", Path(data) / "loras" / "tiny-renamed.safetensors",
                 "lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_down_blocks_0_attentions_0_proj_nowhere")
    before = requests.get(f"{base}/api/queue").json()["pending"]
    for body, says in [
        (with_settings(loras=[{"name": "missing"}]), "no LoRA named"),
        (with_settings(loras=[{"name": "../models/x"}]), "not a LoRA name"),
        (with_settings(loras=[{"name": "tiny-kohya", "weight": 50}]), "outside"),
        (with_settings(loras="tiny-kohya"), "must be a list"),
        (with_settings(prompt="a fox <lora:tiny-kohya:0.5"), "not closed"),
        (with_settings(loras=["tiny-kohya"], model="flux-1"), "is for SD 1.x/2.x models"),
        (with_settings(loras=["not-a-lora"]), "no LoRA tensors"),
        (with_settings(loras=["tiny-renamed"]), "down_blocks_0_attentions_0_proj_nowhere, which this model does not have"),
        # The same family's names but another model's sizes.
        (with_settings(model="shapes-64", loras=["tiny-kohya"], settings_width=64, settings_height=64),
         "is the LoRA for another model?"),
    ]:
        response, _ = generate(base, body)
        body_json = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        message = body_json.get("error", {}).get("message", "")
        check(f"refused with a 400 naming the problem: {says}", response.status_code == 400 and says in message,
              (response.status_code, response.text))
    check("nothing was queued by the refused requests", requests.get(f"{base}/api/queue").json()["pending"] == before)

    _, shapes = generate(base, with_settings(model="shapes-64", prompt="a red circle", settings_width=64,
                                             settings_height=64))
    check("that model's next job runs", shapes["status"] == "completed", shapes)

    # The file is replaced between queueing and running: the job fails
    # saying so, and the next job runs.
    requests.post(f"{base}/api/generate", json=with_settings(settings_num_inference_steps=40))  # keeps the worker busy
    queued = requests.post(f"{base}/api/generate", json=with_settings(loras=["tiny-peft"])).json()
    shutil.copy(LORAS / "tiny-kohya.safetensors", Path(data) / "loras" / "tiny-peft.safetensors")
    for _ in range(1200):
        status = requests.get(f"{base}/api/status/{queued['job_id']}").json()
        if status["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    check("a LoRA replaced after queueing fails its job, saying so",
          status["status"] == "failed" and "replaced" in (status.get("error") or status.get("message") or str(status)), status)
    _, after = generate(base, BASE)
    check("the next job runs", after["status"] == "completed", after)


def scanned(base):
    """A ComfyUI models folder named in [model_scan]: its loras/ and
    upscale_models/ are read as if they were the data dir's."""
    names = [l["name"] for l in requests.get(f"{base}/api/loras").json()["loras"]]
    check("a scanned ComfyUI loras/ folder is listed", names == ["tiny-kohya"], names)
    ups = {u["name"]: u for u in requests.get(f"{base}/api/upscalers").json()["upscalers"]}
    check("a scanned upscale_models/ folder is listed beside the built-in upscaler",
          ups.get("tiny-compact-x4", {}).get("scale") == 4 and "upscalerjs-esrgan-medium-x4" in ups, ups)
    _, done = generate(base, with_settings(loras=[{"name": "tiny-kohya", "weight": 0.8}]))
    check("a job with a LoRA from the scanned folder runs", done and done["status"] == "completed"
          and done["settings"]["loras"][0]["name"] == "tiny-kohya", done)
    job = requests.post(f"{base}/api/upscale", json={"image_id": done["images"][0]["id"], "upscaler": "tiny-compact-x4"})
    status = None
    for _ in range(600):
        status = requests.get(f"{base}/api/status/{job.json()['job_id']}").json()
        if status["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    check("an upscaler from the scanned folder runs", status["status"] == "completed"
          and status["images"][0]["metadata"]["settings"]["width"] == 4 * done["settings"]["width"], status)


def transformer_families(base):
    """FLUX and SD 3 take LoRAs too: kohya and PEFT files on the tiny FLUX
    model, a PEFT one on the tiny SD 3.5 model, an SD 1.5 one refused."""
    families = {l["name"]: l["family"] for l in requests.get(f"{base}/api/loras").json()["loras"]}
    check("GET /api/loras gives each file's family as its names tell it (null when they do not)",
          families == {"tiny-kohya": "SD 1.x/2.x", "tiny-flux-kohya": "FLUX", "tiny-flux-peft": "FLUX",
                       "tiny-sd3-peft": None}, families)
    for model, loras in (("tiny-flux-random", ["tiny-flux-kohya", "tiny-flux-peft"]),
                         ("tiny-sd3-random", ["tiny-sd3-peft"])):
        body = {"prompt": "a red fox in the snow", "model": model,
                "settings": {"seed": 5, "num_inference_steps": 2, "width": 64, "height": 64}}
        _, plain = generate(base, body)
        check(f"{model} without a LoRA completes", plain and plain["status"] == "completed", plain)
        plain_pixels = picture(base, plain).tobytes()
        for name in loras:
            _, done = generate(base, {**body, "loras": [{"name": name, "weight": 0.8}]})
            check(f"{model} with {name} completes", done and done["status"] == "completed", done)
            image = picture(base, done)
            check(f"{name} changes {model}'s picture", image.tobytes() != plain_pixels)
            check(f"{name} is in the PNG's Lora hashes", f'"{name}: ' in image.text.get("parameters", ""),
                  image.text.get("parameters"))
        _, again = generate(base, body)
        check(f"{model} without the LoRA again: bit for bit", picture(base, again).tobytes() == plain_pixels)
        response, _ = generate(base, {**body, "loras": ["tiny-kohya"]})
        check(f"an SD 1.5 LoRA on {model} is a 400", response.status_code == 400
              and "is for SD 1.x/2.x models" in response.text, response.text)


def main():
    with tempfile.TemporaryDirectory() as data:
        (Path(data) / "loras").mkdir()
        shutil.copy(LORAS / "tiny-kohya.safetensors", Path(data) / "loras")
        for model in ("tiny-flux", "tiny-sd3"):
            for file in (ROOT / "fixtures" / "tiny" / model / "loras").glob("*.safetensors"):
                shutil.copy(file, Path(data) / "loras")
        proc, base = start_server(BINARY, data)
        try:
            transformer_families(base)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    with tempfile.TemporaryDirectory() as data:
        models = Path(data) / "ComfyUI" / "models"
        (models / "loras").mkdir(parents=True)
        (models / "upscale_models").mkdir()
        shutil.copy(LORAS / "tiny-kohya.safetensors", models / "loras")
        shutil.copy(ROOT / "fixtures" / "tiny" / "upscalers" / "tiny-compact-x4.safetensors", models / "upscale_models")
        config = Path(data) / "cyberimage.toml"
        config.write_text(f"[model_scan]\nfolders = [{json.dumps(str(models))}]\n")
        proc, base = start_server(BINARY, str(Path(data) / "data"), "--config", str(config))
        try:
            scanned(base)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    with tempfile.TemporaryDirectory() as data:
        (Path(data) / "loras").mkdir()
        for name in ("tiny-kohya", "tiny-peft"):
            shutil.copy(LORAS / f"{name}.safetensors", Path(data) / "loras")
        (Path(data) / "loras" / "not-a-lora.safetensors").write_bytes(
            struct.pack("<Q", 2) + b"{}")
        proc, base = start_server(BINARY, data)
        try:
            run(base, data)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finish()


main()
