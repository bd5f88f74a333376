#!/usr/bin/env bash
# Builds the web app without cargo-leptos: the WASM bundle (hydrate), the CSS and static files
# into target/site, and the server binary. Usage: scripts/build.sh [debug|release] [CARGO ARGS…]
# (the extra arguments go to the server's build, e.g. --features cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-debug}
NAME=qwen_layers
SITE=${LEPTOS_SITE_ROOT:-target/site}
case "$MODE" in
  debug)   WPROF=wasm-dev;     WDIR=wasm-dev;     SPROF=dev;     SDIR=debug ;;
  release) WPROF=wasm-release; WDIR=wasm-release; SPROF=release; SDIR=release ;;
  *) echo "usage: $0 [debug|release]" >&2; exit 2 ;;
esac
export PATH="$PWD/end2end/node_modules/.bin:$HOME/.cargo/bin:$PATH"

# Separate invocations and target dirs, so hydrate and ssr features never unify.
cargo build -p frontend --lib --target wasm32-unknown-unknown --target-dir target/front --profile "$WPROF"
mkdir -p "$SITE/pkg"
wasm-bindgen --target web --no-typescript --out-dir "$SITE/pkg" --out-name "$NAME" \
  "target/front/wasm32-unknown-unknown/$WDIR/frontend.wasm"
mv "$SITE/pkg/${NAME}_bg.wasm" "$SITE/pkg/$NAME.wasm"
if [ "$MODE" = release ]; then
  wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int "$SITE/pkg/$NAME.wasm" -o "$SITE/pkg/$NAME.wasm"
fi
cp style/main.css "$SITE/pkg/$NAME.css"
cp -r public/. "$SITE/"
cargo build -p server -p qwen-layers --bins --profile "$SPROF" "${@:2}"
echo "built $MODE: $SITE, target/$SDIR/server and target/$SDIR/qwen-layers"
