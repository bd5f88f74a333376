#!/usr/bin/env bash
# Installs the prerequisites on a fresh machine (idempotent, offline-safe once installed): the
# wasm32 target, wasm-bindgen-cli matching Cargo.lock, and the npm packages of end2end/
# (binaryen's wasm-opt for release bundles, Playwright's client). `--tests` adds Debian's
# Chromium for the browser tests; serving needs no browser.
# Usage: scripts/setup.sh [--tests]
set -euo pipefail
cd "$(dirname "$0")/.."
WB_VERSION=0.2.130   # must equal the wasm-bindgen version in Cargo.lock

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WB_VERSION" ]; then
  # --debug: 1 min instead of 4, same output. Not --locked: its lockfile pins a crate the mirror lacks.
  cargo install --debug wasm-bindgen-cli --version "=$WB_VERSION"
fi
if [ "${1:-}" = --tests ]; then
  # The test command checks formatting and lints.
  rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
fi
if [ "${1:-}" = --tests ] && ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
(cd end2end && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
echo "setup done"
