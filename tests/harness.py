"""Shared pieces of the Python end-to-end tests: a check counter that prints
PASS/FAIL lines and the summary, and starting `cyberimage serve` on a free
port. Each test script imports this module from the tests/ folder."""

import re
import subprocess
import sys

RESULTS = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    if condition:
        RESULTS["passed"] += 1
        print(f"PASS {name}")
    else:
        RESULTS["failed"] += 1
        print(f"FAIL {name} {detail}")


def finish():
    """Prints the summary line and exits non-zero on any failure."""
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    sys.exit(1 if RESULTS["failed"] else 0)


def start_server(binary, data_dir, *extra, env=None):
    """Starts `serve` on 127.0.0.1:0; returns (process, base URL)."""
    proc = subprocess.Popen([binary, "serve", "--bind", "127.0.0.1:0", "--data-dir", data_dir, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, match.group(1)
