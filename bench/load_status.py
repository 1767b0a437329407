"""Server overhead under load: status polling while a generation runs.

Starts the release binary on loopback, keeps the engine busy with a long
generation (the built-in tiny model, 8 images at 1024x1024, 999 steps), and drives wrk
against, in one run:

- GET /health                        (the anchor: the cheapest route),
- GET /api/status/{job_id}           (REST status of the running job),
- POST /api/mcp context.image_generation.status (the seed's JSON-RPC).

Each target is driven at several concurrency levels (wrk connections, each
sending its next request as soon as the last one is answered): latency
under a closed-loop load is mostly queueing, so one level alone says
little. Reports requests/s and p50/p99 latency per target and level and
the ratio to the anchor, as JSON (and BENCHMARKS.md quotes it).

With `--idle-priority` the server runs with `[engine] idle_priority = true`
(the engine's threads under SCHED_IDLE instead of niced) and the results go
to bench/results/load_idle.json.

usage: python bench/load_status.py [--binary target/release/cyberimage] [--seconds 10]
       [--connections 4 8 16 32] [--idle-priority] [--out bench/results/load.json]
Needs `wrk` (apt-get install wrk).
"""

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from common import git_rev, machine

ROOT = Path(__file__).resolve().parents[1]
ap = argparse.ArgumentParser()
ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "cyberimage"))
ap.add_argument("--seconds", type=int, default=10)
ap.add_argument("--connections", type=int, nargs="+", default=[4, 8, 16, 32])
ap.add_argument("--idle-priority", action="store_true")
ap.add_argument("--out")
args = ap.parse_args()
if args.out is None:
    args.out = str(ROOT / "bench" / "results" / ("load_idle.json" if args.idle_priority else "load.json"))

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(connections, url, script=None):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{args.seconds}s", "--latency", url]
    if script:
        cmd[1:1] = ["-s", script]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    print(out, flush=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": rps, "p50_ms": p50, "p99_ms": p99, "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def main():
    data = tempfile.mkdtemp(prefix="cyberimage-load-")
    proc = subprocess.Popen([args.binary, "serve", "--bind", "127.0.0.1:0", "--data-dir", data],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            # A step limit above the default (the tiny model allows 999: its
                            # 1000 training timesteps), so one job outlasts every level.
                            env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin",
                                 "CYBERIMAGE_LIMITS__MAX_STEPS": "1000",
                                 "CYBERIMAGE_ENGINE__IDLE_PRIORITY": str(args.idle_priority).lower()})
    base = re.search(r"listening on (http://\S+)", proc.stdout.readline()).group(1)
    try:
        job = requests.post(f"{base}/api/generate", json={
            "prompt": "keep the engine busy", "model": "tiny-sd15-random",
            "settings": {"num_inference_steps": 999, "width": 1024, "height": 1024, "num_images": 8}}).json()
        job_id = job["job_id"]
        while (status := requests.get(f"{base}/api/status/{job_id}").json())["status"] != "processing":
            if status["status"] in ("failed", "cancelled", "completed"):
                raise SystemExit(f"the generation to load against ended before the test: {status}")
            time.sleep(0.05)
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "context.image_generation.status",
                           "params": {"job_id": job_id}})
        script = Path(data) / "rpc.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f"wrk.body = {json.dumps(body)}\n")
        levels = []
        for connections in args.connections:
            levels.append({"connections": connections, "results": {
                "health_anchor": wrk(connections, f"{base}/health"),
                "rest_status": wrk(connections, f"{base}/api/status/{job_id}"),
                "jsonrpc_status": wrk(connections, f"{base}/api/mcp", str(script)),
            }})
        still_running = requests.get(f"{base}/api/status/{job_id}").json()["status"] == "processing"
        requests.post(f"{base}/api/cancel/{job_id}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    for level in levels:
        results = level["results"]
        anchor = results["health_anchor"]["requests_per_s"]
        for r in results.values():
            r["ratio_to_health"] = r["requests_per_s"] / anchor
    connections = " ".join(map(str, args.connections))
    report = {"commit": git_rev(), "machine": machine(),
              "idle_priority": args.idle_priority,
              "command": f"python bench/load_status.py --seconds {args.seconds} --connections {connections}"
                         + (" --idle-priority" if args.idle_priority else ""),
              "generation_running_throughout": still_running, "levels": levels}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


main()
