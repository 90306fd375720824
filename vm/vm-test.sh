#!/usr/bin/env bash
# `make vm-test` / `make vm-demo`: two QEMU guests and a host daxfs server on one
# shared region (see vm/run.py). Installs qemu-system-x86 (and debootstrap for
# the image) when missing, builds or reuses the cached guest image, runs the
# scenario, and skips (exit 0, saying why) when no virtual machine can start.
# Usage: vm/vm-test.sh [--verbose]
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "vm-test: $*"; }
BUDGET_S="${DAXFS_VM_BUDGET_S:-1020}"
start=$SECONDS

if ! command -v qemu-system-x86_64 >/dev/null; then
  log "installing qemu-system-x86"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      qemu-system-x86 >/dev/null; } || true
fi
if ! command -v qemu-system-x86_64 >/dev/null; then
  log "SKIPPED: qemu-system-x86 is not installed and could not be installed"
  exit 0
fi
# Can QEMU start a machine at all here (TCG needs nothing but the binary)?
set +e
timeout 10 qemu-system-x86_64 -accel tcg -machine none -nodefaults -display none -S \
  >/var/tmp/daxfs-vm-probe.log 2>&1
probe=$?
set -e
if [ "$probe" -ne 124 ]; then
  log "SKIPPED: QEMU cannot start a virtual machine here (exit $probe):"
  tail -5 /var/tmp/daxfs-vm-probe.log | sed 's/^/    /'
  exit 0
fi

log "building wheels on the host"
mkdir -p build
rm -rf build/wheels
.venv/bin/pip wheel -q --wheel-dir build/wheels . >build/wheels.log 2>&1 || { cat build/wheels.log; exit 1; }
bash vm/build-image.sh build/wheels
log "running the scenario (budget ${BUDGET_S} s)"
set +e
timeout --kill-after=30 "$BUDGET_S" .venv/bin/python vm/run.py "$@"
rc=$?
set -e
[ "$rc" -eq 124 ] && log "FAIL: over the budget of ${BUDGET_S} s"
log "total $((SECONDS - start)) s, exit $rc"
exit "$rc"
