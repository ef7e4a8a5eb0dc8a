#!/bin/sh
# Build the agent image's base offline-friendly: a minimal Debian 12 (bookworm) root filesystem with python3 and
# venv, made by debootstrap from a Debian mirror and added to the Docker engine as an image. No registry is
# contacted. The rootfs tarball is cached, so a second run (or another engine) only re-imports it.
#
# usage: make-base.sh [--platform linux/amd64|linux/arm64] [--compiler] [TAG]
#        default platform: this machine's; default TAG: edgectl-base:debian12 (amd64), edgectl-base:debian12-arm64;
#        --compiler adds g++, python3-dev and libnuma1 (the vLLM base's): edgectl-base:debian12-cxx, edgectl-base:debian12-arm64-cxx
# env:   DOCKER_HOST                   the engine to import into (docker's own variable)
#        EDGECTL_BASE_CACHE            cache folder (default ~/.cache/edgectl/docker-base)
#        EDGECTL_BASE_ROOTFS           a packed Debian 12 root filesystem of that platform with python3 and
#                                      python3-venv (tar or tar.gz) to import instead of debootstrapping one, e.g.
#                                      the arm64 one tests/emulated_arm64.py caches
#        DEBIAN_MIRROR                 default http://deb.debian.org/debian
# Another architecture than this machine's is debootstrapped under qemu-user-static (Debian: apt-get install
# qemu-user-static; its binfmt_misc handler needs the fix-binary flag, Debian's has it), and the engine runs that
# image under the same emulation.
set -eu
PLATFORM=""
COMPILER=""
while [ $# -gt 0 ]; do
    case $1 in
        --platform)
            [ $# -ge 2 ] || { echo "make-base.sh: --platform needs a value: linux/amd64 or linux/arm64" >&2; exit 2; }
            PLATFORM=$2
            shift 2 ;;
        --compiler) COMPILER=1; shift ;;
        *) break ;;
    esac
done
if [ -z "$PLATFORM" ]; then
    case $(uname -m) in
        aarch64|arm64) PLATFORM=linux/arm64 ;;
        *) PLATFORM=linux/amd64 ;;
    esac
fi
case $PLATFORM in
    linux/amd64|linux/x86_64) PLATFORM=linux/amd64; ARCH=amd64; SUFFIX="" ;;
    linux/arm64|linux/aarch64) PLATFORM=linux/arm64; ARCH=arm64; SUFFIX="-arm64" ;;
    *) echo "make-base.sh: platform '$PLATFORM' is not one edgectl builds agent images for: use linux/amd64 or" \
            "linux/arm64" >&2; exit 2 ;;
esac
# --compiler: also g++, python3-dev and libnuma1 (the vLLM base is built FROM it: vLLM CPU compiles its model with torch
# inductor and its native ops link libnuma; Triton builds its launchers with a C compiler on a GPU box); its own
# tarball and tag
[ -z "$COMPILER" ] || SUFFIX="$SUFFIX-cxx"
TAG=${1:-edgectl-base:debian12$SUFFIX}
CACHE=${EDGECTL_BASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgectl/docker-base}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3.11 matches the wheels edgectl builds on a Debian 12 control machine; libgomp1 for llama.cpp (OpenMP).
PACKAGES=python3,python3-venv,libgomp1,ca-certificates${COMPILER:+,g++,python3-dev,libnuma1}
TARBALL="$CACHE/debian12-python3$SUFFIX.tar"

for tool in docker tar; do
    command -v "$tool" >/dev/null || {
        echo "make-base.sh: '$tool' not found; install it (apt-get install docker.io)" >&2; exit 1; }
done
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG already in the engine"
    exit 0
fi
if [ -n "${EDGECTL_BASE_ROOTFS:-}" ]; then
    [ -s "$EDGECTL_BASE_ROOTFS" ] || {
        echo "make-base.sh: EDGECTL_BASE_ROOTFS=$EDGECTL_BASE_ROOTFS is not a file; unset it to debootstrap" >&2
        exit 1; }
    TARBALL=$EDGECTL_BASE_ROOTFS
fi
mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || {
        echo "make-base.sh: debootstrap not found; install it: apt-get install -y debootstrap" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "make-base.sh: debootstrap needs root; run it with sudo" >&2; exit 1; }
    ROOT=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$ROOT"' EXIT
    trap 'exit 1' INT TERM
    debootstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" bookworm "$ROOT" "$MIRROR" || {
        echo "make-base.sh: debootstrap --arch=$ARCH failed; for another architecture than this machine's" \
             "install qemu-user-static (its binfmt_misc handler runs the target's programs)" >&2; exit 1; }
    # a smaller image: no apt lists, caches, docs or man pages
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* \
        "$ROOT"/usr/share/locale/*
    tar --numeric-owner -C "$ROOT" -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
    rm -rf "$ROOT"
    trap - EXIT
fi
# `docker build --platform` FROM scratch rather than `docker import`: engines before 23.0 label an imported image
# with their own architecture whatever --platform says, so an arm64 base would not run as one
CONTEXT=$(mktemp -d "$CACHE/context.XXXXXX")
trap 'rm -rf "$CONTEXT"' EXIT
case $TARBALL in *.gz) ROOTFS=rootfs.tar.gz ;; *) ROOTFS=rootfs.tar ;; esac
ln "$TARBALL" "$CONTEXT/$ROOTFS" 2>/dev/null || cp "$TARBALL" "$CONTEXT/$ROOTFS"
printf '%s\n' "FROM scratch" "ADD $ROOTFS /" "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "LABEL dev.edgectl.platform=$PLATFORM" 'CMD ["python3"]' > "$CONTEXT/Dockerfile"
docker build --quiet --platform "$PLATFORM" --tag "$TAG" "$CONTEXT" >/dev/null
echo "base image $TAG ($PLATFORM) made from $TARBALL"
