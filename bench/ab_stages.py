"""Two or more builds of `bench_stages` (or its allocator variants) on the
same weights, interleaved round by round so that the machine's drift hits
every build alike: for a refactor "before and after within noise", or for
comparing global allocators.

Each round runs every build once (its first repeat is a warm-up and
dropped); the report gives, per stage and build, the median seconds, the
spread (min-max) and the median minor page faults per run, and each
build's median over the first build's (the anchor, measured in the same
run).

usage:
  python bench/ab_stages.py --model /tmp/cyberimage-bench-sd15 \\
      --build before=/tmp/bench_stages_old --build after=target/release/examples/bench_stages \\
      [--rounds 3] [--repeats 2] [--size 512] [--large-vae 1024] [--bf16] [--out bench/results/ab.json]

The model folder is the full-size random SD 1.5 that engine_vs_diffusers.py
writes (run it once first); a folder holding only `vae/` times the VAE alone.
"""

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from common import git_rev, machine

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--build", action="append", required=True, help="NAME=EXECUTABLE; the first is the anchor")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--repeats", type=int, default=2)
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--large-vae", type=int, default=0)
ap.add_argument("--bf16", action="store_true")
ap.add_argument("--out")
args = ap.parse_args()

builds = [b.split("=", 1) for b in args.build]
runs = {name: {} for name, _ in builds}
for round_ in range(args.rounds):
    for name, exe in builds:
        argv = [exe, args.model, str(args.size), str(args.repeats + 1)]
        if args.large_vae:
            argv.append(str(args.large_vae))
        if args.bf16:
            argv.append("--bf16")
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        for line in done.stdout.splitlines():
            rec = json.loads(line)
            if "seconds" not in rec:  # the UNet's load time
                continue
            stage = runs[name].setdefault(rec["stage"], {"seconds": [], "minor_faults": [], "peak_rss_mib": []})
            stage["seconds"] += rec["seconds"][1:]
            # Builds from before the fault counter print none.
            stage["minor_faults"] += rec.get("minor_faults", [])[1:]
            stage["peak_rss_mib"].append(rec["peak_rss_mib"])
        print(f"round {round_ + 1}/{args.rounds}: {name} done", flush=True)

anchor = builds[0][0]
report = {}
for name, _ in builds:
    for stage, r in runs[name].items():
        median = statistics.median(r["seconds"])
        report.setdefault(stage, {})[name] = {
            "median_s": median,
            "min_s": min(r["seconds"]),
            "max_s": max(r["seconds"]),
            "median_minor_faults": statistics.median(r["minor_faults"]) if r["minor_faults"] else None,
            "peak_rss_mib": max(r["peak_rss_mib"]),
            "ratio_to_" + anchor: median / statistics.median(runs[anchor][stage]["seconds"]),
            "runs_s": r["seconds"],
        }
result = {
    "commit": git_rev(), "machine": machine(), "builds": dict(builds), "size": args.size,
    "large_vae": args.large_vae, "rounds": args.rounds, "repeats": args.repeats, "bf16": args.bf16,
    "stages": report,
    "command": "python bench/ab_stages.py " + " ".join(f"--build {n}=EXE" for n, _ in builds)
    + f" --rounds {args.rounds} --repeats {args.repeats} --size {args.size}"
    + (f" --large-vae {args.large_vae}" if args.large_vae else "") + (" --bf16" if args.bf16 else ""),
}
for stage, by_build in report.items():
    print(stage)
    for name, r in by_build.items():
        faults = "n/a" if r["median_minor_faults"] is None else f"{r['median_minor_faults']:.0f}"
        print(f"  {name:>10}: {r['median_s']:.3f} s ({r['min_s']:.3f}-{r['max_s']:.3f}), "
              f"x{r['ratio_to_' + anchor]:.3f}, faults {faults}, peak {r['peak_rss_mib']:.0f} MiB")
if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
