# One command each: `make run` (demo), `make test` (everything), `make bench`.
WASM := target/wasm32-wasip1/release/custom_error_pages.wasm
PY := .tools/venv/bin/python

.PHONY: setup build lint test unit e2e run bench soak load clean

setup:
	scripts/setup.sh

build: setup
	scripts/build.sh

# Formatting, and clippy with warnings denied on the host and on the wasm target (the host
# build never compiles src/envoy/), the test-only trap build included.
lint: setup
	cargo fmt --check
	cargo clippy --quiet --all-targets -- -D warnings
	cargo clippy --quiet --all-targets --target wasm32-wasip1 -- -D warnings
	cargo clippy --quiet --lib --target wasm32-wasip1 --features trap-test -- -D warnings

unit:
	cargo test --quiet

e2e: build
	$(PY) -m pytest -q tests/e2e

test: setup lint unit e2e

run: build
	scripts/demo.sh

bench: build
	scripts/setup.sh bench
	$(PY) bench/run.py

soak: build
	scripts/setup.sh bench
	$(PY) bench/run.py --soak

load: build
	scripts/setup.sh bench
	$(PY) bench/run.py --load

clean:
	cargo clean
	rm -rf .tools
