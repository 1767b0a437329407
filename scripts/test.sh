#!/usr/bin/env bash
# The project's test command: format, lints, every Rust test in the
# workspace, then real Python clients against the binary: the seed contract's
# own example, the official MCP SDK over HTTP and stdio, the official OpenAI
# client, Pillow reading our PNG metadata, PostgreSQL with several worker
# processes, and the web UI in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
# The layer rule (ARCHITECTURE.md): crates and engine folders import only
# downward, no import cycles, unsafe only in crates/kernels. The selftest
# plants an upward import and a cycle in a copy and checks both are caught.
python3 scripts/check_layers.py
python3 scripts/check_layers.py --selftest
cargo clippy --all-targets -- -D warnings
# With PostgreSQL installed (CI installs it) the repository contract also
# runs on a real server, and so does the multi-worker scale-out test.
HAVE_PG=""
if ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then HAVE_PG=1; fi
if [ -n "$HAVE_PG" ]; then
  scripts/with-postgres.sh cargo test --workspace
  # The contract again on a server that accepts TLS only (sslmode=require,
  # verify-full with a CA made by the script).
  scripts/with-postgres.sh --ssl cargo test -p cyberimage-db --test contract --test postgres_tls
else
  echo "note: PostgreSQL is not installed; its contract tests are skipped" >&2
  cargo test --workspace
fi

# The Python clients live in a project venv, pinned in tests/requirements.txt.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! cmp -s tests/requirements.txt .venv/installed-requirements.txt; then
  .venv/bin/pip install -q -r tests/requirements.txt
  cp tests/requirements.txt .venv/installed-requirements.txt
fi
cargo build --bin cyberimage
BIN="${CARGO_TARGET_DIR:-target}/debug/cyberimage"
.venv/bin/python tests/mcp/test_mcp_clients.py "$BIN"
# The official MCP conformance suite (npm, with its own Node 22) against
# `serve --conformance-fixtures`, both protocol eras, against the baseline
# in tests/mcp/conformance/expected-failures.yaml.
tests/mcp/conformance/run.sh "$BIN"
.venv/bin/python tests/ecosystem/test_openai_and_metadata.py "$BIN"
.venv/bin/python tests/ecosystem/test_models_pull.py "$BIN"
# Dockerfile, Dockerfile.cuda and compose.yaml, and the image's command run
# here as a stand-in (no container can be built or run on these machines).
.venv/bin/python tests/ecosystem/test_container_files.py "$BIN"
.venv/bin/python tests/compat/test_cyberimage_rest.py "$BIN"
# Meaning: the trained shapes-64 draws held-out prompts as they say,
# scored by an independent detector (colour, shape, position, guidance,
# negative prompt).
.venv/bin/python tests/semantic/test_shapes_model.py "$BIN"
.venv/bin/python tests/ecosystem/test_a1111_api.py "$BIN"
.venv/bin/python tests/ecosystem/test_loras.py "$BIN"
# Reliability: >= 10,000 malformed requests, then >= 20 kill -9 / restart
# trials (more with --cases / --trials when run by hand).
.venv/bin/python tests/reliability/fuzz_api.py "$BIN" --cases 10000
.venv/bin/python tests/reliability/crash_restart.py "$BIN" --trials 20
if [ -n "$HAVE_PG" ]; then
  scripts/with-postgres.sh .venv/bin/python tests/scale/test_workers_postgres.py "$BIN"
fi
# The web UI in headless Chromium (Debian's), driven by playwright-core.
if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  (cd tests/web && npm ci --no-audit --no-fund --silent)
  node tests/web/ui.test.mjs "$BIN"
elif [ "${CI:-}" = "true" ]; then
  echo "chromium is missing: the web UI tests cannot run" >&2
  exit 1
else
  echo "note: /usr/bin/chromium not found; web UI tests skipped (apt-get install chromium)" >&2
fi
if [ -f ../shared/seed/MCP_INTEGRATION.md ]; then
  .venv/bin/python tests/seed/run_seed_example.py "$BIN"
elif [ "${CI:-}" = "true" ]; then
  echo "../shared/seed/MCP_INTEGRATION.md is missing: the seed contract test cannot run" >&2
  exit 1
else
  echo "note: ../shared/seed not found beside the checkout; seed example test skipped"
fi
