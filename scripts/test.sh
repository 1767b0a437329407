#!/usr/bin/env bash
# The project's test command: format, lints, every Rust test in the
# workspace, then the seed contract's own Python example against the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --workspace

# The seed's example client needs `requests`; keep it in a project venv.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -c 'import requests' 2>/dev/null || .venv/bin/pip install -q requests
if [ -f ../shared/seed/MCP_INTEGRATION.md ]; then
  cargo build --bin cyberimage
  .venv/bin/python tests/seed/run_seed_example.py "${CARGO_TARGET_DIR:-target}/debug/cyberimage"
elif [ "${CI:-}" = "true" ]; then
  echo "../shared/seed/MCP_INTEGRATION.md is missing: the seed contract test cannot run" >&2
  exit 1
else
  echo "note: ../shared/seed not found beside the checkout; seed example test skipped"
fi
