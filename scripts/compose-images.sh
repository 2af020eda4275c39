#!/usr/bin/env bash
# Builds, offline, the local stand-ins for the images envoy/docker-compose.yaml names (no
# registry is needed): a Debian root file system from debootstrap, imported with
# `docker import`, then Envoy from the PyPI wheel (.tools/envoy, or $ENVOY_BIN), Debian's
# nginx and the demo backend on top (tests/compose/standin.Dockerfile). Each image is tagged
# by a hash of what it is built from, so a second run reuses it. Writes the image names, as
# the compose file's variables, to .tools/compose/images.env.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY=$(readlink -f "${ENVOY_BIN:-.tools/envoy}")
SUITE=bookworm
PACKAGES=nginx-light,python3
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=.tools/compose
mkdir -p "$work"

hash_of() { cat "$@" | sha256sum | cut -c1-12; }

base=custom-error-pages-standin/base:$(echo "$SUITE $PACKAGES" | sha256sum | cut -c1-12)
if ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || {
    echo "compose-images: installing debootstrap (Debian package)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
  }
  echo "compose-images: debootstrap $SUITE with $PACKAGES (about a minute)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO rm -rf "$work/rootfs"
  $SUDO debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  $SUDO tar -C "$work/rootfs" --exclude=./var/cache/apt/archives --exclude=./var/lib/apt/lists -c . \
    | docker import -c 'CMD ["/bin/bash"]' - "$base" >/dev/null
  $SUDO rm -rf "$work/rootfs"
fi

# The build context: only what the stages copy.
ctx=$work/context
rm -rf "$ctx" && mkdir -p "$ctx"
cp tests/compose/standin.Dockerfile "$ctx/Dockerfile"
cp envoy/demo/backend.py "$ctx/backend.py"
[[ $("$ENVOY" --version 2>&1) =~ /([0-9]+\.[0-9]+\.[0-9]+)/ ]] || { echo "compose-images: no version from $ENVOY"; exit 1; }
envoy_tag=${BASH_REMATCH[1]}-$(sha256sum "$ENVOY" | cut -c1-12)
recipe=$(hash_of "$ctx/Dockerfile" "$ctx/backend.py" <(echo "$base"))

: >"$work/images.env"
for stage in envoy backend errors; do
  case $stage in
    envoy) tag=$envoy_tag-$recipe ;;
    *) tag=$recipe ;;
  esac
  image=custom-error-pages-standin/$stage:$tag
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    [ "$stage" = envoy ] && cp "$ENVOY" "$ctx/envoy"
    echo "compose-images: building $image"
    # The classic builder: it needs no buildx plugin and reads the base from local images.
    DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$base" --target "$stage" -t "$image" "$ctx" \
      >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
  fi
  echo "$(tr a-z A-Z <<<"$stage")_IMAGE=$image" >>"$work/images.env"
done
rm -rf "$ctx"
echo "compose-images: ok"
cat "$work/images.env"
