#!/usr/bin/env bash
# Runs the two-worker end-to-end suites (both builds, as `make e2e-workers` does) RUNS times
# and prints every test that failed or errored in any run, with how often. Not part of CI: a way to see
# a test that passes or fails by chance before it reaches CI. The modules are built first
# (`make flaky` does it); each run's pytest output goes to target/flaky/ for reading after.
# Usage: scripts/flaky.sh [RUNS] [pytest arguments...] (default 10 runs, tests/e2e).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(tests/e2e)
out=target/flaky
rm -rf "$out" && mkdir -p "$out"
for i in $(seq 1 "$runs"); do
  for build in wasm native; do
    log="$out/run-$i-$build.txt"
    ENVOY_CONCURRENCY=2 FILTER_BUILD=$build .tools/venv/bin/python -m pytest -q -rfE -p no:cacheprovider \
      -m "not one_worker" "${targets[@]}" >"$log" 2>&1
    echo "flaky: run $i/$runs $build: $(tail -n 1 "$log")"
    sed -n -E "s/^(FAILED|ERROR) ([^ ]*).*/$build \2/p" "$log" >>"$out/failed.txt"
  done
done
echo "flaky: tests that failed in any of $runs runs per build (count, build, test):"
if [ -s "$out/failed.txt" ]; then
  sort "$out/failed.txt" | uniq -c | sort -rn
  exit 1
fi
echo "  none"
