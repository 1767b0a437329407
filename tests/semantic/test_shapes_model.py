"""Does a prompt's meaning reach the picture? The built-in trained model
`shapes-64` is asked, through a real `cyberimage serve` and its REST API,
for scenes it never saw in training (colour, shape and background triples
held out of its dataset, training/shapes.py), and an independent detector
scores every picture: the shape's colour, its class (nearest template
rendered by the dataset's renderer, never learnt from the model's outputs)
and its position. Then:

- accuracy at guidance 7 stays at or above the regression floors (FLOORS,
  a few points under what the committed weights measured), and is reported
  against issue 20's targets (colour 90 %, shape 80 %, position 80 %) as
  MET or NOT MET (the committed model meets all three);
- guidance matters: the mean accuracy at guidance 7 beats guidance 1;
- a negative prompt moves the picture away from what it names: the colour
  the model draws most often for a prompt that names none is drawn less
  often when the negative prompt names it (same seeds);
- the default model of this fresh server is shapes-64.

It prints the figures, and writes a contact sheet of the guidance-7
pictures to tests/semantic/artifacts/.

usage: python tests/semantic/test_shapes_model.py path/to/cyberimage
"""

import io
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "compat"))
sys.path.insert(0, str(ROOT / "training"))
import shapes  # noqa: E402
from cyberimage_client import CyberImageClient  # noqa: E402
from harness import check, finish, start_server  # noqa: E402

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/debug/cyberimage"
MODEL = "shapes-64"
SEEDS = (11, 12)
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# Issue 20's targets at guidance 7, reported, not asserted (see above).
TARGETS = {"colour": 0.90, "shape": 0.80, "position": 0.80}
# Asserted: a few points under what the committed weights measured through
# this test (training.json says which run; README of the model folder gives
# the figures). Raise them when a better model is committed.
FLOORS = {"colour": 0.95, "shape": 0.82, "position": 0.92, "background": 0.95}


def held_out_prompts():
    """One prompt per held-out triple, the positions taken in turn."""
    positions = list(shapes.POSITIONS)
    prompts = []
    for i, (colour, shape, background) in enumerate(shapes.held_out_triples()):
        position = positions[i % len(positions)]
        words = shapes.POSITION_WORDS[position][0]
        prompts.append((f"{shapes.article(colour)} {colour} {shape} {words} on a {background} background",
                        {"colour": colour, "shape": shape, "position": position, "background": background}))
    return prompts


def pictures(client, prompt, guidance, seed, negative=None, count=1):
    job = client.generate(MODEL, prompt, negative_prompt=negative, guidance_scale=guidance, seed=seed,
                          num_images=count)
    done = client.wait(job["job_id"], timeout=300)
    if done["status"] != "completed":
        raise SystemExit(f"job for {prompt!r} ended {done['status']}: {done.get('message')}")
    return [np.asarray(Image.open(io.BytesIO(client.image_bytes(i["id"]))).convert("RGB"))
            for i in done["images"]]


def score(client, detector, guidance, keep=None):
    hits = Counter()
    total = 0
    for prompt, want in held_out_prompts():
        for seed in SEEDS:
            for picture in pictures(client, prompt, guidance, seed):
                found = detector.detect(picture)
                total += 1
                for key in ("colour", "shape", "position", "background"):
                    hits[key] += found[key] == want[key]
                if keep is not None:
                    keep.append(picture)
    return {key: hits[key] / total for key in ("colour", "shape", "position", "background")}, total


def contact_sheet(pictures_, columns=12):
    rows = (len(pictures_) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * 66, rows * 66), (60, 60, 60))
    for i, picture in enumerate(pictures_):
        sheet.paste(Image.fromarray(picture), ((i % columns) * 66 + 1, (i // columns) * 66 + 1))
    return sheet


def main():
    detector = shapes.Detector()
    # The detector first: on the renderer's own pictures it must be right,
    # or its verdicts on the model's pictures mean nothing.
    import random
    rng = random.Random(5)
    scenes = [shapes.random_scene(rng, set()) for _ in range(200)]
    exact = sum(all(detector.detect(shapes.render(s))[k] == s[k] for k in ("colour", "shape", "position"))
                for s in scenes)
    check("the detector reads the renderer's own scenes (>= 98 %)", exact >= 196, f"{exact}/200")

    data = tempfile.mkdtemp(prefix="cyberimage-semantic-")
    proc, base = start_server(BINARY, data)
    try:
        client = CyberImageClient(base)
        _, default = client.models()
        check("a fresh server's default model is the trained shapes-64", default == MODEL, default)

        kept = []
        guided, n = score(client, detector, 7.0, keep=kept)
        unguided, _ = score(client, detector, 1.0)
        print(f"held-out prompts: {n} pictures ({len(held_out_prompts())} prompts x {len(SEEDS)} seeds), "
              f"20 DDIM steps, 64x64")
        for name, figures in (("guidance 7", guided), ("guidance 1", unguided)):
            print(f"  {name}: " + ", ".join(f"{k} {v:.1%}" for k, v in figures.items()))
        ARTIFACTS.mkdir(exist_ok=True)
        contact_sheet(kept).save(ARTIFACTS / "held-out-guidance-7.png")
        for key, target in TARGETS.items():
            verdict = "MET" if guided[key] >= target else "NOT MET"
            print(f"  target {key} >= {target:.0%}: {verdict} ({guided[key]:.1%})")
        for key, floor in FLOORS.items():
            check(f"{key} accuracy at guidance 7 >= its regression floor {floor:.0%}", guided[key] >= floor, guided)
        mean = lambda f: (f["colour"] + f["shape"] + f["position"]) / 3  # noqa: E731
        check("guidance matters: guidance 7 beats guidance 1", mean(guided) > mean(unguided),
              f"{mean(guided):.3f} vs {mean(unguided):.3f}")

        # A prompt naming no colour; 16 seeds; the colour drawn most often
        # goes into the negative prompt.
        prompt = "a circle on a white background"
        seeds = range(100, 116)
        before = [detector.detect(p)["colour"] for s in seeds for p in pictures(client, prompt, 7.0, s)]
        named, count_before = Counter(before).most_common(1)[0]
        after = [detector.detect(p)["colour"]
                 for s in seeds for p in pictures(client, prompt, 7.0, s, negative=f"{named} circle")]
        count_after = after.count(named)
        print(f"negative prompt: {prompt!r} drew {named} {count_before}/16 times; "
              f"with negative '{named} circle', {count_after}/16")
        check("a negative prompt moves the picture away from what it names",
              count_after < count_before and count_after <= count_before // 2, (before, after))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    finish()


if __name__ == "__main__":
    main()
