"""What a LoRA costs at run time, on the FLUX transformer at full width
(FLUX.1-dev's 24 heads of 128, T5 width 4096, 512 text tokens, 1 double +
1 single block: the folder bench/flux_vs_diffusers.py writes, made here if
missing). A random rank-R LoRA on every linear of the transformer, in
diffusers' (PEFT) names, at weight 0.8.

- ours: one forward without and with the LoRA, on f32 weights (the LoRA
  merged into them: no run-time cost, a merge time) and on GGUF Q8_0 /
  Q4_K quantized from the same weights (the LoRA runs as a low-rank branch
  beside each quantized product); the times to apply and remove it;
- the anchor, diffusers + PEFT on the same weights in f32: without, with
  the LoRA loaded (unfused: PEFT's extra low-rank products, the way
  diffusers runs a LoRA until `fuse_lora`), and fused.

usage (in the fixtures venv, see fixtures/README.md; builds the example):
  python bench/lora_cost.py [--rank 16] [--size 512] [--repeats 3]
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from common import FLUX_BLOCKS_CONFIG, ROOT, build, git_rev, machine, run_json_lines, timed
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file

ap = argparse.ArgumentParser()
ap.add_argument("--rank", type=int, default=16)
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--blocks-dir", default="/tmp/cyberimage-bench-flux-blocks")
ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "lora.json"))
args = ap.parse_args()
torch.set_num_threads(os.cpu_count() or 2)
torch.manual_seed(0)
FOLDER = Path(args.blocks_dir) / "transformer"
STRENGTH = 0.8


def inputs(size):
    tokens = (size // 16) ** 2
    return dict(hidden_states=torch.randn(1, tokens, 64), encoder_hidden_states=torch.randn(1, 512, 4096),
                pooled_projections=torch.randn(1, 768), timestep=torch.tensor([0.75]),
                guidance=torch.tensor([3.5]), txt_ids=torch.zeros(512, 3), img_ids=torch.zeros(tokens, 3))


def write_lora(model, path):
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(
                (args.rank, module.in_features), generator=g) / module.in_features ** 0.5
            tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(
                (module.out_features, args.rank), generator=g) * 0.01
    save_file(tensors, str(path))
    return tensors


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def diffusers_side(lora):
    results = {}
    with torch.no_grad():
        model = FluxTransformer2DModel.from_pretrained(FOLDER, torch_dtype=torch.float32).eval()
        kw = inputs(args.size)
        f = lambda: model(**kw).sample  # noqa: E731
        f()
        results["without"] = timed(f, args.repeats)
        start = time.perf_counter()
        model.load_lora_adapter(lora, prefix="transformer", adapter_name="bench")
        model.set_adapters(["bench"], weights=[STRENGTH])
        results["load"] = time.perf_counter() - start
        f()
        results["unfused"] = timed(f, args.repeats)
        start = time.perf_counter()
        model.fuse_lora(lora_scale=1.0, adapter_names=["bench"])
        results["fuse"] = time.perf_counter() - start
        f()
        results["fused"] = timed(f, args.repeats)
    return results


def main():
    if not (FOLDER / "config.json").exists():
        print("writing the 1+1-block full-width FLUX transformer to", FOLDER, flush=True)
        FluxTransformer2DModel(**FLUX_BLOCKS_CONFIG).save_pretrained(FOLDER, safe_serialization=True)
    lora_file = Path(args.blocks_dir) / f"lora-rank{args.rank}.safetensors"
    model = FluxTransformer2DModel.from_pretrained(FOLDER, torch_dtype=torch.float32)
    lora = write_lora(model, lora_file)
    del model
    exe = build("cyberimage-engine", "bench_flux")
    ours = {}
    for rec in run_json_lines(exe, "lora", FOLDER, lora_file, args.size, args.repeats):
        ours[rec["stage"]] = rec["seconds"][1:] if len(rec["seconds"]) > 1 else rec["seconds"]
    theirs = diffusers_side({k: v.clone() for k, v in lora.items()})
    result = {"commit": git_rev(), "machine": machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "rank": args.rank, "size": args.size, "repeats": args.repeats,
              "strength": STRENGTH, "lora_bytes": lora_file.stat().st_size,
              "command": f"python bench/lora_cost.py --rank {args.rank} --size {args.size} --repeats {args.repeats}",
              "ours": ours, "diffusers_f32": theirs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    for variant in ("f32", "gguf_q8_0", "gguf_q4_k"):
        a = median(ours[f"lora_{args.size}_{variant}_without"])
        b = median(ours[f"lora_{args.size}_{variant}_with"])
        print(f"ours {variant}: {a:.3f} s without, {b:.3f} s with ({b / a:.3f}x)")
    d = theirs
    print(f"diffusers f32: {median(d['without']):.3f} s without, {median(d['unfused']):.3f} unfused, "
          f"{median(d['fused']):.3f} fused")


main()
