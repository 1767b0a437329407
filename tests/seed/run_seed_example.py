"""Runs the Python example of the seed contract (MCP_INTEGRATION.md) against a
live `cyberimage serve` on the address the example hard-codes
(localhost:5050), twice:

1. byte for byte as the document prints it. Its models (flux-1 by default,
   then sd-3.5) have no weights on this machine and no pipeline yet, so both
   jobs must FAIL with a reason: the example prints "Generation failed" and
   never an image URL. No placeholder image is ever handed out.
2. unchanged except for the model key: `model="sd-3.5"` becomes the built-in
   random-weight test model. That job must succeed, and the URL the example
   prints must serve a real PNG made by the diffusion pipeline.

usage: python tests/seed/run_seed_example.py path/to/cyberimage
"""

import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import isolated_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seed" / "MCP_INTEGRATION.md"


def example_code() -> str:
    text = SEED.read_text()
    start = text.index("### Python Example (Basic)")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, "the seed's Python example was not found"
    return block.group(1)


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("server did not start listening")


def run_example(code: str, data: str) -> subprocess.CompletedProcess:
    script = Path(data) / "seed_example.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)


def main() -> int:
    binary = sys.argv[1]
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 5050)) == 0:
            print("port 5050 is taken; the seed example hard-codes it", file=sys.stderr)
            return 1
    code = example_code()
    tiny = code.replace('model="sd-3.5"', 'model="tiny-sd15-random"')
    assert tiny != code, "the example no longer names sd-3.5"
    others = {name: code.replace('model="sd-3.5"', f'model="{key}"')
              for name, key in (("SDXL", "tiny-sdxl-random"), ("SD 3.5", "tiny-sd3-random"),
                                        ("FLUX", "tiny-flux-random"))}
    with tempfile.TemporaryDirectory() as data:
        # Its own HOME and HF_HOME: a machine whose Hugging Face cache holds
        # SD 3.5 must not turn the honest failure into a real generation.
        env = isolated_env(data)
        server = subprocess.Popen(
            [binary, "serve", "--bind", "127.0.0.1:5050", "--data-dir", data],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(5050, server)
            unchanged = run_example(code, data)
            with_tiny = run_example(tiny, data)
            urls = re.findall(r"Success! Image available at: (\S+)", with_tiny.stdout)
            png = urllib.request.urlopen(urls[0]).read() if urls else b""
            other_runs = {}
            for name, variant in others.items():
                run = run_example(variant, data)
                found = re.findall(r"Success! Image available at: (\S+)", run.stdout)
                other_runs[name] = (run, found, urllib.request.urlopen(found[0]).read() if found else b"")
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(unchanged.stdout)
    print(with_tiny.stdout)
    for run, _, _ in other_runs.values():
        print(run.stdout)
    out = unchanged.stdout
    checks = {
        "unchanged: exits cleanly": unchanged.returncode == 0,
        "unchanged: default model is flux-1": "Using system default model: flux-1" in out,
        "unchanged: two jobs were submitted": len(re.findall(r"Job submitted with ID: [0-9a-f-]{36}", out)) == 2,
        "unchanged: both jobs end failed": out.count("Status: failed") == 2 and out.count("Generation failed") == 2,
        "unchanged: no image is claimed": "Image available at" not in out and "Success!" not in out,
        "no request errors": "Error:" not in out + with_tiny.stdout and "Error checking status" not in out + with_tiny.stdout,
        "tiny model: exits cleanly": with_tiny.returncode == 0,
        "tiny model: the job completes": "Status: completed" in with_tiny.stdout and len(urls) == 1,
        "tiny model: the URL serves a PNG": png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000,
        **{f"tiny {name} model: the job completes": run.returncode == 0 and "Status: completed" in run.stdout
           and len(found) == 1 for name, (run, found, _) in other_runs.items()},
        **{f"tiny {name} model: the URL serves a PNG": png_bytes[:8] == b"\x89PNG\r\n\x1a\n" and len(png_bytes) > 1000
           for name, (_, _, png_bytes) in other_runs.items()},
    }
    for name, ok in checks.items():
        print(f"{'ok' if ok else 'FAILED'}: {name}")
    for run in (unchanged, with_tiny, *(r for r, _, _ in other_runs.values())):
        if run.stderr:
            print(run.stderr, file=sys.stderr)
    passed = sum(checks.values())
    print(f"{passed} passed, {len(checks) - passed} failed")
    return 0 if passed == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
