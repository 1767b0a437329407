"""Runs the Python example of the seed contract (MCP_INTEGRATION.md) against a
live `cyberimage serve` on the address the example hard-codes
(localhost:5050), twice:

1. byte for byte as the document prints it. The default it prints must be
   the server's real default: on this fresh machine, where flux-1 has no
   weights, the first model that can run, the built-in trained `shapes-64`
   (README, "The default model"). That job completes with a real PNG. Its
   second model, sd-3.5, has no weights here, so that job must FAIL with a
   reason: the example prints "Generation failed" and no image URL for it.
   No placeholder image is ever handed out.
2. unchanged except for the model key: `model="sd-3.5"` becomes the built-in
   random-weight test model. That job must succeed, and the URL the example
   prints must serve a real PNG made by the diffusion pipeline.

usage: python tests/seed/run_seed_example.py path/to/cyberimage
"""

import json
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
            server_default = json.load(urllib.request.urlopen("http://127.0.0.1:5050/api/models"))["default"]
            unchanged = run_example(code, data)
            unchanged_urls = re.findall(r"Success! Image available at: (\S+)", unchanged.stdout)
            unchanged_png = urllib.request.urlopen(unchanged_urls[0]).read() if unchanged_urls else b""
            with_tiny = run_example(tiny, data)
            urls = re.findall(r"Success! Image available at: (\S+)", with_tiny.stdout)
            png = urllib.request.urlopen(urls[-1]).read() if urls else b""
            other_runs = {}
            for name, variant in others.items():
                run = run_example(variant, data)
                found = re.findall(r"Success! Image available at: (\S+)", run.stdout)
                other_runs[name] = (run, found, urllib.request.urlopen(found[-1]).read() if found else b"")
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
        "unchanged: the default printed is the server's, shapes-64 on a fresh machine":
            f"Using system default model: {server_default}\n" in out and server_default == "shapes-64",
        "unchanged: two jobs were submitted": len(re.findall(r"Job submitted with ID: [0-9a-f-]{36}", out)) == 2,
        "unchanged: the default model's job completes": out.count("Status: completed") == 1
            and len(unchanged_urls) == 1,
        "unchanged: its URL serves a PNG": unchanged_png[:8] == b"\x89PNG\r\n\x1a\n" and len(unchanged_png) > 1000,
        "unchanged: the sd-3.5 job fails and claims no image": out.count("Status: failed") == 1
            and out.count("Generation failed") == 1 and out.count("Image available at") == 2,
        "no request errors": "Error:" not in out + with_tiny.stdout and "Error checking status" not in out + with_tiny.stdout,
        "tiny model: exits cleanly": with_tiny.returncode == 0,
        # The example's first job uses the default (shapes-64, which runs
        # here), its second the model named: both complete, the second URL
        # is the named model's picture.
        "tiny model: both jobs complete": with_tiny.stdout.count("Status: completed") == 2 and len(urls) == 2,
        "tiny model: the URL serves a PNG": png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000,
        **{f"tiny {name} model: both jobs complete": run.returncode == 0
           and run.stdout.count("Status: completed") == 2 and len(found) == 2
           for name, (run, found, _) in other_runs.items()},
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
