#!/bin/sh
# Run by the image's /sbin/daxfs-init (PID 1) from the run's tar disk: network,
# FUSE, the ivshmem region, then the scenario; powers off when it ends.
export PATH=/opt/daxfs/bin:/usr/sbin:/usr/bin:/sbin:/bin
. /run/conf/env
echo "daxfs-guest: booted after $(cut -d' ' -f1 /proc/uptime) s of guest uptime; uname -r: $(uname -r)"
modprobe virtio_net
modprobe fuse
ip link set lo up
nic=""
for n in /sys/class/net/*; do [ "${n##*/}" = lo ] || nic="${n##*/}"; done
ip link set "$nic" up
ip addr add 10.0.2.15/24 dev "$nic"
ip route add default via 10.0.2.2
ivshmem=""
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1110 ]; then ivshmem="$d"; fi
done
if [ -z "$ivshmem" ]; then
  echo "daxfs-guest: no ivshmem device"; rc=1
else
  echo 1 >"$ivshmem/enable"
  echo "daxfs-guest: ivshmem at ${ivshmem##*/}, BAR2 $(($(stat -c %s "$ivshmem/resource2") >> 20)) MiB; net $nic"
  export DAXFS_REGION="$ivshmem/resource2" PYTHONPATH=/run/conf/site PYTHONUNBUFFERED=1
  # Flush with cache-line writes (libpmem): the BAR is memory, msync has no file to sync.
  export PMEM_IS_PMEM_FORCE=1
  cd /run/conf && python3 /run/conf/guest.py "$ROLE"
  rc=$?
fi
echo "daxfs-guest: exit $rc"
echo o >/proc/sysrq-trigger
sleep 30
