"""A whole image-to-image job, CyberImage against diffusers'
`StableDiffusionImg2ImgPipeline` (CPU) on IDENTICAL weights: the full-size
SD 1.5 architecture with random weights (the files engine_vs_diffusers.py
writes, made here if missing), with tiny-sd15's tokenizer and DDIM
scheduler config beside them. One SIZE² picture in, STEPS steps at
STRENGTH (so int(STEPS · STRENGTH) UNet steps, batch 2 for guidance 7.5),
one picture out: text encoding, the VAE encoder, the steps and the decode.
Ours: the generator's job (`generate_from`, as a worker runs it, minus
the PNG); diffusers: the pipeline call. f32, and bf16 (ours: `[engine]
precision = "bf16"`; diffusers: the pipeline in bfloat16).

usage (in the fixtures venv, see fixtures/README.md; builds the example):
  python bench/img2img_job.py [--size 512] [--steps 10] [--strength 0.5] [--repeats 3]
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from common import ROOT, build, git_rev, machine, median, peak_rss_mib, run_json_lines, timed, write_sd15_weights
from PIL import Image

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--strength", type=float, default=0.5)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--model-dir", default="/tmp/cyberimage-bench-sd15")
ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "img2img_job.json"))
args = ap.parse_args()
torch.set_num_threads(os.cpu_count() or 2)
MODEL = Path(args.model_dir)
PROMPT, NEGATIVE = "a lighthouse on a cliff at dusk, oil painting", "blurry"


def pipeline_folder():
    write_sd15_weights(MODEL)
    tiny = ROOT / "fixtures" / "tiny" / "tiny-sd15"
    for part in ("tokenizer", "scheduler"):
        if not (MODEL / part).exists():
            shutil.copytree(tiny / part, MODEL / part)
    shutil.copy(tiny / "model_index.json", MODEL / "model_index.json")


def diffusers_side():
    from diffusers import StableDiffusionImg2ImgPipeline

    rgb = (np.arange(args.size * args.size * 3) * 37 % 251).astype(np.uint8).reshape(args.size, args.size, 3)
    image = Image.fromarray(rgb)
    results = {}
    for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(MODEL, torch_dtype=dtype, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)

        def job():
            with torch.inference_mode():
                return pipe(PROMPT, negative_prompt=NEGATIVE, image=image, strength=args.strength,
                            num_inference_steps=args.steps, guidance_scale=7.5,
                            generator=torch.Generator().manual_seed(1)).images[0]

        job()
        results[name] = timed(job, args.repeats)
        del pipe
    results["peak_rss_mib"] = peak_rss_mib()
    return results


def main():
    pipeline_folder()
    exe = build("cyberimage-engine", "bench_img2img_job")
    ours = {}
    for name, flags in (("f32", []), ("bf16", ["--bf16"])):
        rec = run_json_lines(exe, MODEL, args.size, args.steps, args.strength, args.repeats + 1, *flags)[0]
        ours[name] = {"seconds": rec["seconds"][1:], "first_s": rec["seconds"][0], "peak_rss_mib": rec["peak_rss_mib"]}
    theirs = diffusers_side()
    result = {
        "commit": git_rev(), "machine": machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "size": args.size, "steps": args.steps, "strength": args.strength, "repeats": args.repeats,
        "unet_steps": int(args.steps * args.strength),
        "command": f"python bench/img2img_job.py --size {args.size} --steps {args.steps} "
                   f"--strength {args.strength} --repeats {args.repeats}",
        "ours": ours, "diffusers": theirs,
        "ratios": {p: median(ours[p]["seconds"]) / median(theirs[p]) for p in ("f32", "bf16")},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


main()
