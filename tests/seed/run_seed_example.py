"""Runs the Python example of the seed contract (MCP_INTEGRATION.md), byte for
byte as the document prints it, against a live `cyberimage serve` on the
address the example hard-codes (localhost:5050).

Until an inference engine is built in, every job must FAIL with a reason, so
the example has to print "Generation failed" and never an image URL: this
checks the whole submit/poll protocol with the seed's own client, and that no
placeholder image is ever handed out. When the engine lands, this test flips
to demanding a real PNG.

usage: python tests/seed/run_seed_example.py path/to/cyberimage
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> int:
    binary = sys.argv[1]
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 5050)) == 0:
            print("port 5050 is taken; the seed example hard-codes it", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CYBERIMAGE_")}
        server = subprocess.Popen(
            [binary, "serve", "--bind", "127.0.0.1:5050", "--data-dir", data],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(5050, server)
            script = Path(data) / "seed_example.py"
            script.write_text(example_code())
            run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        finally:
            server.terminate()
            server.wait(timeout=30)
        out = run.stdout
        print(out)
        checks = {
            "exits cleanly": run.returncode == 0,
            "default model is flux-1": "Using system default model: flux-1" in out,
            "two jobs were submitted": len(re.findall(r"Job submitted with ID: [0-9a-f-]{36}", out)) == 2,
            "both jobs end failed": out.count("Status: failed") == 2 and out.count("Generation failed") == 2,
            "no image is claimed": "Image available at" not in out and "Success!" not in out,
            "no request errors": "Error:" not in out and "Error checking status" not in out,
        }
        for name, ok in checks.items():
            print(f"{'ok' if ok else 'FAILED'}: {name}")
        if run.stderr:
            print(run.stderr, file=sys.stderr)
        passed = sum(checks.values())
        print(f"{passed} passed, {len(checks) - passed} failed")
        return 0 if passed == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
