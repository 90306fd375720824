#!/usr/bin/env python3
"""CPU each FUSE daemon spends per MiB moved: daxfs's mount against the naive passthrough.

``python benchmarks/daemon_cpu.py`` (as root, with fio) mounts both on a fresh
region and tmpfs directory, runs fio psync 1 MiB sequential reads and writes
(1 job, 3 s, page-aligned buffers, then malloc's alignment), and prints the
throughput and the daemon's user and system CPU time per MiB, read from
/proc/PID/stat before and after each fio run. It backs the Performance
section's explanation of the FUSE figures: a CPU-bound daemon's throughput
follows its CPU per MiB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from daxfs.bench.mounts import daxfs_mount, naive_mount
from daxfs.testing import Volume, start_server

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every thread of ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def daemon_pid(mountpoint: Path) -> int:
    """The process serving ``mountpoint`` (its command line names it)."""
    out = subprocess.run(["pgrep", "-f", str(mountpoint)], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def fio(path: Path, rw: str, align: int) -> tuple[int, float]:
    """(bytes moved, bytes/s) of 3 s of 1 MiB psync I/O on ``path``."""
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run(
            ["fio", "--name=cpu", f"--filename={path}", f"--rw={rw}", "--bs=1M",
             "--ioengine=psync", "--time_based", "--runtime=3", "--size=256M",
             f"--iomem_align={align}", "--output-format=json"],
            capture_output=True, text=True, cwd=cwd, check=True,
        )  # fmt: skip
    side = json.loads(out.stdout)["jobs"][0]["read" if rw == "read" else "write"]
    return int(side["io_bytes"]), float(side["bw_bytes"])


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="daxfs-cpu-", dir="/dev/shm"))
    try:
        server = start_server(Volume.create(work, size=1 << 30))
        try:
            with daxfs_mount(server.address, work) as dm, naive_mount(None, work) as nm:
                for name, mnt in (("daxfs", dm), ("naive", nm)):
                    data = mnt / "data"
                    with open(data, "wb") as f:
                        f.write(bytes(256 << 20))
                    pid = daemon_pid(mnt)
                    for rw in ("read", "write"):
                        for align in (4096, 0):
                            u0, s0 = cpu_seconds(pid)
                            moved, bw = fio(data, rw, align)
                            u1, s1 = cpu_seconds(pid)
                            mib = moved / 2**20
                            print(
                                f"{name} {rw:5} align={align:<4}: {bw / 1e6:6.0f} MB/s, daemon "
                                f"{(u1 - u0) / mib * 1e6:4.0f} us user + "
                                f"{(s1 - s0) / mib * 1e6:4.0f} us system per MiB",
                                flush=True,
                            )
                    data.unlink()
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
