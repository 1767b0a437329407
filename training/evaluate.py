"""Scores a shapes-64 folder (or a training checkpoint) with diffusers on the
held-out prompts, as the semantic test does through the server:

    python training/evaluate.py fixtures/trained/shapes-64 [--seeds 2] [--guidance 7]

It prints the detector's accuracies (colour, shape, position, background)."""

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "semantic"))
import shapes  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=7.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="only the first N held-out prompts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline
    from test_shapes_model import held_out_prompts

    pipe = StableDiffusionPipeline.from_pretrained(args.folder, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    detector = shapes.Detector()
    prompts = held_out_prompts()[: args.limit or None]
    hits, total, misses = Counter(), 0, []
    for prompt, want in prompts:
        g = torch.Generator().manual_seed(1)
        images = pipe([prompt] * args.seeds, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      height=64, width=64, generator=g, output_type="np").images
        for image in images:
            found = detector.detect((image * 255).round().astype(np.uint8))
            total += 1
            for key in ("colour", "shape", "position", "background"):
                hits[key] += found[key] == want[key]
            if any(found[k] != want[k] for k in ("colour", "shape", "position")):
                misses.append((prompt, {k: found[k] for k in ("colour", "shape", "position", "count")}))
    print(f"{total} pictures: " + ", ".join(f"{k} {hits[k] / total:.1%}"
                                            for k in ("colour", "shape", "position", "background")))
    for miss in misses[:15]:
        print("  miss:", miss)


if __name__ == "__main__":
    main()
