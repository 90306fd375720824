#!/usr/bin/env python3
"""The mount's two front ends against the naive FUSE, side by side in one run (issue 16).

``.venv/bin/python benchmarks/fuse_backends.py [--rounds N] [--mib M]`` (as
root; /dev/fuse and fio needed) starts a daxfs server on a fresh region in
/dev/shm, writes one file of M MiB, and mounts it three ways: ``daxfs mount
--backend libfuse`` (mfusepy), ``daxfs mount --backend kernel`` (the daemon
that speaks the kernel protocol itself, ``daxfs.client.fuse.kernel``), and the
naive mfusepy passthrough of a tmpfs directory holding the same bytes
(``daxfs.bench.naive_passthrough``, direct_io: the filesystem a user would
write instead). It then measures all three in interleaved rounds, with the
spike's measures (``fuse_spike/bench.py``): sequential 1 MiB reads, fio random
4 KiB reads and writes (psync, 1 job), ``os.stat``, create + write + close +
unlink of small files, the same without the write (metadata alone), and
mkdir + rename + rmdir. Prints best and median, each daxfs front end's ratio
to the naive FUSE (best / best and median / median), the daemons' CPU per
unit of work (``/proc/PID/stat``, all threads), the daxfs kernel mount's
server round trips and the server's CPU per unit of work (its ``user.daxfs.iostats``: calls, less
those that rode with another), and the load
average at the start. ``--only stat,create`` runs the tests whose names
contain one of the words. After a stat test, the kernel mount and the naive
FUSE are compared once more in blocks of 2,000 stats taking turns in one
loop (the median of per-block ratios: the rounds' 0.4 s windows swing by
10-20 % with others' load), with the FUSE requests that reached the daxfs
kernel daemon meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fuse_spike"))

from bench import (  # noqa: E402
    cpu_seconds,
    paired_ratio,
    randread_iops,
    seq_read_gbps,
    serving,
    stat_paired,
    stat_per_s,
)

from daxfs.testing import Volume, fuse_mount, start_server  # noqa: E402


def randwrite_iops(path: Path, seconds: int) -> tuple[float, float]:
    """(IOPS, writes done): fio random 4 KiB writes over the file, psync, 1 job."""
    out = subprocess.run(
        ["fio", "--name=w", f"--filename={path}", "--rw=randwrite", "--bs=4k",
         "--ioengine=psync", "--numjobs=1", f"--size={path.stat().st_size}",
         f"--runtime={seconds}", "--time_based", "--output-format=json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    write = json.loads(out[out.index("{") :])["jobs"][0]["write"]
    return float(write["iops"]), float(write["total_ios"])


def create_unlink_per_s(path: Path, n: int = 200) -> tuple[float, float]:
    """(files/s, files): create + write 100 bytes + close, then unlink, in the file's directory."""
    d = path.parent / f"meta-{os.getpid()}"
    d.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for i in range(n):
        fd = os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, b"x" * 100)
        os.close(fd)
    for i in range(n):
        os.unlink(d / f"f{i}")
    rate = n / (time.perf_counter() - t0)
    d.rmdir()
    return rate, float(n)


def create_empty_unlink_per_s(path: Path, n: int = 200) -> tuple[float, float]:
    """(files/s, files): create + close, then unlink (no data: the metadata path alone)."""
    d = path.parent / f"empty-{os.getpid()}"
    d.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for i in range(n):
        os.close(os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644))
    for i in range(n):
        os.unlink(d / f"f{i}")
    rate = n / (time.perf_counter() - t0)
    d.rmdir()
    return rate, float(n)


def mkdir_rename_rmdir_per_s(path: Path, n: int = 100) -> tuple[float, float]:
    """(directories/s, directories): mkdir, rename, rmdir of each."""
    d = path.parent / f"dirs-{os.getpid()}"
    d.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for i in range(n):
        os.mkdir(d / f"a{i}")
    for i in range(n):
        os.rename(d / f"a{i}", d / f"b{i}")
    for i in range(n):
        os.rmdir(d / f"b{i}")
    rate = n / (time.perf_counter() - t0)
    d.rmdir()
    return rate, float(n)


def server_calls(path: Path) -> int:
    """Server round trips the daxfs mount holding ``path`` has made (its iostats):
    its calls less those that rode with another (a closed file's Release)."""
    doc = json.loads(os.getxattr(path.parent, "user.daxfs.iostats"))
    return sum(int(v) for v in doc.get("rpcs", {}).values()) - int(doc.get("rpcs_carried", 0))


def daemon_requests(path: Path) -> dict[str, int]:
    """FUSE requests the kernel has sent the daxfs mount holding ``path``, by opcode."""
    doc = json.loads(os.getxattr(path.parent, "user.daxfs.iostats"))
    return {op: int(n) for op, n in doc.get("requests", {}).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--fio-seconds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated words: run the tests named so")
    ap.add_argument(
        "--cache-metadata",
        action="store_true",
        help="mount daxfs with --cache-metadata (the kernel backend's kernel caches then too)",
    )
    args = ap.parse_args()
    extra = ["--cache-metadata"] if args.cache_metadata else []
    if shutil.which("fio") is None or not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        print("needs root, fio and /dev/fuse", file=sys.stderr)
        return 2
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="fusebackends-", dir="/dev/shm"))
    blob = os.urandom(args.mib << 20)
    tests: dict[str, tuple[Callable[[Path], tuple[float, float]], str, float]] = {
        "seq 1 MiB read, GB/s": (seq_read_gbps, "ms/GiB", 1024e3),
        "random 4 KiB read (fio psync), IOPS": (
            lambda p: randread_iops(p, args.fio_seconds), "us/op", 1e6),
        "random 4 KiB write (fio psync), IOPS": (
            lambda p: randwrite_iops(p, args.fio_seconds), "us/op", 1e6),
        "stat, calls/s": (lambda p: stat_per_s(p, 100_000), "us/call", 1e6),
        "create+write+close+unlink, files/s": (create_unlink_per_s, "us/file", 1e6),
        "create+close+unlink (no data), files/s": (create_empty_unlink_per_s, "us/file", 1e6),
        "mkdir+rename+rmdir, dirs/s": (mkdir_rename_rmdir_per_s, "us/dir", 1e6),
    }  # fmt: skip
    words = [w for w in args.only.split(",") if w]
    if words:
        tests = {t: v for t, v in tests.items() if any(w in t for w in words)}
    calls: dict[str, list[float]] = {}
    #: The server's CPU per unit while the daxfs kernel mount ran a test.
    server_cpus: dict[str, list[float]] = {}
    rates: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    names = ("daxfs kernel", "daxfs libfuse", "naive mfusepy")
    paired: dict[str, list[float]] = {}
    reached: dict[str, int] = {}
    server = None
    try:
        server = start_server(Volume.create(work, size=max(4 * args.mib, 256) << 20))
        with ExitStack() as stack:
            targets: dict[str, tuple[Path, int]] = {}
            for backend in ("kernel", "libfuse"):
                m = stack.enter_context(
                    fuse_mount(
                        server.address,
                        work / f"mnt-{backend}",
                        *extra,
                        check=False,
                        backend=backend,
                    )
                )
                targets[f"daxfs {backend}"] = (m.path / "data.bin", m.proc.pid)
            (targets["daxfs kernel"][0]).write_bytes(blob)
            src = work / "naive-src"
            src.mkdir()
            (src / "data.bin").write_bytes(blob)
            naive = [sys.executable, "-m", "daxfs.bench.naive_passthrough", str(src),
                     str(work / "naive")]  # fmt: skip
            mp, pid = stack.enter_context(serving(naive, work / "naive", work / "naive.log"))
            targets["naive mfusepy"] = (mp / "data.bin", pid)
            for name, (path, _) in targets.items():  # correctness first
                assert path.read_bytes() == blob, name
            for r in range(args.rounds):
                for test, (fn, _, scale) in tests.items():
                    # Each round starts with another mount: the first to run a
                    # test may run colder (the daxfs kernel mount was always first).
                    for name in names[r % 3 :] + names[: r % 3]:
                        path, pid = targets[name]
                        c0 = cpu_seconds(pid)
                        s0 = cpu_seconds(server.proc.pid)
                        k0 = server_calls(path) if name == "daxfs kernel" else 0
                        rate, units = fn(path)
                        cpu = (cpu_seconds(pid) - c0) * scale / units
                        if name == "daxfs kernel":
                            calls.setdefault(test, []).append((server_calls(path) - k0) / units)
                            served = (cpu_seconds(server.proc.pid) - s0) * scale / units
                            server_cpus.setdefault(test, []).append(served)
                        rates.setdefault((test, name), []).append(rate)
                        cpus.setdefault((test, name), []).append(cpu)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            if any("stat" in t for t in tests):
                # The kernel mount against the naive one in blocks taking turns
                # (not daxfs libfuse: every one of its stats is a request).
                kernel = targets["daxfs kernel"][0]
                r0 = daemon_requests(kernel)
                paired = stat_paired({x: targets[x][0] for x in ("daxfs kernel", "naive mfusepy")})
                r1 = daemon_requests(kernel)
                # Less the read of this count: os.getxattr asks twice (with
                # 128 bytes, then, told ERANGE, with 64 KiB).
                r1["GETXATTR"] = r1.get("GETXATTR", 0) - 2
                reached = {op: n - r0.get(op, 0) for op, n in r1.items() if n != r0.get(op, 0)}
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    loads = " ".join(f"{x:.1f}" for x in load)
    print(f"load average at start: {loads}; {os.cpu_count()} CPUs; file {args.mib} MiB; "
          f"rounds {args.rounds}; daxfs mounts {' '.join(extra) or 'without caching'}")  # fmt: skip
    print()
    print(
        "| operation | daxfs kernel best / median | daxfs libfuse best / median "
        "| naive best / median | kernel / naive (best, median) "
        "| libfuse / naive (best, median) | daemon CPU kernel / libfuse / naive (median) "
        "| daxfs kernel: server round trips, server CPU per unit (median) |"
    )
    print("|---|---|---|---|---|---|---|---|")  # fmt: skip
    for test, (_, unit, _) in tests.items():
        k, lf, n = (rates[(test, x)] for x in names)
        fmt = "{:,.2f}" if "GB/s" in test else "{:,.0f}"

        def cell(v: list[float], fmt: str = fmt) -> str:
            return f"{fmt.format(max(v))} / {fmt.format(statistics.median(v))}"

        def ratio(a: list[float], b: list[float]) -> str:
            return f"{max(a) / max(b):.2f}, {statistics.median(a) / statistics.median(b):.2f}"

        c = [statistics.median(cpus[(test, x)]) for x in names]
        print(f"| {test} | {cell(k)} | {cell(lf)} | {cell(n)} | {ratio(k, n)} | {ratio(lf, n)} "
              f"| {c[0]:,.1f} / {c[1]:,.1f} / {c[2]:,.1f} {unit} "
              f"| {statistics.median(calls[test]):.2f}, "
              f"{statistics.median(server_cpus[test]):,.1f} {unit} |")  # fmt: skip
    if paired:
        done = sum(len(v) for v in paired.values()) * 2000
        print()
        print(f"stat, paired blocks of 2,000 (one loop, the two mounts taking turns), daxfs "
              f"kernel / naive: {paired_ratio(paired, 'daxfs kernel', 'naive mfusepy')}; "
              f"requests reaching the daxfs kernel daemon in those {done:,} stats: "
              f"{reached or 'none'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
