"""Does the position word change where shapes-64 puts the shape? For held-out
(colour, shape, background) triples, one seed, each of the five position
words: the detector's verdicts, as a wanted -> found table. If every row is
the same, the words have no effect and the starting noise decides the
layout (what the epsilon-only model of commit f30d627 showed: 20/100;
the committed zero-terminal-SNR model gets 100/100; see the model card).

    python training/position_check.py fixtures/trained/shapes-64 [--triples 20] [--seed 11]

Runs in diffusers (the fixtures venv), 20 DDIM steps, guidance 7."""

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--triples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    detector = shapes.Detector()
    positions = list(shapes.POSITIONS)
    table = Counter()
    for colour, shape, background in shapes.held_out_triples()[:args.triples]:
        for position in positions:
            prompt = f"{shapes.article(colour)} {colour} {shape} {shapes.POSITION_WORDS[position][0]} on a {background} background"
            generator = torch.Generator().manual_seed(args.seed)
            picture = pipe(prompt, num_inference_steps=20, guidance_scale=7.0, generator=generator,
                           output_type="np").images[0]
            found = detector.detect((picture * 255).round().astype(np.uint8))["position"]
            table[(position, found)] += 1
    print("wanted -> found:", ", ".join(positions))
    for position in positions:
        print(f"  {position:>6}: " + " ".join(f"{table[(position, q)]:3d}" for q in positions))
    right = sum(table[(p, p)] for p in positions)
    print(f"right place: {right}/{sum(table.values())}")


if __name__ == "__main__":
    main()
