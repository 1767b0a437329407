"""The container files (Dockerfile, Dockerfile.cuda, compose.yaml) against
the real binary.

No container can be built or run on this project's machines: no registry
is reachable for the base images, and the sandbox refuses the runtime's
setrlimit (podman 4.3 / crun: "setrlimit RLIMIT_NOFILE: Operation not
permitted"). So this test does what can be done without one, and says so:

- the files' structure: a non-root uid 1000, the /data volume, port 5050,
  a HEALTHCHECK on /health, the CMD, the compose services and profiles;
- the image's command and environment run here as a STAND-IN for the
  container: `cyberimage serve --bind 0.0.0.0:<port>` with
  CYBERIMAGE_DATA_DIR and HF_HOME as the image sets them: it serves, keeps
  its data in that folder, answers the health check's request with
  "healthy", and prints the loud warning when no API key is set (and not
  when one is);
- when a container engine does work (`podman` or `docker` that can run a
  container), it says so and tells how to run the real check by hand.

usage: python tests/ecosystem/test_container_files.py path/to/cyberimage
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import check, finish, isolated_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/debug/cyberimage"


def final_stage(dockerfile: Path):
    """The instructions of the last FROM stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages, current = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            current = []
            stages.append(current)
        if current is not None:
            current.append((word.upper(), rest.strip()))
    return stages[-1], len(stages)


def instruction(stage, name):
    return [rest for word, rest in stage if word == name]


def check_dockerfile(path: Path):
    stage, count = final_stage(path)
    label = path.name
    check(f"{label}: multi-stage (build, then a slim runtime)", count >= 2, count)
    check(f"{label}: runs as uid 1000, not root", instruction(stage, "USER") == ["1000:1000"], instruction(stage, "USER"))
    check(f"{label}: /data is a volume", instruction(stage, "VOLUME") == ["/data"])
    check(f"{label}: exposes 5050", instruction(stage, "EXPOSE") == ["5050"])
    health = " ".join(instruction(stage, "HEALTHCHECK"))
    check(f"{label}: HEALTHCHECK asks /health for 'healthy'",
          "http://127.0.0.1:5050/health" in health and "healthy" in health, health)
    env = " ".join(instruction(stage, "ENV"))
    check(f"{label}: data and the Hugging Face cache in /data",
          "CYBERIMAGE_DATA_DIR=/data" in env and "HF_HOME=/data/huggingface" in env, env)
    entry = instruction(stage, "ENTRYPOINT")
    cmd = instruction(stage, "CMD")
    check(f"{label}: starts `cyberimage serve --bind 0.0.0.0:5050`",
          entry == ['["cyberimage"]'] and cmd == ['["serve", "--bind", "0.0.0.0:5050"]'], (entry, cmd))


def check_compose(path: Path):
    compose = yaml.safe_load(path.read_text())
    services = compose["services"]
    main = services["cyberimage"]
    check("compose: the server publishes 5050 on 127.0.0.1 only", main["ports"] == ["127.0.0.1:5050:5050"], main["ports"])
    check("compose: data in a named volume at /data", "cyberimage-data:/data" in main["volumes"])
    check("compose: PostgreSQL and workers are an optional profile",
          services["postgres"]["profiles"] == ["cluster"] and services["worker"]["profiles"] == ["cluster"]
          and "profiles" not in main)
    check("compose: workers run `cyberimage worker`", services["worker"]["command"] == ["worker"])
    check("compose: the server does not need the cluster profile",
          main["depends_on"]["postgres"].get("required") is False)


def serve_as_the_image_does(data_root: Path, with_key: bool):
    """The image's command and environment, outside a container."""
    data = data_root / ("data-keyed" if with_key else "data")
    data.mkdir()
    env = isolated_env(str(data), CYBERIMAGE_DATA_DIR=str(data), HF_HOME=str(data / "huggingface"), RUST_LOG="info")
    if with_key:
        digest = subprocess.run([BINARY, "hash-key", "container-key"], capture_output=True, text=True,
                                check=True).stdout.strip().split()[-1]
        env["CYBERIMAGE_AUTH__API_KEY_SHA256"] = f'["{digest}"]'
    proc = subprocess.Popen([BINARY, "serve", "--bind", "0.0.0.0:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"listening on http://[^:]+:(\d+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r} {proc.stderr.read()[-500:]}")
    port = match.group(1)
    # The health check's own request, as curl in the image makes it.
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read().decode()
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return body, err, data


def check_runtime():
    with tempfile.TemporaryDirectory() as tmp:
        body, err, data = serve_as_the_image_does(Path(tmp), with_key=False)
        check("stand-in for the container: the health check's request answers 'healthy'", "healthy" in body, body)
        check("stand-in for the container: the database lives in CYBERIMAGE_DATA_DIR",
              (data / "cyberimage.db").exists(), sorted(p.name for p in data.iterdir()))
        check("stand-in for the container: 0.0.0.0 without a key prints the loud warning",
              "NON-LOOPBACK ADDRESS WITHOUT AN API KEY" in err, err[-400:])
        _, err, _ = serve_as_the_image_does(Path(tmp), with_key=True)
        check("stand-in for the container: with a key there is no such warning",
              "WITHOUT AN API KEY" not in err, err[-400:])


def container_engine_note():
    """Whether a container can run here at all: podman from a folder
    (`--rootfs`) holding a static busybox, which needs no registry."""
    engine = shutil.which("podman")
    busybox = shutil.which("busybox")
    if not engine or not busybox:
        print("SKIPPED building and running the image: no podman (or no static busybox to probe it with), "
              "and no registry for the base images")
        return
    with tempfile.TemporaryDirectory() as rootfs:
        shutil.copy(busybox, Path(rootfs) / "busybox")
        try:
            out = subprocess.run([engine, "run", "--rm", "--rootfs", rootfs, "/busybox", "true"],
                                 capture_output=True, text=True, timeout=60)
            reason = (out.stderr or out.stdout).strip().splitlines()[-1:] if out.returncode else None
        except subprocess.TimeoutExpired:
            reason = ["timed out"]
    if reason is None:
        print("NOTE podman runs containers here, but the image is not built: its base images "
              f"need a registry. By hand: podman build -t cyberimage {shlex.quote(str(ROOT))}")
    else:
        print(f"SKIPPED building and running the image: podman cannot run a container here ({reason[0]}), "
              "and no registry is reachable for the base images")


check_dockerfile(ROOT / "Dockerfile")
check_dockerfile(ROOT / "Dockerfile.cuda")
check_compose(ROOT / "compose.yaml")
check_runtime()
container_engine_note()
finish()
