"""One SDXL UNet step in CyberImage's engine against diffusers + PyTorch (CPU)
on IDENTICAL weights: the real SDXL base UNet config
(fixtures/configs/sdxl/unet, 2.57 B parameters) with random weights, saved
once as float32 safetensors and loaded by both. Batch 2 (classifier-free
guidance) at SIZE² (latents SIZE/8), random text states (2, 77, 2048),
pooled text (2, 1280) and the size conditioning of a SIZE² image; in f32,
and in bf16 (ours: `[engine] precision = "bf16"`; diffusers: the UNet in
bfloat16). Reports medians, ratios, peak RSS and the FLOP floor (FLOPs by
torch's FlopCounterMode over a 2048³ float32 matmul measured in the same
run). The VAE is SD 1.5's architecture, measured by engine_vs_diffusers.py.

usage (in the fixtures venv; ~10 GiB of weights are written once to --model-dir):
  python bench/sdxl_vs_diffusers.py [--size 1024] [--repeats 2] [--out bench/results/sdxl.json]
"""

import argparse
import json
import os
from pathlib import Path

import torch
from common import ROOT, build, flops, git_rev, machine, matmul_anchor, median, peak_rss_mib, run_json_lines, timed
from diffusers import UNet2DConditionModel

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=1024)
ap.add_argument("--repeats", type=int, default=2)
ap.add_argument("--no-bf16", dest="bf16", action="store_false")
ap.add_argument("--model-dir", default="/tmp/cyberimage-bench-sdxl")
ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sdxl.json"))
args = ap.parse_args()
torch.set_num_threads(os.cpu_count() or 2)
torch.manual_seed(0)
UNET_DIR = Path(args.model_dir) / "unet"
CONFIG = ROOT / "fixtures" / "configs" / "sdxl" / "unet" / "config.json"


def build_weights():
    if (UNET_DIR / "diffusion_pytorch_model.safetensors").exists():
        return
    print("writing a random full-size SDXL UNet to", UNET_DIR, flush=True)
    config = json.loads(CONFIG.read_text())
    UNet2DConditionModel.from_config(config).save_pretrained(UNET_DIR, safe_serialization=True, max_shard_size="20GB")


def diffusers_side():
    latent = args.size // 8
    sample = torch.randn(2, 4, latent, latent)
    context = torch.randn(2, 77, 2048)
    added = {"text_embeds": torch.randn(2, 1280), "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * 2, dtype=torch.float32)}
    result = {}
    # As strong as its users run it: inference_mode, the UNet in
    # channels_last (SDPA is diffusers' default attention).
    with torch.inference_mode():
        unet = UNet2DConditionModel.from_pretrained(UNET_DIR).eval().to(memory_format=torch.channels_last)
        f = lambda: unet(sample, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample  # noqa: E731
        f()
        result["seconds"] = timed(f, args.repeats)
        result["flops"] = flops(f)
        if args.bf16:
            unet = unet.to(torch.bfloat16).to(memory_format=torch.channels_last)
            s16, c16 = sample.bfloat16(), context.bfloat16()
            a16 = {k: v.bfloat16() for k, v in added.items()}
            f = lambda: unet(s16, 500, encoder_hidden_states=c16, added_cond_kwargs=a16).sample  # noqa: E731
            f()
            result["bf16_seconds"] = timed(f, args.repeats)
        del unet
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def ours_side(exe, flags=()):
    # The first of repeats + 1 runs is the warm-up, dropped.
    # One timed stage; the UNet's load is reported beside it.
    (rec,) = [r for r in run_json_lines(exe, args.model_dir, args.size, args.repeats + 1, *flags) if "seconds" in r]
    return {"seconds": rec["seconds"][1:], "peak_rss_mib": rec["peak_rss_mib"]}


def main():
    exe = build("cyberimage-engine", "bench_stages")
    build_weights()
    weights_mib = sum(p.stat().st_size for p in UNET_DIR.glob("*.safetensors")) / 2**20
    rates = matmul_anchor()
    anchor = rates["best"]
    theirs = diffusers_side()
    ours = ours_side(exe)
    ours16 = ours_side(exe, ["--bf16"]) if args.bf16 else None
    t_ours, t_theirs = median(ours["seconds"]), median(theirs["seconds"])
    result = {
        "commit": git_rev(), "machine": machine(), "size": args.size, "repeats": args.repeats, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "matmul_gflops_anchor": anchor, "matmul_gflops": rates, "weights_mib": weights_mib,
        "ours_s": t_ours, "diffusers_s": t_theirs, "ratio_ours_over_diffusers": t_ours / t_theirs,
        "gflop": theirs["flops"] / 1e9, "floor_s": theirs["flops"] / (anchor * 1e9),
        "ours_runs": ours["seconds"], "diffusers_runs": theirs["seconds"],
        "ours_peak_rss_mib": ours["peak_rss_mib"], "diffusers_peak_rss_mib": theirs["peak_rss_mib"],
        "diffusers_mode": "torch.inference_mode, channels_last",
        "command": "python bench/sdxl_vs_diffusers.py --size %d --repeats %d%s"
                   % (args.size, args.repeats, "" if args.bf16 else " --no-bf16"),
    }
    if ours16:
        result.update({
            "ours_bf16_s": median(ours16["seconds"]), "diffusers_bf16_s": median(theirs["bf16_seconds"]),
            "ours_bf16_runs": ours16["seconds"], "diffusers_bf16_runs": theirs["bf16_seconds"],
            "ours_bf16_peak_rss_mib": ours16["peak_rss_mib"],
        })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


main()
