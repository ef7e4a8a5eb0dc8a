#!/bin/sh
# Build the agent image's base offline-friendly: a minimal Debian 12 (bookworm) root filesystem with python3 and
# venv, made by debootstrap from a Debian mirror and imported into the Docker engine as an image. No registry is
# contacted. The rootfs tarball is cached, so a second run (or another engine) only re-imports it.
#
# usage: make-base.sh [TAG]            default TAG: edgectl-base:debian12
# env:   DOCKER_HOST                   the engine to import into (docker's own variable)
#        EDGECTL_BASE_CACHE            cache folder (default ~/.cache/edgectl/docker-base)
#        DEBIAN_MIRROR                 default http://deb.debian.org/debian
set -eu
TAG=${1:-edgectl-base:debian12}
CACHE=${EDGECTL_BASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgectl/docker-base}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3.11 matches the wheels edgectl builds on a Debian 12 control machine; libgomp1 for llama.cpp (OpenMP).
PACKAGES=python3,python3-venv,libgomp1,ca-certificates
TARBALL="$CACHE/debian12-python3.tar"

for tool in docker tar; do
    command -v "$tool" >/dev/null || {
        echo "make-base.sh: '$tool' not found; install it (apt-get install docker.io)" >&2; exit 1; }
done
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG already in the engine"
    exit 0
fi
mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || {
        echo "make-base.sh: debootstrap not found; install it: apt-get install -y debootstrap" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "make-base.sh: debootstrap needs root; run it with sudo" >&2; exit 1; }
    ROOT=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$ROOT"' EXIT
    trap 'exit 1' INT TERM
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOT" "$MIRROR"
    # a smaller image: no apt lists, caches, docs or man pages
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* \
        "$ROOT"/usr/share/locale/*
    tar --numeric-owner -C "$ROOT" -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
fi
docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' "$TARBALL" "$TAG"
echo "base image $TAG imported from $TARBALL"
