#!/usr/bin/env bash
# Builds the release module with cargo alone: the filter (lto, opt-level z, panic abort,
# strip; see Cargo.toml), then tools/wasm-shrink, which drops the exports of callbacks the
# filter does not implement and the code only they reached (walrus, pure Rust).
# `scripts/build.sh --small` (make build-small) adds binaryen's -Oz: the wasm-opt crate
# compiles binaryen from C++ the first time (several minutes on two cores; target/tools
# keeps it), for a smaller module; docs/architecture.md gives both builds' figures.
set -euo pipefail
cd "$(dirname "$0")/.."
WASM=target/wasm32-wasip1/release/custom_error_pages.wasm
# Callbacks the Rust SDK exports but the filter does not implement. Envoy enters the VM
# for every exported callback (proxy-wasm-cpp-host skips a callback the module does not
# export), so each one kept costs a V8 entry per request (on_log) or per request-body
# chunk and trailer block. Removing an export that the filter starts to implement would
# silently disable it: tests/e2e/test_ecosystem.py::test_module_exports checks the list.
UNUSED_EXPORTS=proxy_on_log,proxy_on_done,proxy_on_request_body,proxy_on_request_trailers
features=() oz=()
if [ "${1:-}" = "--small" ]; then
  features=(--features binaryen) oz=(--oz)
fi
cargo build --release --target wasm32-wasip1
cargo build --release --quiet --manifest-path tools/wasm-shrink/Cargo.toml --target-dir target/tools "${features[@]}"
# Every time: cargo copies its unoptimised artifact back over this path on each build.
target/tools/release/wasm-shrink "$WASM" "$WASM.tmp" --remove-exports "$UNUSED_EXPORTS" "${oz[@]}"
mv "$WASM.tmp" "$WASM"
size=$(stat -c %s "$WASM")
echo "built $WASM ($size bytes, $((size / 1024)) KiB)"
