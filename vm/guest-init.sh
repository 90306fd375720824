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
if [ "$ROLE" = c ]; then
  # The /dev/dax path: the NVDIMM's namespace reconfigured as device-dax (4 KiB pages).
  for m in nfit nd_pmem dax_pmem device_dax; do modprobe $m; done
  ndctl create-namespace -f -e namespace0.0 -m devdax -a 4K >/run/ndctl.log 2>&1 \
    || ndctl create-namespace -r region0 -m devdax -a 4K >>/run/ndctl.log 2>&1 \
    || cat /run/ndctl.log
  dax=$(ls /dev/dax* 2>/dev/null | head -1)
  echo "daxfs-guest: NVDIMM as devdax: ${dax:-none} ($(($(cat /sys/bus/dax/devices/${dax#/dev/}/size 2>/dev/null || echo 0) >> 20)) MiB)"
  export DAXFS_DAX="$dax" DAXFS_REGION="$dax" PYTHONPATH=/run/conf/site PYTHONUNBUFFERED=1
  # libpmem does not recognise an emulated NVDIMM as pmem, and msync cannot sync a device.
  export PMEM_IS_PMEM_FORCE=1
  cd /run/conf && python3 /run/conf/guest.py "$ROLE"
  rc=$?
  echo "daxfs-guest: exit $rc"
  echo o >/proc/sysrq-trigger
  sleep 30
fi
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
