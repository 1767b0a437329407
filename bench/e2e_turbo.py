"""An end-to-end SD-Turbo class job, prompt to PNG file, in CyberImage
against diffusers + PyTorch (CPU) on IDENTICAL weights: the SD 2.1 / SD-Turbo
architecture (OpenCLIP-H text encoder, 23 layers; the SD 2.1 UNet; the SD
VAE) with random weights, saved once in the diffusers layout, tokenizer
from the tiny fixture model. One 512² image, 1 Euler step ("trailing"
spacing), guidance 0: what SD-Turbo ships for.

- Ours: the release `cyberimage serve` on loopback with the folder as a
  `[[models]]` entry. A job is timed from `POST /api/generate` until its
  event stream (`GET /api/events?job_id=`, which ends with the job) closes;
  `GET /api/status/{id}` must then say completed. Queue, encode, step,
  decode, PNG file and database row included.
- diffusers: `StableDiffusionPipeline.from_pretrained`, then
  `pipe(prompt, ...)` and `image.save(png)`.

Each side also reports its cold start (ours: server start to the first
image done, on a new data folder, where the weights' digests are computed;
diffusers: from_pretrained plus the first image) and peak RSS; ours also a
restart (a second server on the same folder, digests cached, to its first
image done).
With bf16 (default on; `--no-bf16` skips), again with ours under
`[engine] precision = "bf16"` and the pipeline in bfloat16.

usage (in the fixtures venv):
  python bench/e2e_turbo.py [--repeats 3] [--out bench/results/e2e.json]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests
import torch
from common import ROOT, build, git_rev, machine, median, peak_rss_mib
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ap = argparse.ArgumentParser()
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--no-bf16", dest="bf16", action="store_false")
ap.add_argument("--model-dir", default="/tmp/cyberimage-bench-sdturbo")
ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "e2e.json"))
args = ap.parse_args()
torch.set_num_threads(os.cpu_count() or 2)
torch.manual_seed(0)
MODEL = Path(args.model_dir)
PROMPT = "a lighthouse on a cliff at dawn, film photograph"

# stabilityai/sd-turbo's published component configs (SD 2.1 architecture).
UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
           block_out_channels=(128, 256, 512, 512), sample_size=768,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           scaling_factor=0.18215)
CLIP = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                      num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", steps_offset=1, timestep_spacing="trailing")


def build_weights():
    if (MODEL / "model_index.json").exists():
        return
    print("writing a random full-size SD-Turbo to", MODEL, flush=True)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**VAE), text_encoder=CLIPTextModel(CLIP),
        tokenizer=None, unet=UNet2DConditionModel(**UNET),
        scheduler=EulerDiscreteScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(MODEL, safe_serialization=True)
    shutil.copytree(ROOT / "fixtures" / "tiny" / "tiny-sd15" / "tokenizer", MODEL / "tokenizer", dirs_exist_ok=True)
    index = json.loads((MODEL / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    (MODEL / "model_index.json").write_text(json.dumps(index, indent=2))


def diffusers_side(dtype):
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=dtype, safety_checker=None)
    # As strong as its users run it: inference_mode, UNet and VAE in
    # channels_last (SDPA is diffusers' default attention).
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    out = Path(tempfile.mkdtemp(prefix="cyberimage-e2e-diffusers-"))
    runs = []
    with torch.inference_mode():
        for i in range(args.repeats + 1):
            run_start = time.perf_counter()
            image = pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, height=512, width=512,
                         generator=torch.manual_seed(i)).images[0]
            image.save(out / f"{i}.png")
            runs.append(time.perf_counter() - run_start)
            if i == 0:
                cold = time.perf_counter() - start
    del pipe
    shutil.rmtree(out)
    return {"cold_s": cold, "seconds": runs[1:]}


def vm_hwm_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def serve(exe, config, data):
    """Starts the release server on `config` and `data`; returns the process
    and its base URL."""
    proc = subprocess.Popen([str(exe), "--config", str(config), "serve", "--bind", "127.0.0.1:0", "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"})
    return proc, re.search(r"listening on (http://\S+)", proc.stdout.readline()).group(1)


def timed_job(base, seed):
    """One job from POST to the end of its event stream, in seconds."""
    start = time.perf_counter()
    job = requests.post(f"{base}/api/generate", json={
        "prompt": PROMPT, "model": "sd-turbo-bench",
        "settings": {"num_inference_steps": 1, "guidance_scale": 0.0, "width": 512, "height": 512,
                     "num_images": 1, "seed": seed}})
    job.raise_for_status()
    job_id = job.json()["job_id"]
    # The job's event stream ends when the job does: no poll loop
    # competing with the engine for the 2 cores (a 10 ms status
    # poll cost about 1 s per job here).
    with requests.get(f"{base}/api/events", params={"job_id": job_id}, stream=True, timeout=3600) as events:
        events.raise_for_status()
        for _ in events.iter_lines():
            pass
    seconds = time.perf_counter() - start
    status = requests.get(f"{base}/api/status/{job_id}").json()
    if status["status"] != "completed":
        raise SystemExit(f"our job ended {status['status']}: {status}")
    return seconds


def ours_side(exe, precision):
    """Cold start (a new data folder: the weights are hashed on this first
    load), warm jobs, and a restart on the same folder (the weights' digests
    are cached there, as on a server that restarts)."""
    data = Path(tempfile.mkdtemp(prefix="cyberimage-e2e-"))
    config = data / "cyberimage.toml"
    config.write_text(f'[engine]\nprecision = "{precision}"\n\n[[models]]\nkey = "sd-turbo-bench"\n'
                      f'source = "{MODEL}"\nfamily = "sd-turbo"\ndescription = "random weights (benchmark)"\n'
                      'defaults = { steps = 1, guidance_scale = 0.0, width = 512, height = 512 }\n')
    try:
        start = time.perf_counter()
        proc, base = serve(exe, config, data)
        try:
            runs = [timed_job(base, 0)]
            cold = time.perf_counter() - start
            runs += [timed_job(base, i) for i in range(1, args.repeats + 1)]
            rss = vm_hwm_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        start = time.perf_counter()
        proc, base = serve(exe, config, data)
        try:
            timed_job(base, args.repeats + 1)
            restart = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        pngs = list((data / "images").rglob("*.png"))
        if len(pngs) != args.repeats + 2:
            raise SystemExit(f"expected {args.repeats + 2} PNG files, found {len(pngs)}")
    finally:
        shutil.rmtree(data)
    return {"cold_s": cold, "restart_s": restart, "seconds": runs[1:], "peak_rss_mib": rss}


def main():
    exe = build("cyberimage")
    build_weights()
    weights_mib = sum(p.stat().st_size for p in MODEL.rglob("*.safetensors")) / 2**20
    theirs = diffusers_side(torch.float32)
    theirs_rss = peak_rss_mib()
    ours = ours_side(exe, "f32")
    result = {
        "commit": git_rev(), "machine": machine(), "repeats": args.repeats, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "weights_mib": weights_mib, "ours": ours, "diffusers": theirs, "diffusers_peak_rss_mib": theirs_rss,
        "ours_s": median(ours["seconds"]), "diffusers_s": median(theirs["seconds"]),
        "diffusers_mode": "torch.inference_mode, channels_last",
        "command": "python bench/e2e_turbo.py --repeats %d%s" % (args.repeats, "" if args.bf16 else " --no-bf16"),
    }
    result["ratio_ours_over_diffusers"] = result["ours_s"] / result["diffusers_s"]
    if args.bf16:
        result["ours_bf16"] = ours_side(exe, "bf16")
        result["diffusers_bf16"] = diffusers_side(torch.bfloat16)
        result["ours_bf16_s"] = median(result["ours_bf16"]["seconds"])
        result["diffusers_bf16_s"] = median(result["diffusers_bf16"]["seconds"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


main()
