#!/usr/bin/env bash
# Builds the release module: cargo (lto, opt-level z, panic abort, strip), then binaryen's
# wasm-opt -Oz (npm package `binaryen`, installed into .tools/npm), which takes the module
# from ~320 KiB to ~260 KiB. If npm is unreachable the unoptimised module is kept and works
# the same; only its size differs.
set -euo pipefail
cd "$(dirname "$0")/.."
WASM=target/wasm32-wasip1/release/custom_error_pages.wasm
BINARYEN_VERSION=132.0.0
cargo build --release --target wasm32-wasip1
opt=.tools/npm/node_modules/.bin/wasm-opt
if [ ! -x "$opt" ] && command -v npm >/dev/null; then
  echo "build: installing binaryen@$BINARYEN_VERSION (wasm-opt) into .tools/npm"
  mkdir -p .tools/npm
  npm install --silent --no-audit --no-fund --prefix .tools/npm "binaryen@$BINARYEN_VERSION" >/dev/null 2>&1 || true
fi
if [ -x "$opt" ]; then
  # Every time: cargo copies its unoptimised artifact back over this path on each build.
  "$opt" -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int -o "$WASM.tmp" "$WASM"
  mv "$WASM.tmp" "$WASM"
else
  echo "build: wasm-opt unavailable; keeping the unoptimised module"
fi
size=$(stat -c %s "$WASM")
echo "built $WASM ($size bytes, $((size / 1024)) KiB)"
