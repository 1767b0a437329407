"""Crash safety: start `cyberimage serve` (real engine, built-in tiny model),
submit jobs, SIGKILL it at a random moment, restart it, repeat. Then let it
finish and check:

- no accepted job is lost: each ends `completed`, or `failed` with a reason
  (only after its retry budget: "interrupted N times");
- every completed job has all its images, every image row has its file and
  thumbnail, and no image file lacks a row (after the start-up reconcile);
- SQLite's `PRAGMA integrity_check` says "ok" and `cyberimage doctor` agrees.

usage: python tests/reliability/crash_restart.py path/to/cyberimage [--trials N] [--seed S]
Prints its figures (trials, jobs, kills mid-generation) and "N passed, M failed".
"""

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import check, finish, isolated_env, start_server  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("binary", nargs="?", default="target/debug/cyberimage")
parser.add_argument("--trials", type=int, default=20)
parser.add_argument("--seed", type=int, default=int(time.time()))
args = parser.parse_args()
rng = random.Random(args.seed)




def main():
    data = tempfile.mkdtemp(prefix="cyberimage-crash-")
    env = isolated_env(data, RUST_LOG="warn",
                       # Short heartbeats so a restarted server re-queues quickly.
                       CYBERIMAGE_QUEUE__HEARTBEAT_INTERVAL_MS="200", CYBERIMAGE_QUEUE__STALE_AFTER_SECS="1",
                       CYBERIMAGE_QUEUE__MAX_ATTEMPTS="3", CYBERIMAGE_QUEUE__POLL_INTERVAL_MS="100")
    accepted = []
    kills_mid_generation = 0
    print(f"seed {args.seed}, {args.trials} trials")
    for trial in range(args.trials):
        proc, base = start_server(args.binary, data, env=env)
        for _ in range(rng.randint(1, 3)):
            steps = rng.choice([4, 10, 25])
            r = requests.post(f"{base}/api/generate", json={
                "prompt": f"crash trial {trial}", "model": "tiny-sd15-random",
                "settings": {"num_inference_steps": steps, "num_images": rng.randint(1, 2),
                             "width": rng.choice([64, 128]), "height": 64, "seed": trial}})
            if r.status_code == 202:
                accepted.append(r.json()["job_id"])
        time.sleep(rng.uniform(0.0, 1.5))
        try:
            q = requests.get(f"{base}/api/queue", timeout=2).json()
            kills_mid_generation += q["processing"] > 0
        except requests.RequestException:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # A last run, left alone until the queue drains.
    proc, base = start_server(args.binary, data, env=env)
    try:
        deadline = time.time() + 600
        statuses = {}
        while time.time() < deadline:
            statuses = {j: requests.get(f"{base}/api/status/{j}").json() for j in accepted}
            if all(s["status"] in ("completed", "failed") for s in statuses.values()):
                break
            time.sleep(0.5)
        print(f"figures: trials={args.trials} accepted_jobs={len(accepted)} kills_mid_generation={kills_mid_generation}")
        lost = [j for j, s in statuses.items() if s.get("status") not in ("completed", "failed")]
        check("no accepted job lost (each completed or failed)", not lost, lost)
        bad_failures = [s for s in statuses.values() if s["status"] == "failed" and "interrupted" not in (s.get("error") or "")]
        check("failures only after the retry budget, with a reason", not bad_failures, bad_failures)
        incomplete = [j for j, s in statuses.items() if s["status"] == "completed" and len(s["images"]) == 0]
        check("completed jobs have their images", not incomplete, incomplete)
        check("most jobs completed despite the kills",
              sum(s["status"] == "completed" for s in statuses.values()) >= len(accepted) * 0.8,
              [s["status"] for s in statuses.values()])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    db = sqlite3.connect(Path(data, "cyberimage.db"))
    rows = {r[0] for r in db.execute("SELECT id FROM images")}
    per_job = dict(db.execute("SELECT job_id, COUNT(*) FROM images GROUP BY job_id"))
    expected = dict(db.execute("SELECT id, json_extract(spec, '$.num_images') FROM jobs WHERE status = 'completed'"))
    check("each completed job has exactly its images", all(per_job.get(j) == n for j, n in expected.items()),
          {j: (per_job.get(j), n) for j, n in expected.items() if per_job.get(j) != n})
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    check("SQLite integrity_check is ok", integrity == "ok", integrity)
    files = {p.stem for p in Path(data, "images").glob("*.png")}
    thumbs = {p.stem for p in Path(data, "thumbnails").glob("*.png")}
    check("no row without its file and thumbnail", rows <= files and rows <= thumbs, (rows - files, rows - thumbs))
    check("no file without its row", files <= rows, files - rows)
    doctor = subprocess.run([args.binary, "doctor", "--data-dir", data], capture_output=True, text=True, env=env)
    check("cyberimage doctor finds nothing to repair", doctor.returncode == 0 and "repaired 0" in doctor.stdout,
          doctor.stdout + doctor.stderr)
    finish()


main()
