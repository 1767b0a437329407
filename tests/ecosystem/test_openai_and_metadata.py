"""Ecosystem clients against the real binary and the real engine (the
built-in random-weight tiny SD 1.5 model):

- the official `openai` Python client: images.edit (multipart upload, an
  image-to-image job, or inpainting with OpenAI's transparent-means-edit
  mask), and
  images.generate with url and
  b64_json responses, extras (seed, steps, negative_prompt) through
  extra_body, OpenAI model names mapped to our default, models.list, and
  OpenAI-shaped errors raised as the client's own exception classes;
- Pillow reading the PNG text chunks we write (A1111 `parameters` and the
  versioned `cyberimage` JSON), and our reader (`POST /api/png-info`,
  `cyberimage inspect`) parsing both our PNG and an A1111-style one
  written here by Pillow.

usage: python tests/ecosystem/test_openai_and_metadata.py path/to/cyberimage
"""

import base64
import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import openai
import requests
from PIL import Image
from PIL.PngImagePlugin import PngInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import check, finish, start_server  # noqa: E402

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/debug/cyberimage"
TINY = "tiny-sd15-random"




def availability_checks(base):
    models = requests.get(f"{base}/api/models").json()["models"]
    check("models: the built-in test model can run here", models[TINY]["available"] is True)
    flux = models["flux-1"]
    check("models: FLUX without weights says what is missing and how to get it",
          flux["available"] is False and "not on this machine" in (flux["unavailable_reason"] or "")
          and "cyberimage models pull flux-1" in flux["unavailable_reason"], flux)
    sd3 = models["sd-3.5"]
    check("models: SD 3.5 without weights says so", sd3["available"] is False
          and "cyberimage models pull sd-3.5" in (sd3["unavailable_reason"] or ""), sd3)


def openai_checks(base):
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused-locally", max_retries=0)
    ids = [m.id for m in client.models.list().data]
    check("openai: models.list names our models", TINY in ids, ids)

    r = client.images.generate(model=TINY, prompt="a paper boat", n=2, size="64x64",
                               extra_body={"seed": 11, "steps": 3, "negative_prompt": "blurry"})
    check("openai: two urls", len(r.data) == 2 and all(d.url and d.url.startswith(base) for d in r.data), r)
    check("openai: created is a unix time", isinstance(r.created, int) and r.created > 1_600_000_000)
    png = requests.get(r.data[0].url).content
    check("openai: url serves a 64x64 PNG", Image.open(io.BytesIO(png)).size == (64, 64))
    check("openai: revised_prompt echoes the prompt", r.data[0].revised_prompt == "a paper boat")

    r = client.images.generate(model="dall-e-3", prompt="a paper boat", size="64x64",
                               response_format="b64_json", extra_body={"seed": 11, "steps": 3, "negative_prompt": "blurry", "model": TINY})
    data = base64.b64decode(r.data[0].b64_json)
    same_pixels = Image.open(io.BytesIO(data)).tobytes() == Image.open(io.BytesIO(png)).tobytes()
    check("openai: b64_json gives the same pixels for the same seed", same_pixels)
    # OpenAI's model names map to the default model: on this fresh machine
    # the trained shapes-64 (flux-1 has no weights), which draws the prompt.
    r = client.images.generate(model="dall-e-3", prompt="a kite", response_format="b64_json",
                               extra_body={"seed": 3})
    kite = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json)))
    check("openai: dall-e-3 runs the default model (shapes-64 here)", kite.size == (64, 64), kite.size)
    # A model whose weights are absent fails honestly, as an OpenAI server error.
    try:
        client.images.generate(model="dall-e-3", prompt="a kite", response_format="b64_json",
                               extra_body={"steps": 2, "model": "flux-1"})
        check("openai: a model without weights fails", False, "no error")
    except openai.InternalServerError as e:
        check("openai: a model without weights fails as an OpenAI-shaped 500",
              e.body.get("type") == "server_error" and "flux-1" in e.body.get("message", ""), e.body)

    for kwargs, exc, param in [
        (dict(model=TINY, prompt="x", size="huge"), openai.BadRequestError, "size"),
        (dict(model=TINY, prompt="x", size="64x50"), openai.BadRequestError, "size"),
        (dict(model=TINY, prompt="x", n=99), openai.BadRequestError, "n"),
        (dict(model="no-such-model", prompt="x"), openai.BadRequestError, "model"),
        (dict(model=TINY, prompt="x", response_format="svg"), openai.BadRequestError, "response_format"),
        (dict(model=TINY, prompt="x", output_format="webp"), openai.BadRequestError, "output_format"),
        (dict(model=TINY, prompt=""), openai.BadRequestError, "prompt"),
    ]:
        try:
            client.images.generate(**kwargs)
            check(f"openai: {kwargs} refused", False, "no error")
        except exc as e:
            body = e.body if isinstance(e.body, dict) else {}
            check(f"openai: {sorted(kwargs)} refused with param {param}",
                  e.status_code == 400 and body.get("param") == param and body.get("type") == "invalid_request_error" and body.get("message"),
                  e.body)
    raw = requests.post(f"{base}/v1/images/generations", data=b"{oops", headers={"Content-Type": "application/json"})
    err = raw.json().get("error", {})
    check("openai: malformed JSON is an OpenAI-shaped 400", raw.status_code == 400 and err.get("type") == "invalid_request_error" and "param" in err, raw.text)
    raw = requests.get(f"{base}/v1/nothing-here")
    check("openai: unknown /v1 route is an OpenAI-shaped 404", raw.status_code == 404 and raw.json()["error"]["type"] == "not_found_error", raw.text)


def openai_edit_checks(base):
    """images.edit (multipart) runs an image-to-image job from the upload."""
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused-locally", max_retries=0)
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 30)).save(picture, format="PNG")
    upload = ("boat.png", picture.getvalue(), "image/png")
    r = client.images.edit(model=TINY, image=upload, prompt="a paper boat at night", n=1, size="64x64",
                           response_format="b64_json", extra_body={"strength": 0.5, "seed": 3, "steps": 4})
    edited = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json)))
    check("openai: images.edit returns a 64x64 PNG", edited.size == (64, 64), edited.size)
    text = edited.text.get("parameters", "")
    check("openai: the edit is an image-to-image job at the strength asked", "Denoising strength: 0.5" in text, text)
    again = client.images.edit(model=TINY, image=upload, prompt="a paper boat at night", size="64x64",
                               response_format="b64_json", extra_body={"strength": 0.5, "seed": 3, "steps": 4})
    same = Image.open(io.BytesIO(base64.b64decode(again.data[0].b64_json))).tobytes() == edited.tobytes()
    check("openai: the same upload and seed give the same pixels", same)
    other = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 240)).save(other, format="PNG")
    third = client.images.edit(model=TINY, image=("b.png", other.getvalue(), "image/png"), prompt="a paper boat at night",
                               size="64x64", response_format="b64_json", extra_body={"strength": 0.5, "seed": 3, "steps": 4})
    differs = Image.open(io.BytesIO(base64.b64decode(third.data[0].b64_json))).tobytes() != edited.tobytes()
    check("openai: another picture gives another result", differs)
    # OpenAI's mask: transparent where the picture is edited.
    mask = io.BytesIO()
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (32, 0, 64, 64))
    rgba.save(mask, format="PNG")
    masked = client.images.edit(model=TINY, image=upload, mask=("mask.png", mask.getvalue(), "image/png"),
                                prompt="a paper boat at night", size="64x64", response_format="b64_json",
                                extra_body={"strength": 0.5, "seed": 3, "steps": 4})
    inpainted = Image.open(io.BytesIO(base64.b64decode(masked.data[0].b64_json)))
    record = json.loads(inpainted.text.get("cyberimage", "{}"))
    check("openai: an edit with a mask is an inpainting job",
          len(record.get("engine", {}).get("mask_sha256", "")) == 64
          and inpainted.tobytes() != edited.tobytes(), record.get("engine"))
    for kwargs, param in [
        (dict(model=TINY, image=upload, prompt="x", mask=("m.png", b"junk", "image/png")), "mask"),
        (dict(model=TINY, image=("junk.png", b"not a picture", "image/png"), prompt="x"), "image"),
    ]:
        try:
            client.images.edit(**kwargs)
            check(f"openai: edit {sorted(kwargs)} refused", False, "no error")
        except openai.BadRequestError as e:
            body = e.body if isinstance(e.body, dict) else {}
            check(f"openai: edit with {param} problem refused naming it",
                  body.get("param") == param and body.get("type") == "invalid_request_error", e.body)


def metadata_checks(base, binary):
    job = requests.post(f"{base}/api/generate", json={
        "prompt": "a castle, \"quoted\", ünïcode", "negative_prompt": "fog", "model": TINY,
        "settings": {"seed": 99, "num_inference_steps": 3, "guidance_scale": 6.5}}).json()
    for _ in range(600):
        status = requests.get(f"{base}/api/status/{job['job_id']}").json()
        if status["status"] in ("completed", "failed"):
            break
        import time
        time.sleep(0.1)
    check("metadata: job completed", status["status"] == "completed", status)
    png = requests.get(f"{base}{status['images'][0]['url']}").content
    img = Image.open(io.BytesIO(png))
    params = img.text.get("parameters", "")
    check("metadata: Pillow reads the A1111 parameters chunk",
          params.startswith("a castle, \"quoted\", ünïcode\nNegative prompt: fog\nSteps: 3, Sampler: DDIM, CFG scale: 6.5, Seed: 99, Size: 64x64, ")
          and "Model: tiny-sd15-random" in params, params)
    ours = json.loads(img.text.get("cyberimage", "{}"))
    check("metadata: Pillow reads the versioned JSON chunk",
          ours.get("version") == 1 and ours.get("seed") == 99 and ours.get("model") == TINY
          and ours.get("engine", {}).get("sampler") == "DDIM" and len(ours.get("weights_sha256", "")) == 64, ours)
    check("metadata: A1111 Model hash present", re.search(r"Model hash: [0-9a-f]{10}", params) is not None, params)

    info = requests.post(f"{base}/api/png-info", data=png, headers={"Content-Type": "image/png"}).json()
    check("png-info: reads our PNG", info.get("source") == "cyberimage" and info["prompt"] == "a castle, \"quoted\", ünïcode"
          and info["negative_prompt"] == "fog" and info["seed"] == 99 and info["steps"] == 3 and info["width"] == 64, info)

    # An A1111-style PNG written by Pillow, not by us.
    a1111 = PngInfo()
    a1111.add_text("parameters", "masterpiece, a red dragon, (detailed:1.2)\nNegative prompt: lowres, bad hands\n"
                   "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
                   "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.7, Clip skip: 2")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "PNG", pnginfo=a1111)
    info = requests.post(f"{base}/api/png-info", data=buf.getvalue()).json()
    check("png-info: parses A1111's format", info.get("source") == "a1111" and info["prompt"] == "masterpiece, a red dragon, (detailed:1.2)"
          and info["negative_prompt"] == "lowres, bad hands" and info["steps"] == 28 and info["sampler"] == "DPM++ 2M Karras"
          and info["guidance_scale"] == 7 and info["seed"] == 1234567890 and info["width"] == 512 and info["height"] == 768
          and info["model"] == "v1-5-pruned-emaonly" and info["extra"].get("Clip skip") == "2", info)
    bad = requests.post(f"{base}/api/png-info", data=b"not a png")
    check("png-info: non-PNG is a 400 with our error shape", bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_png", bad.text)

    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(buf.getvalue())
        f.flush()
        out = subprocess.run([binary, "inspect", f.name, "--json"], capture_output=True, text=True)
        parsed = json.loads(out.stdout or "{}")
        check("inspect: CLI reads an A1111 PNG", out.returncode == 0 and parsed.get("seed") == 1234567890, out.stderr)
        human = subprocess.run([binary, "inspect", f.name], capture_output=True, text=True)
        check("inspect: human output names the prompt", human.returncode == 0 and "masterpiece, a red dragon" in human.stdout, human.stdout)
    missing = subprocess.run([binary, "inspect", "/nonexistent.png"], capture_output=True, text=True)
    check("inspect: missing file fails clearly", missing.returncode != 0 and "nonexistent.png" in missing.stderr, missing.stderr)


def main():
    with tempfile.TemporaryDirectory() as data:
        proc, base = start_server(BINARY, data)
        try:
            availability_checks(base)
            openai_checks(base)
            openai_edit_checks(base)
            metadata_checks(base, BINARY)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finish()


main()
