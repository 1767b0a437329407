"""Scale-out on a real PostgreSQL: one `serve --no-worker` front, three
`cyberimage worker` processes sharing the database and the data dir, 30
jobs on the real engine (built-in tiny model). One worker is `kill -9`ed
while it runs a job. Every job must complete exactly once: one image row
per job, no job lost, the interrupted job re-run by another worker (its
attempt count shows it), and every image row's file present.

Run under scripts/with-postgres.sh (it sets POSTGRES_TEST_URL).
usage: python tests/scale/test_workers_postgres.py path/to/cyberimage
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import check, finish, isolated_env  # noqa: E402

BINARY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/cyberimage")
ADMIN_URL = os.environ["POSTGRES_TEST_URL"]
JOBS = 30


def psql(url, sql):
    out = subprocess.run(["psql", url, "-At", "-F", "|", "-c", sql], capture_output=True, text=True, check=True)
    return [line.split("|") for line in out.stdout.strip().splitlines() if line]


def main():
    name = "scale_" + uuid.uuid4().hex
    psql(ADMIN_URL, f"CREATE DATABASE {name}")
    db_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    data = tempfile.mkdtemp(prefix="cyberimage-scale-")
    env = isolated_env(
        data,
        RUST_LOG="warn",
        CYBERIMAGE_DATABASE_URL=db_url,
        CYBERIMAGE_QUEUE__HEARTBEAT_INTERVAL_MS="300",
        CYBERIMAGE_QUEUE__STALE_AFTER_SECS="3",
        CYBERIMAGE_QUEUE__POLL_INTERVAL_MS="100",
        CYBERIMAGE_QUEUE__MAX_PENDING="100",
    )
    procs = []
    try:
        front = subprocess.Popen([BINARY, "serve", "--no-worker", "--bind", "127.0.0.1:0", "--data-dir", data],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        procs.append(front)
        base = re.search(r"listening on (http://\S+)", front.stdout.readline()).group(1)
        workers = []
        for _ in range(3):
            w = subprocess.Popen([BINARY, "worker", "--data-dir", data], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=env)
            assert "worker ready" in w.stdout.readline()
            workers.append(w)
            procs.append(w)
        check("front answers /ready without local workers", requests.get(f"{base}/ready").json()["workers"]["spawned"] == 0)

        ids = []
        for i in range(JOBS):
            r = requests.post(f"{base}/api/generate", json={
                "prompt": f"scale job {i}", "model": "tiny-sd15-random",
                "settings": {"num_inference_steps": 25, "width": 128, "height": 128, "seed": i}})
            assert r.status_code == 202, r.text
            ids.append(r.json()["job_id"])

        # No worker can run FLUX here: its job must wait for one that can,
        # not be claimed and failed.
        flux = requests.post(f"{base}/api/generate", json={"prompt": "needs flux weights", "model": "flux-1"}).json()["job_id"]

        # Kill -9 a worker while it runs a job.
        victim, victim_job = None, None
        deadline = time.time() + 120
        while victim is None and time.time() < deadline:
            for w in workers:
                rows = psql(db_url, f"SELECT id FROM jobs WHERE status = 'processing' AND step > 0 AND worker LIKE '%:{w.pid}:%'")
                if rows:
                    victim, victim_job = w, rows[0][0]
                    break
            time.sleep(0.05)
        check("caught a worker mid-job", victim is not None)
        victim.send_signal(signal.SIGKILL)
        victim.wait()

        statuses = {}
        deadline = time.time() + 300
        while time.time() < deadline:
            statuses = {i: requests.get(f"{base}/api/status/{i}").json() for i in ids}
            if all(s["status"] in ("completed", "failed", "cancelled") for s in statuses.values()):
                break
            time.sleep(0.5)
        done = [i for i, s in statuses.items() if s["status"] == "completed"]
        check(f"all {JOBS} jobs completed", len(done) == JOBS,
              {i: (s["status"], s.get("error")) for i, s in statuses.items() if s["status"] != "completed"})
        per_job = psql(db_url, "SELECT job_id, COUNT(*) FROM images GROUP BY job_id")
        check("exactly one image row per job", len(per_job) == JOBS and all(int(n) == 1 for _, n in per_job), per_job)
        attempts = psql(db_url, f"SELECT attempts, worker FROM jobs WHERE id = '{victim_job}'")
        check("the interrupted job was re-run by another worker",
              int(attempts[0][0]) == 2 and f":{victim.pid}:" not in attempts[0][1], attempts)
        others = psql(db_url, f"SELECT COUNT(*) FROM jobs WHERE attempts > 1 AND id <> '{victim_job}'")
        check("no other job ran twice", int(others[0][0]) == 0, others)
        files = {p.stem for p in Path(data, "images").glob("*.png")}
        rows = {r[0] for r in psql(db_url, "SELECT id FROM images")}
        check("every image row has its file", rows <= files, rows - files)
        flux_status = requests.get(f"{base}/api/status/{flux}").json()["status"]
        check("a job no worker can run stays queued for one that can", flux_status == "pending", flux_status)
        served = [requests.get(f"{base}{statuses[i]['images'][0]['url']}").status_code for i in ids[:3]]
        check("the front serves images the workers wrote", served == [200, 200, 200], served)
        workers_seen = psql(db_url, "SELECT COUNT(DISTINCT split_part(worker, ':', 2)) FROM jobs")
        check("the work was shared by several worker processes", int(workers_seen[0][0]) >= 2, workers_seen)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    finish()


main()
