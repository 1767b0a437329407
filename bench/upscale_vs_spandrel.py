"""Upscalers, CyberImage against spandrel + PyTorch (CPU) on IDENTICAL
weights: the full-size networks people download, with random weights made
here from spandrel's own classes (Real-ESRGAN x4plus's RRDBNet: 64
filters, 23 blocks; realesr-general-x4v3's Compact: 64 features, 32
convolutions); and the built-in trained RDN (UpscalerJS esrgan-medium x4),
ours only: spandrel has no RDN. One SIZE² picture through the whole network (one tile), f32,
both engines on every core. Median of REPEATS after a warm-up.

usage (in the fixtures venv with spandrel: pip install spandrel; builds the example):
  python bench/upscale_vs_spandrel.py [--size 128] [--repeats 5] [--out bench/results/upscale.json]
"""

import argparse
import json
import os
from pathlib import Path

import spandrel
import torch
from common import ROOT, build, git_rev, machine, median, run_json_lines, timed
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=128)
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--dir", default="/tmp/cyberimage-bench-upscalers")
ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "upscale.json"))
args = ap.parse_args()
torch.set_num_threads(os.cpu_count() or 2)
torch.manual_seed(0)
DIR = Path(args.dir)
NETS = {
    "RealESRGAN_x4plus (RRDBNet 64nf 23nb)": ("rrdb-x4plus.safetensors",
                                             lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)),
    "realesr-general-x4v3 (Compact 64nf 32nc)": ("compact-general-x4v3.safetensors",
                                                 lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4)),
}
BUILTIN = ROOT / "fixtures" / "trained" / "upscalers" / "upscalerjs-esrgan-medium-x4.safetensors"


def write_weights():
    DIR.mkdir(parents=True, exist_ok=True)
    for _, (file, make) in NETS.items():
        if not (DIR / file).exists():
            model = make()
            state = {k: (torch.randn(v.shape) * 0.02).contiguous() for k, v in model.state_dict().items()}
            save_file(state, DIR / file)


def spandrel_side():
    out = {}
    x = torch.rand(1, 3, args.size, args.size)
    for name, (file, _) in NETS.items():
        model = spandrel.ModelLoader().load_from_file(DIR / file).model.eval()
        with torch.inference_mode():
            f = lambda: model(x)  # noqa: E731
            f()
            out[name] = timed(f, args.repeats)
    return out


def main():
    write_weights()
    exe = build("cyberimage-engine", "bench_upscale")
    theirs = spandrel_side()
    files = [DIR / f for f, _ in NETS.values()] + [BUILTIN]
    ours = run_json_lines(exe, args.size, args.repeats + 1, *files)
    rows = {}
    for (name, _), rec in zip(list(NETS.items()) + [("upscalerjs-esrgan-medium-x4 (RDN, built in)", None)], ours):
        row = {"ours_s": median(rec["seconds"][1:]), "ours_runs": rec["seconds"][1:], "peak_rss_mib": rec["peak_rss_mib"]}
        if name in theirs:
            row.update(spandrel_s=median(theirs[name]), spandrel_runs=theirs[name],
                       ratio_ours_over_spandrel=row["ours_s"] / median(theirs[name]))
        rows[name] = row
    result = {"command": f"python bench/upscale_vs_spandrel.py --size {args.size} --repeats {args.repeats}",
              "commit": git_rev(), "machine": machine(), "torch": torch.__version__,
              "spandrel": spandrel.__version__, "threads": torch.get_num_threads(), "size": args.size, "nets": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


main()
