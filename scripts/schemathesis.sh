#!/usr/bin/env bash
# Property-based run of schemathesis (PyPI) against the live server, from its own OpenAPI
# document: every REST route and every server function, with generated valid and invalid
# requests. Fails on any 5xx that is not documented, an undocumented status, or a response that
# violates the schema. The server runs without the Qwen-Image models (decompose and edit answer
# 503 at once), so the run exercises the door, validation and the job routes, not that engine;
# Z-Image runs on the tiny checkpoint (requests that pass validation are easy to generate), up to
# 512² so a CPU job stays short.
# Usage: scripts/schemathesis.sh [SECONDS]   (default 60; the test command runs a short pass)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_BUDGET=${1:-60}
ST_VERSION=4.32.5
VENV=target/schemathesis-venv
if [ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $ST_VERSION" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

DATA=$(mktemp -d)
LOG="$DATA/server.log"
LEPTOS_SITE_ROOT=target/site ./target/debug/server --port 0 --device cpu --data-dir "$DATA" \
  --qwen-image-model-path end2end/no-such-model --qwen-image-edit-model-path end2end/no-such-model \
  --z-image-model-path tests/fixtures/tiny-z-image-turbo --z-image-max-pixels 262144 --queue-depth 2 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
  BASE=$(sed -n 's/^listening on //p' "$LOG")
  [ -n "$BASE" ] && break
  sleep 0.1
done
[ -n "${BASE:-}" ] || { echo "the server did not start:"; cat "$LOG"; exit 1; }

# positive_data_acceptance is left out: a schema-valid string is not always a valid image, so
# 422 for it is right. Everything else schemathesis checks is on.
# scripts/schemathesis.toml: the model-less server's 503 for valid decompose/edit requests.
"$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$BASE/api/qwen-image/openapi.json" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-time "$SECONDS_BUDGET" --workers 2 --suppress-health-check all
kill -0 $SERVER 2>/dev/null || { echo "the server died during the run:"; cat "$LOG"; exit 1; }
echo "schemathesis: clean, and the server is still serving"
