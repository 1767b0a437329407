"""CyberImage's engine against diffusers + PyTorch (CPU) on IDENTICAL weights:
a full-size SD 1.5 architecture (the real UNet, CLIP-L text encoder and VAE
configs) with random weights, saved once as safetensors in the diffusers
layout and loaded by both. In one run on one machine it times:

- text encoding, batch 2 (prompt + negative);
- one UNet step at SIZE² (latents SIZE/8), batch 2 (classifier-free guidance);
- a VAE decode at SIZE², batch 1, and at LARGE_VAE² (default 1024²);
- the UNet and VAE stages again in bf16: ours with `[engine] precision =
  "bf16"` (bf16 products, f32 sums), diffusers with the modules in bfloat16;

and reports medians, ours/diffusers ratios, peak RSS, and the FLOP floor per
stage: FLOPs counted by torch's FlopCounterMode, divided by the matmul
throughput measured here in the same run (a 2048³ float32 matmul, the
faster of torch and our engine).

usage (in the fixtures venv, see fixtures/README.md; builds the example):
  python bench/engine_vs_diffusers.py [--size 512] [--large-vae 1024] [--repeats 3] [--out bench/results/engine.json]
"""

import argparse
import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel
from common import ROOT, bf16_anchor, build, write_sd15_weights, flops, git_rev, has_amx, machine, matmul_anchor, median, peak_rss_mib, run_json_lines, timed

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--large-vae", type=int, default=1024, help="second VAE decode size; 0 skips it")
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--no-bf16", dest="bf16", action="store_false",
                help="skip the bf16 runs (ours: [engine] precision = \"bf16\"; diffusers: the modules in bfloat16)")
ap.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                help="leave diffusers' UNet and VAE in torch's default memory format (channels_last is what its CPU users set)")
ap.add_argument("--model-dir", default="/tmp/cyberimage-bench-sd15")
ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine.json"))
args = ap.parse_args()
torch.set_num_threads(os.cpu_count() or 2)
torch.manual_seed(0)
MODEL = Path(args.model_dir)



def build_weights():
    write_sd15_weights(MODEL)


def diffusers_side():
    latent = args.size // 8
    ids = (torch.arange(154) % 400).reshape(2, 77)
    results = {}
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    with torch.inference_mode():
        clip = CLIPTextModel.from_pretrained(MODEL / "text_encoder").eval()
        f = lambda: clip(ids)[0]  # noqa: E731
        f()
        results["text_encode_b2"] = {"seconds": timed(f, args.repeats), "flops": flops(f)}
        context = clip(ids)[0]
        del clip
        unet = UNet2DConditionModel.from_pretrained(MODEL / "unet").eval().to(memory_format=fmt)
        sample = torch.randn(2, 4, latent, latent).to(memory_format=fmt)
        f = lambda: unet(sample, 500, encoder_hidden_states=context).sample  # noqa: E731
        f()
        results["unet_step_b2"] = {"seconds": timed(f, args.repeats), "flops": flops(f)}
        if args.bf16:
            unet = unet.to(torch.bfloat16)
            s16, c16 = sample.bfloat16().to(memory_format=fmt), context.bfloat16()
            f = lambda: unet(s16, 500, encoder_hidden_states=c16).sample  # noqa: E731
            f()
            results["unet_step_b2"]["bf16_seconds"] = timed(f, args.repeats)
        del unet
        vae = AutoencoderKL.from_pretrained(MODEL / "vae").eval().to(memory_format=fmt)
        z = torch.randn(1, 4, latent, latent).to(memory_format=fmt)
        f = lambda: vae.decode(z / 0.18215).sample  # noqa: E731
        f()
        results["vae_decode_b1"] = {"seconds": timed(f, args.repeats), "flops": flops(f)}
        if args.large_vae:
            z = torch.randn(1, 4, args.large_vae // 8, args.large_vae // 8).to(memory_format=fmt)
            f = lambda: vae.decode(z / 0.18215).sample  # noqa: E731
            f()
            results["vae_decode_large_b1"] = {"seconds": timed(f, args.repeats), "flops": flops(f)}
        if args.bf16:
            vae = vae.to(torch.bfloat16)
            sizes = [("vae_decode_b1", args.size)] + ([("vae_decode_large_b1", args.large_vae)] if args.large_vae else [])
            for stage, size in sizes:
                z16 = (torch.randn(1, 4, size // 8, size // 8) / 0.18215).bfloat16().to(memory_format=fmt)
                f = lambda: vae.decode(z16).sample  # noqa: E731
                f()
                results[stage]["bf16_seconds"] = timed(f, args.repeats)
    results["peak_rss_mib"] = peak_rss_mib()
    return results


def ours_side(exe, flags=()):
    # Warm-up run is the first of repeats + 1; it is dropped.
    extra = [args.large_vae] if args.large_vae else []
    out = {}
    for rec in run_json_lines(exe, MODEL, args.size, args.repeats + 1, *extra, *flags):
        if "load_seconds" in rec:  # the UNet's load (bf16 on AMX packs its weights there)
            out[rec["stage"]] = {"load_seconds": rec["load_seconds"]}
            continue
        # The first run (the warm-up) is kept apart: it shows what packing
        # on first use costs.
        out[rec["stage"]] = {"seconds": rec["seconds"][1:], "first_seconds": rec["seconds"][0],
                             "peak_rss_mib": rec["peak_rss_mib"]}
    return out


def main():
    exe = build("cyberimage-engine", "bench_stages")
    build_weights()
    weights_mib = sum(p.stat().st_size for p in MODEL.rglob("*.safetensors")) / 2**20
    anchor = matmul_anchor()
    peak = anchor["best"]
    theirs = diffusers_side()
    ours = ours_side(exe)
    ours16 = ours_side(exe, ["--bf16"]) if args.bf16 else {}
    # On an AMX CPU, our bf16 again on the AVX-512 BF16 kernel: the two
    # kernels on one CPU, and the no-regression check for CPUs without AMX.
    ours16_avx = ours_side(exe, ["--bf16", "--bf16-kernel=avx512"]) if args.bf16 and has_amx() else {}
    # And on AMX with the convolutions on the im2col kernel instead of the
    # tap tiles: what the tap tiles gain on one CPU.
    ours16_im2col = ours_side(exe, ["--bf16", "--no-tap-tiles"]) if args.bf16 and has_amx() else {}
    anchor16 = bf16_anchor() if args.bf16 else None
    stages = {}
    for stage in ("text_encode_b2", "unet_step_b2", "vae_decode_b1", "vae_decode_large_b1"):
        if stage not in theirs:
            continue
        t_ours, t_theirs = median(ours[stage]["seconds"]), median(theirs[stage]["seconds"])
        stages[stage] = {
            "ours_s": t_ours, "diffusers_s": t_theirs, "ratio_ours_over_diffusers": t_ours / t_theirs,
            "gflop": theirs[stage]["flops"] / 1e9, "floor_s": theirs[stage]["flops"] / (peak * 1e9),
            "ours_runs": ours[stage]["seconds"], "diffusers_runs": theirs[stage]["seconds"],
        }
        if stage in ours16 and "bf16_seconds" in theirs[stage]:
            stages[stage].update({
                "ours_bf16_s": median(ours16[stage]["seconds"]),
                "diffusers_bf16_s": median(theirs[stage]["bf16_seconds"]),
                "ours_bf16_runs": ours16[stage]["seconds"], "diffusers_bf16_runs": theirs[stage]["bf16_seconds"],
            })
        if stage in ours16_avx:
            stages[stage]["ours_bf16_avx512_s"] = median(ours16_avx[stage]["seconds"])
        if stage in ours16_im2col:
            stages[stage]["ours_bf16_amx_im2col_s"] = median(ours16_im2col[stage]["seconds"])
        if stage in ours16:
            stages[stage]["ours_bf16_first_s"] = ours16[stage]["first_seconds"]
    result = {
        "commit": git_rev(), "machine": machine(), "size": args.size, "large_vae": args.large_vae, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "matmul_gflops_anchor": peak, "matmul_gflops": anchor, "bf16_anchor": anchor16,
        "diffusers_channels_last": args.channels_last, "diffusers_mode": "torch.inference_mode", "weights_mib": weights_mib,
        "ours_peak_rss_mib": max(v["peak_rss_mib"] for v in ours.values() if "peak_rss_mib" in v),
        "ours_bf16_peak_rss_mib": max((v["peak_rss_mib"] for v in ours16.values() if "peak_rss_mib" in v), default=None),
        "ours_unet_load_s": ours.get("unet_load", {}).get("load_seconds"),
        "ours_bf16_unet_load_s": ours16.get("unet_load", {}).get("load_seconds"),
        "diffusers_peak_rss_mib": theirs["peak_rss_mib"], "stages": stages,
        "command": "python bench/engine_vs_diffusers.py --size %d --large-vae %d --repeats %d%s%s"
                   % (args.size, args.large_vae, args.repeats, "" if args.bf16 else " --no-bf16",
                      "" if args.channels_last else " --no-channels-last"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


main()
