#!/usr/bin/env bash
# Runs every test: unit + integration tests of each crate (the engine against the committed
# reference fixtures, the real server on a free port), then Playwright in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh debug
export PATH="$PWD/end2end/node_modules/.bin:$PATH"
# One crate at a time: building the workspace at once would unify the ssr and hydrate features.
cargo test -p app --features ssr
cargo test -p engine -p test-support
cargo test -p server
(cd end2end && npx playwright test)
