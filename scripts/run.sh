#!/usr/bin/env bash
# Sets up, builds and starts the app on http://127.0.0.1:7860 (extra arguments go to the server,
# e.g. --qwen-image-model-path /models/Qwen-Image-Layered or --profile rtx4090).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh debug
exec env LEPTOS_SITE_ROOT=target/site ./target/debug/server "$@"
