#!/usr/bin/env python3
"""Spike (issue 16): the raw-protocol daemon vs the naive mfusepy passthrough, one run.

``.venv/bin/python benchmarks/fuse_spike/bench.py [--rounds N] [--mib M]``
(as root, /dev/fuse and fio needed) puts one file of M MiB in /dev/shm,
mounts it with ``rawfuse.py`` (beside this script) and with
``daxfs.bench.naive_passthrough`` (mfusepy, direct_io), and measures both in
interleaved rounds: sequential 1 MiB reads (a Python loop of ``os.preadv``
into an aligned 1 MiB buffer, 4 passes), fio random 4 KiB reads (psync, 1 job), and
``os.stat`` of the file. Prints best and median of each, the ratios, and the
load average at the start; then stat again as blocks of 2,000 calls taking
turns between the mounts in one loop, and the median of the per-block ratios
(the rounds' whole-loop stat rates swing with others' load). Both mounts
are always unmounted (``fusermount3 -uz``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent


def mounted(mp: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(mp) for line in f)


@contextlib.contextmanager
def serving(argv: list[str], mp: Path, log: Path) -> Iterator[tuple[Path, int]]:
    mp.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not mounted(mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv} did not mount: {log.read_text()}")
            time.sleep(0.05)
        yield mp, proc.pid
    finally:
        subprocess.run(["fusermount3", "-uz", str(mp)], check=False, capture_output=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (/proc/PID/stat utime + stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seq_read_gbps(path: Path, passes: int = 4) -> tuple[float, float]:
    """(GB/s, MiB read) over ``passes`` sequential passes of the file."""
    buf = mmap.mmap(-1, 1 << 20)  # page-aligned
    fd = os.open(path, os.O_RDONLY)
    try:
        total, t0 = 0, time.perf_counter()
        for _ in range(passes):
            off = 0
            while (n := os.preadv(fd, [buf], off)) > 0:
                total += n
                off += n
        return total / (time.perf_counter() - t0) / 1e9, total / (1 << 20)
    finally:
        os.close(fd)
        buf.close()


def randread_iops(path: Path, seconds: int) -> tuple[float, float]:
    """(IOPS, reads done)."""
    out = subprocess.run(
        [
            "fio",
            "--name=r",
            f"--filename={path}",
            "--rw=randread",
            "--bs=4k",
            "--ioengine=psync",
            "--numjobs=1",
            "--readonly",
            f"--size={path.stat().st_size}",
            f"--runtime={seconds}",
            "--time_based",
            "--output-format=json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    read = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    return float(read["iops"]), float(read["total_ios"])


def stat_per_s(path: Path, n: int = 20000) -> tuple[float, float]:
    """(calls/s, calls)."""
    p = str(path)
    t0 = time.perf_counter()
    for _ in range(n):
        os.stat(p)
    return n / (time.perf_counter() - t0), float(n)


def stat_paired(paths: dict[str, Path], blocks: int = 50, n: int = 2000) -> dict[str, list[float]]:
    """Per-block ``os.stat`` rates (calls/s) of each path, the paths taking turns.

    One process alternates blocks of ``n`` stats over the paths, rotating which
    goes first, so a path's block and its neighbours' run under the same load.
    Compare paths by the median of per-block ratios: a whole-loop rate per
    mount, measured at a different moment than the other mount's (a 0.4 s
    window each), moved by 10-20 % with others' load on 2 cores, both ways.
    """
    names = list(paths)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for b in range(blocks):
        for name in names[b % len(names) :] + names[: b % len(names)]:
            p = str(paths[name])
            t0 = time.perf_counter()
            for _ in range(n):
                os.stat(p)
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def paired_ratio(rates: dict[str, list[float]], a: str, b: str) -> str:
    """``a`` / ``b`` from :func:`stat_paired`: the median of per-block ratios and its quartiles."""
    ratios = sorted(x / y for x, y in zip(rates[a], rates[b], strict=True))
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    return f"{med:.3f} (quartiles {q1:.3f}-{q3:.3f}, {len(ratios)} blocks)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--fio-seconds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("fio") is None or not os.path.exists("/dev/fuse"):
        print("needs fio and /dev/fuse", file=sys.stderr)
        return 2

    load = os.getloadavg()
    shm = Path(tempfile.mkdtemp(prefix="fusespike-", dir="/dev/shm"))
    work = Path(tempfile.mkdtemp(prefix="fusespike-"))
    src = shm / "src"
    src.mkdir()
    data = src / "data.bin"
    with open(data, "wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(1 << 20))
    raw = [sys.executable, str(HERE / "rawfuse.py"), str(data), str(work / "raw")]
    naive = [sys.executable, "-m", "daxfs.bench.naive_passthrough", str(src), str(work / "naive")]
    # name -> (function, the unit of its work, the scale of daemon CPU per unit)
    tests: dict[str, tuple[Callable[[Path], tuple[float, float]], str, float]] = {
        "seq 1 MiB read, GB/s": (seq_read_gbps, "ms/GiB", 1024e3),
        "random 4 KiB read (fio psync, 1 job), IOPS": (
            lambda p: randread_iops(p, args.fio_seconds),
            "us/read",
            1e6,
        ),
        "stat, calls/s": (stat_per_s, "us/call", 1e6),
    }
    rates: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    try:
        with (
            serving(raw, work / "raw", work / "raw.log") as (raw_mp, raw_pid),
            serving(naive, work / "naive", work / "naive.log") as (naive_mp, naive_pid),
        ):
            targets = {
                "raw spike": (raw_mp / "data.bin", raw_pid),
                "naive mfusepy": (naive_mp / "data.bin", naive_pid),
            }
            for name, (path, _) in targets.items():  # correctness first
                with open(path, "rb") as a, open(data, "rb") as b:
                    assert a.read() == b.read(), name
            for r in range(args.rounds):
                for test, (fn, _, scale) in tests.items():
                    for name, (path, pid) in targets.items():
                        c0 = cpu_seconds(pid)
                        rate, units = fn(path)
                        cpu = (cpu_seconds(pid) - c0) * scale / units
                        rates.setdefault((test, name), []).append(rate)
                        cpus.setdefault((test, name), []).append(cpu)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            paired = stat_paired({name: path for name, (path, _) in targets.items()})
        init = (work / "raw.log").read_text().strip()
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    loads = " ".join(f"{x:.1f}" for x in load)
    print(f"load average at start: {loads}; {os.cpu_count()} CPUs")
    print(f"file: {args.mib} MiB in /dev/shm; rounds: {args.rounds}; raw daemon: {init}")
    print()
    print(
        "| operation | raw spike best / median | naive mfusepy best / median | ratio (best) "
        "| daemon CPU, raw / naive (median) |"
    )
    print("|---|---|---|---|---|")
    for test, (_, unit, _) in tests.items():
        rv, nv = rates[(test, "raw spike")], rates[(test, "naive mfusepy")]
        fmt = "{:,.2f}" if "GB/s" in test else "{:,.0f}"

        def cell(v: list[float], fmt: str = fmt) -> str:
            return f"{fmt.format(max(v))} / {fmt.format(statistics.median(v))}"

        rc = statistics.median(cpus[(test, "raw spike")])
        nc = statistics.median(cpus[(test, "naive mfusepy")])
        print(
            f"| {test} | {cell(rv)} | {cell(nv)} | {max(rv) / max(nv):.2f} "
            f"| {rc:,.1f} / {nc:,.1f} {unit} |"
        )
    print()
    print(f"stat, paired blocks, raw / naive: {paired_ratio(paired, 'raw spike', 'naive mfusepy')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
