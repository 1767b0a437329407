"""FLUX on the CPU: CyberImage against diffusers + PyTorch on IDENTICAL
weights, and whether a full FLUX.1-dev job fits this machine's 24 GiB.

1. Blocks: a FluxTransformer2DModel with FLUX.1-dev's full width (24 heads
   of 128, T5 width 4096, 512 text tokens) but 1 double + 1 single block,
   random weights saved once in the diffusers layout and loaded by both.
   One forward at 512² and 1024²: diffusers in f32 and bf16; ours in f32
   and from GGUF Q8_0 / Q4_K quantized from the same weights. A full step
   is ~19 double + 38 single blocks of this work.
2. End to end (--e2e): a full-size FLUX.1-dev folder with random weights
   (transformer as GGUF Q4_K, T5-XXL bf16, CLIP-L and VAE f32, written by
   our bench example), one job at 512², 1 step, with the text encoders
   dropped after encoding ([engine] drop_text_encoders): peak RSS.

usage (in the fixtures venv, see fixtures/README.md; builds the example):
  python bench/flux_vs_diffusers.py [--repeats 2] [--sizes 512 1024] [--e2e]
"""

import argparse
import json
import os
from pathlib import Path

import torch
from common import (FLUX_BLOCKS_CONFIG, ROOT, build, flops, git_rev, machine, matmul_anchor, peak_rss_mib,
                    run_json_lines, timed)
from diffusers import FluxTransformer2DModel

ap = argparse.ArgumentParser()
ap.add_argument("--repeats", type=int, default=2)
ap.add_argument("--sizes", type=int, nargs="*", default=[512, 1024],
                help="image sizes for the block timings; none: keep the previous ones")
ap.add_argument("--blocks-dir", default="/tmp/cyberimage-bench-flux-blocks")
ap.add_argument("--e2e", action="store_true")
ap.add_argument("--e2e-dir", default="/tmp/cyberimage-bench-flux-full")
ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "flux.json"))
args = ap.parse_args()
torch.set_num_threads(os.cpu_count() or 2)
torch.manual_seed(0)
BLOCKS = Path(args.blocks_dir)
CONFIG = FLUX_BLOCKS_CONFIG


EXE = build("cyberimage-engine", "bench_flux")


def example(*argv):
    return run_json_lines(EXE, *argv)


def inputs(size, dtype):
    tokens = (size // 16) ** 2
    return dict(hidden_states=torch.randn(1, tokens, 64, dtype=dtype),
                encoder_hidden_states=torch.randn(1, 512, 4096, dtype=dtype),
                pooled_projections=torch.randn(1, 768, dtype=dtype), timestep=torch.tensor([0.75], dtype=dtype),
                guidance=torch.tensor([3.5], dtype=dtype), txt_ids=torch.zeros(512, 3),
                img_ids=torch.zeros(tokens, 3))


def blocks():
    folder = BLOCKS / "transformer"
    if not (folder / "config.json").exists():
        print("writing the 1+1-block full-width FLUX transformer to", folder, flush=True)
        FluxTransformer2DModel(**CONFIG).save_pretrained(folder, safe_serialization=True)
    results = {}
    with torch.no_grad():
        for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            model = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=dtype).eval()
            for size in args.sizes:
                kw = inputs(size, dtype)
                f = lambda: model(**kw).sample  # noqa: E731
                f()
                entry = {"seconds": timed(f, args.repeats)}
                if dtype == torch.float32:
                    entry["flops"] = flops(f)
                results[f"diffusers_{size}_{name}"] = entry
            del model
    results["diffusers_peak_rss_mib"] = peak_rss_mib()
    for size in args.sizes:
        for rec in example("blocks", folder, size, args.repeats):
            variant = rec["stage"].split(f"flux_blocks_{size}_")[1]
            results[f"ours_{size}_{variant}"] = {"seconds": rec["seconds"][1:], "peak_rss_mib": rec["peak_rss_mib"]}
    return results


def e2e():
    folder = Path(args.e2e_dir)
    if not (folder / "transformer").exists():
        print("writing a full-size random FLUX.1-dev (GGUF Q4_K transformer) to", folder, flush=True)
        example("make-e2e", folder, ROOT / "fixtures/tiny/tiny-flux", ROOT / "fixtures/configs/flux1-dev")
    records = example("e2e", folder, 512)
    files = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
             if p.suffix in (".gguf", ".safetensors")}
    return {"stages": {r["stage"]: r["seconds"][0] for r in records},
            "peak_rss_mib": max(r["peak_rss_mib"] for r in records), "files_bytes": files,
            "command": "python bench/flux_vs_diffusers.py --e2e", "commit": git_rev(), "machine": machine()}


def main():
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    result = {"commit": git_rev(), "machine": machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "sizes": args.sizes, "repeats": args.repeats,
              "command": "python bench/flux_vs_diffusers.py --repeats %d --sizes %s"
                         % (args.repeats, " ".join(map(str, args.sizes)))}
    out.parent.mkdir(parents=True, exist_ok=True)
    # Saved after each part, so a later failure keeps the earlier numbers.
    if args.sizes:
        rates = matmul_anchor()
        result.update(matmul_gflops_anchor=rates["best"], matmul_gflops=rates)
        result["blocks"] = blocks()
    else:
        # Only the end-to-end run: the block timings, and the anchor and
        # settings they were measured with, stay as they were.
        for key in ("blocks", "matmul_gflops_anchor", "matmul_gflops", "sizes", "repeats", "command", "commit",
                    "machine"):
            result[key] = previous.get(key)
    result["e2e"] = previous.get("e2e")
    out.write_text(json.dumps(result, indent=2))
    if args.e2e:
        result["e2e"] = e2e()
        out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


main()
