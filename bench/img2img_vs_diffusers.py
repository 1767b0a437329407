"""Image-to-image's extra stage, the VAE encoder, CyberImage against
diffusers + PyTorch (CPU) on IDENTICAL weights: the full-size SD 1.5 VAE
(random weights, the same files engine_vs_diffusers.py writes), encoding a
SIZE² picture and a LARGE² one to the latent posterior, in f32 and in bf16
(ours: `[engine] precision = "bf16"`; diffusers: the VAE in bfloat16).
The rest of an image-to-image job is the text-to-image stages
engine_vs_diffusers.py times (strength × steps UNet steps, one decode).

usage (in the fixtures venv, see fixtures/README.md; builds the example):
  python bench/img2img_vs_diffusers.py [--size 512] [--large 1024] [--repeats 3] [--out bench/results/img2img.json]
"""

import argparse
import json
import os
from pathlib import Path

import torch
from common import ROOT, build, flops, git_rev, machine, matmul_anchor, median, peak_rss_mib, run_json_lines, timed
from diffusers import AutoencoderKL

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--large", type=int, default=1024, help="second picture size; 0 skips it")
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--model-dir", default="/tmp/cyberimage-bench-sd15",
                help="written by bench/engine_vs_diffusers.py (its vae/ folder is used)")
ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "img2img.json"))
args = ap.parse_args()
torch.set_num_threads(os.cpu_count() or 2)
torch.manual_seed(0)
MODEL = Path(args.model_dir)
STAGES = [("vae_encode_b1", args.size)] + ([("vae_encode_large_b1", args.large)] if args.large else [])


def diffusers_side():
    results = {}
    vae = AutoencoderKL.from_pretrained(MODEL / "vae").eval()
    with torch.no_grad():
        for stage, side in STAGES:
            x = torch.randn(1, 3, side, side) * 0.5
            f = lambda: vae.encode(x).latent_dist.mean  # noqa: E731
            f()
            results[stage] = {"seconds": timed(f, args.repeats), "flops": flops(f)}
        vae = vae.to(torch.bfloat16)
        for stage, side in STAGES:
            x = (torch.randn(1, 3, side, side) * 0.5).bfloat16()
            f = lambda: vae.encode(x).latent_dist.mean  # noqa: E731
            f()
            results[stage]["bf16_seconds"] = timed(f, args.repeats)
    results["peak_rss_mib"] = peak_rss_mib()
    return results


def ours_side(exe, flags=()):
    extra = [args.large] if args.large else []
    out = {}
    for rec in run_json_lines(exe, MODEL, args.size, args.repeats + 1, *extra, "--encode-only", *flags):
        out[rec["stage"]] = {"seconds": rec["seconds"][1:], "peak_rss_mib": rec["peak_rss_mib"]}
    return out


def main():
    if not (MODEL / "vae" / "diffusion_pytorch_model.safetensors").exists():
        raise SystemExit(f"no VAE in {MODEL}: run bench/engine_vs_diffusers.py once to write the weights")
    exe = build("cyberimage-engine", "bench_stages")
    anchor = matmul_anchor()
    theirs = diffusers_side()
    ours = ours_side(exe)
    ours16 = ours_side(exe, ["--bf16"])
    stages = {}
    for stage, side in STAGES:
        t_ours, t_theirs = median(ours[stage]["seconds"]), median(theirs[stage]["seconds"])
        stages[stage] = {
            "side": side, "ours_s": t_ours, "diffusers_s": t_theirs, "ratio_ours_over_diffusers": t_ours / t_theirs,
            "gflop": theirs[stage]["flops"] / 1e9, "floor_s": theirs[stage]["flops"] / (anchor["best"] * 1e9),
            "ours_bf16_s": median(ours16[stage]["seconds"]), "diffusers_bf16_s": median(theirs[stage]["bf16_seconds"]),
            "ours_runs": ours[stage]["seconds"], "diffusers_runs": theirs[stage]["seconds"],
            "ours_bf16_runs": ours16[stage]["seconds"], "diffusers_bf16_runs": theirs[stage]["bf16_seconds"],
        }
    result = {
        "commit": git_rev(), "machine": machine(), "repeats": args.repeats, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "matmul_gflops_anchor": anchor["best"], "matmul_gflops": anchor,
        "ours_peak_rss_mib": max(v["peak_rss_mib"] for v in ours.values()),
        "diffusers_peak_rss_mib": theirs["peak_rss_mib"], "stages": stages,
        "command": "python bench/img2img_vs_diffusers.py --size %d --large %d --repeats %d"
                   % (args.size, args.large, args.repeats),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


main()
