#!/usr/bin/env bash
# Build a local base image with debootstrap + `docker import`, for machines that
# have Debian's package mirror but no container registry. The image holds what
# daxfs needs at run time (python3 with venv, fuse3, libpmem1) so that the
# Dockerfile needs no network. Usage: docker/build-base.sh [TAG]
set -euo pipefail
TAG="${1:-daxfs-base:bookworm}"
SUITE="${DAXFS_BASE_SUITE:-bookworm}"
MIRROR="${DAXFS_BASE_MIRROR:-http://deb.debian.org/debian}"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG already present"
  exit 0
fi
command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
ROOTFS="$(mktemp -d /var/tmp/daxfs-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap $SUITE into $ROOTFS (about a minute)..."
debootstrap --variant=minbase \
  --include=python3,python3-venv,fuse3,libpmem1,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -20 "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# Keep the image small: no apt lists, no docs.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$TAG" >/dev/null
echo "built base image $TAG"
