#!/usr/bin/env bash
# Build (or reuse) the guest image for the two-VM demo: a Debian bookworm root
# made with debootstrap, Debian's cloud kernel with its initramfs and modules,
# fuse3/libpmem1/ndctl, and a venv at /opt/daxfs with daxfs's dependencies from
# the host-built wheels (build/wheels). daxfs itself is not in the image: each
# run hands the guests the current wheel, so code changes need no rebuild.
#
# Output (cached; rebuilt only when the inputs change), in $DAXFS_VM_CACHE
# (default /var/cache/daxfs-vm):  vmlinuz  initrd.img  root.ext4  stamp
# Usage: vm/build-image.sh WHEELS_DIR
set -euo pipefail
WHEELS="${1:?usage: vm/build-image.sh WHEELS_DIR}"
CACHE="${DAXFS_VM_CACHE:-/var/cache/daxfs-vm}"
SUITE="${DAXFS_VM_SUITE:-bookworm}"
MIRROR="${DAXFS_VM_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,fuse3,libpmem1,kmod,iproute2,ndctl,daxctl,linux-image-cloud-amd64,initramfs-tools,ca-certificates"
log() { echo "vm-image: $*"; }

# The image depends on this script and on the dependency wheels (not daxfs's own).
deps=$(cd "$WHEELS" && ls -1 ./*.whl | grep -v '/daxfs-' | sort)
key=$( { cat "$0"; echo "$SUITE $PACKAGES"; echo "$deps"; } | sha256sum | cut -c1-16)
if [ -f "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$key" ] \
   && [ -f "$CACHE/root.ext4" ] && [ -f "$CACHE/vmlinuz" ] && [ -f "$CACHE/initrd.img" ]; then
  log "cached image $CACHE (key $key)"
  exit 0
fi
command -v debootstrap >/dev/null && command -v mkfs.ext4 >/dev/null || {
  log "installing debootstrap e2fsprogs"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap e2fsprogs >/dev/null
}
mkdir -p "$CACHE"
ROOT="$(mktemp -d /var/tmp/daxfs-vmroot.XXXXXX)"
trap 'umount "$ROOT/proc" 2>/dev/null || true; rm -rf "$ROOT" "$ROOT.log"' EXIT
t0=$SECONDS
log "[1/4] debootstrap $SUITE with Debian's cloud kernel into $ROOT (a few minutes)..."
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 \
  || { tail -30 "$ROOT.log"; exit 1; }
log "      done in $((SECONDS - t0)) s; kernel $(ls "$ROOT"/lib/modules)"
log "[2/4] venv /opt/daxfs with the dependency wheels"
mkdir -p "$ROOT/tmp/wheels"
cp "$WHEELS"/*.whl "$ROOT/tmp/wheels/"
rm -f "$ROOT"/tmp/wheels/daxfs-*.whl
chroot "$ROOT" python3 -m venv /opt/daxfs
# shellcheck disable=SC2046
chroot "$ROOT" /opt/daxfs/bin/pip install -q --no-index --no-cache-dir --find-links /tmp/wheels \
  $(cd "$ROOT/tmp/wheels" && ls -1 ./*.whl | sed 's|^\./|/tmp/wheels/|')
rm -rf "$ROOT/tmp/wheels"
log "[3/4] guest init"
cat >"$ROOT/sbin/daxfs-init" <<'INIT'
#!/bin/sh
# PID 1 of a daxfs demo guest: mount the basics, unpack the run's files from
# the second disk (a tar archive), and hand over to the run's script.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/conf
tar -xf /dev/vdb -C /run/conf
exec /bin/sh /run/conf/guest-init.sh
INIT
chmod 755 "$ROOT/sbin/daxfs-init"
echo daxfs-vm >"$ROOT/etc/hostname"
cp "$ROOT"/boot/vmlinuz-* "$CACHE/vmlinuz.new"
cp "$ROOT"/boot/initrd.img-* "$CACHE/initrd.img.new"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/usr/share/doc/* \
  "$ROOT"/usr/share/man/* "$ROOT"/boot/*
log "[4/4] ext4 image ($(du -sm "$ROOT" | cut -f1) MiB of files)"
rm -f "$CACHE/root.ext4.new"
mkfs.ext4 -q -F -L daxfs-vm -d "$ROOT" "$CACHE/root.ext4.new" 1536M
for f in vmlinuz initrd.img root.ext4; do mv -f "$CACHE/$f.new" "$CACHE/$f"; done
echo "$key" >"$CACHE/stamp"
log "built $CACHE in $((SECONDS - t0)) s (key $key)"
