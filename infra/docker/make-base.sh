#!/usr/bin/env bash
# Build the galmorph base image without a container registry: Debian bookworm (minbase) from
# Debian's archive with mmdebstrap, plus Debian's Python 3.11 and the public CA certificates, then
# `podman import`. Idempotent: does nothing when the image exists already.
#
#   infra/docker/make-base.sh [IMAGE]        (default localhost/galmorph-base:bookworm)
#
# Users with a registry do not need this: the project image's default base is python:3.11-slim.
set -euo pipefail
IMAGE="${1:-${BASE_IMAGE:-localhost/galmorph-base:bookworm}}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PODMAN="${PODMAN:-podman}"

if $PODMAN image exists "$IMAGE"; then
  echo "base image $IMAGE exists; not rebuilt"
  exit 0
fi
command -v mmdebstrap >/dev/null || { echo "make-base.sh: mmdebstrap is not installed" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "building $IMAGE from Debian $SUITE ($MIRROR) with mmdebstrap"
mmdebstrap --variant=minbase --include=python3,ca-certificates \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  --format=tar "$SUITE" "$tmp/rootfs.tar" "$MIRROR"
$PODMAN import \
  --change 'CMD ["/bin/bash"]' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase + python3 (mmdebstrap)\"" \
  "$tmp/rootfs.tar" "$IMAGE"
echo "built $IMAGE"
