"""Shared pieces of the Python end-to-end tests: a check counter that prints
PASS/FAIL lines and the summary, and starting `cyberimage serve` on a free
port. Each test script imports this module from the tests/ folder."""

import os
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


def isolated_env(data_dir, **settings):
    """The environment a test's `cyberimage` runs in: this one less every
    CYBERIMAGE_* and HF_* setting, with HOME, HF_HOME and the cache folder
    inside `data_dir` (created only if written), then `settings`. A machine
    whose Hugging Face cache holds real weights, or whose shell sets
    CYBERIMAGE_*, then tests as CI does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CYBERIMAGE_", "HF_"))}
    home = os.path.join(data_dir, "home")
    env.update(HOME=home, HF_HOME=os.path.join(home, "huggingface"), XDG_CACHE_HOME=os.path.join(home, ".cache"))
    env.update(settings)
    return env


def start_server(binary, data_dir, *extra, env=None):
    """Starts `serve` on 127.0.0.1:0 (in `isolated_env` unless `env` is
    given); returns (process, base URL)."""
    if env is None:
        env = isolated_env(data_dir)
    proc = subprocess.Popen([binary, "serve", "--bind", "127.0.0.1:0", "--data-dir", data_dir, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, match.group(1)
