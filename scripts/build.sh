#!/usr/bin/env bash
# Builds the release module: cargo (lto, opt-level z, panic abort, strip), then binaryen's
# wasm-opt -Oz (npm package `binaryen`, installed into .tools/npm), which takes the module
# from ~320 KiB to ~260 KiB. If npm is unreachable the unoptimised module is kept and works
# the same; only its size differs.
set -euo pipefail
cd "$(dirname "$0")/.."
WASM=target/wasm32-wasip1/release/custom_error_pages.wasm
BINARYEN_VERSION=132.0.0
# Callbacks the Rust SDK exports but the filter does not implement. Envoy enters the VM
# for every exported callback (proxy-wasm-cpp-host skips a callback the module does not
# export), so each one kept costs a V8 entry per request (on_log) or per request-body
# chunk and trailer block. Removing an export that the filter starts to implement would
# silently disable it: tests/e2e/test_ecosystem.py::test_module_exports checks the list.
UNUSED_EXPORTS=proxy_on_log,proxy_on_done,proxy_on_request_body,proxy_on_request_trailers,proxy_on_response_trailers
cargo build --release --target wasm32-wasip1
opt=.tools/npm/node_modules/.bin/wasm-opt
if [ ! -x "$opt" ] && command -v npm >/dev/null; then
  echo "build: installing binaryen@$BINARYEN_VERSION (wasm-opt) into .tools/npm"
  mkdir -p .tools/npm
  npm install --silent --no-audit --no-fund --prefix .tools/npm "binaryen@$BINARYEN_VERSION" >/dev/null 2>&1 || true
fi
if [ -x "$opt" ]; then
  # Every time: cargo copies its unoptimised artifact back over this path on each build.
  "$opt" --remove-exports --pass-arg="remove-exports@$UNUSED_EXPORTS" -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int -o "$WASM.tmp" "$WASM"
  mv "$WASM.tmp" "$WASM"
else
  echo "build: wasm-opt unavailable; keeping the unoptimised module"
fi
size=$(stat -c %s "$WASM")
echo "built $WASM ($size bytes, $((size / 1024)) KiB)"
