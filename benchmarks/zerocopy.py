"""The zero-copy path against its limits (issue 17), with 4 KiB and 2 MiB pages side by side.

    .venv/bin/python benchmarks/zerocopy.py [--reps 5] [--sizes 64M,256M,1G] [--json out.json]

Run as root: the 2 MiB case mounts a ``huge=always`` tmpfs in a temporary
directory for its region (it is skipped, with the reason, where that fails).
The 4 KiB case puts its region in /dev/shm. Each case formats an 8 GiB sparse
region with the matching block size (4 KiB or 2 MiB), starts a server and
measures, in one run:

- **fresh view**: open + ``array()`` + copy out into a private buffer + close,
  against one ``np.copyto`` between two private arrays of the same size (the
  memcpy limit), paired repetition by repetition;
- **warm view**: the same copy from a view already mapped;
- **random loads**: gathering random 4 KiB rows and 64 B rows of a 1 GiB
  view, against the same gathers from a private array (numpy's private
  arrays get transparent huge pages: that is the limit);
- **appends**: GetLayout calls (the server's layout counter) for a 1 GiB file
  written in 16 MiB pieces.

Ratios are medians of per-repetition ratios (min-max in brackets); higher is
better for copies (view / memcpy speed), lower for loads (view / private time).
Every copy is checked against its source. Nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from daxfs.client import Client, connect
from daxfs.shared.format import HUGE_BLOCK_SIZE, MIB
from daxfs.shared.hugepages import mapped_huge, mount_huge_tmpfs
from daxfs.testing import Volume, assert_fsck_clean, start_server

U8 = npt.NDArray[np.uint8]
#: The timer: wall time, or this thread's CPU time (``--clock cpu``), which a
#: loaded machine inflates far less (waits for a core are not counted; the
#: server's share of an open, well under 1 ms, is not either).
clock = time.perf_counter
GIB = 1024 * MIB
REGION = 8 * GIB  # sparse; big enough that the growth chunk reaches its 1 GiB cap
PIECE = 16 * MIB


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MIB, "G": GIB}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].isalpha() else int(text)


def label(size: int) -> str:
    return f"{size // GIB}G" if size % GIB == 0 else f"{size // MIB}M"


def touched(n: int, seed: int | None = None) -> U8:
    """A private array with its pages faulted in (random bytes if ``seed`` is given).

    It starts on a page boundary, as a view does, and asks for transparent huge
    pages, as numpy does for large arrays. The alignment matters more than one
    would think: glibc's forward memcpy runs at about 0.4 x its speed when the
    destination sits a few bytes to 64 bytes past the source modulo 4 KiB
    ("4K aliasing" of loads behind stores). A large ``np.empty`` starts 16 bytes
    past a page (malloc's header), so copying a page-aligned view into it hits
    that case while copying one ``np.empty`` array into another does not; the
    limit must copy from a page-aligned source to compare like with like. The
    effect on a plain ``np.empty`` destination is measured separately
    (:func:`heap_array`).
    """
    buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    a: U8 = np.frombuffer(buf, dtype=np.uint8)
    if seed is None:
        a.fill(0)
    else:
        a[:] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    return a


def heap_array(n: int) -> U8:
    """A destination as ``np.empty`` gives it: from malloc, 16 bytes past a page."""
    a = np.empty(n, dtype=np.uint8)
    a.fill(0)
    return a


def copy_time(dst: U8, src: U8) -> float:
    """Seconds of one np.copyto: a single-threaded memcpy for contiguous arrays."""
    t = clock()
    np.copyto(dst, src)
    return clock() - t


def take_time(rows: U8, idx: npt.NDArray[np.int64], out: U8) -> float:
    """Seconds of gathering rows ``idx`` into ``out``."""
    t = clock()
    np.take(rows, idx, axis=0, out=out)
    return clock() - t


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@contextmanager
def case_dir(pages: str) -> Iterator[Path]:
    """A directory whose files get ``pages`` pages: /dev/shm, or a huge=always tmpfs."""
    if pages == "4k":
        d = Path(tempfile.mkdtemp(prefix="daxfs-zc-", dir="/dev/shm"))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return
    d = Path(tempfile.mkdtemp(prefix="daxfs-zc-huge-"))
    try:
        mount_huge_tmpfs(str(d))
        try:
            yield d
        finally:
            subprocess.run(["umount", str(d)], check=False)
    finally:
        os.rmdir(d)


def fresh_copy(client: Client, path: str, dst: U8) -> float:
    """open + array() + copy out + close: what a reader that never mapped the file pays."""
    t = clock()
    with client.open(path, "rb") as f:
        view = f.array()
        np.copyto(dst, view)
        del view
    return clock() - t


def run_case(pages: str, sizes: list[int], reps: int, loads: tuple[int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {"pages": pages, "clock": clock.__name__, "load_start": load_average()}
    block = HUGE_BLOCK_SIZE if pages == "2m" else 4096
    with case_dir(pages) as d:
        volume = Volume.create(d, size=REGION, block_size=block)
        server = start_server(volume)
        try:
            with connect(server.address) as client:
                out["copies"] = copies(client, sizes, reps)
                out["loads"] = random_loads(client, max(sizes), reps, loads)
                out["appends"] = appends(client)
        finally:
            code = server.stop()
            log = server.log.read_text()
            out["server_pages"] = [ln for ln in log.splitlines() if "pages=" in ln][-1:]
        if code != 0 or "Traceback" in log:
            raise SystemExit(f"server failed ({code}):\n{log}")
        assert_fsck_clean(volume)
    out["load_end"] = load_average()
    return out


def copies(client: Client, sizes: list[int], reps: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for size in sizes:
        name = label(size)
        src, dst, heap = touched(size, seed=size), touched(size), heap_array(size)
        path = f"/copy-{name}"
        with client.open(path, "w+b") as f:
            f.allocate(0, size)
            np.copyto(f.array(), src)
        mem, fresh, warm, heap_mem, heap_warm = [], [], [], [], []
        with client.open(path, "rb") as f:
            view = f.array()
            huge = mapped_huge(int(view.ctypes.data), size) / size
            for _ in range(reps):
                dst.fill(0)
                t_mem = copy_time(dst, src)
                dst.fill(0)
                t_fresh = fresh_copy(client, path, dst)
                if not np.array_equal(dst, src):
                    raise SystemExit(f"fresh copy of {name} differs from what was written")
                dst.fill(0)
                t_warm = copy_time(dst, view)
                if not np.array_equal(dst, src):
                    raise SystemExit(f"warm copy of {name} differs from what was written")
                heap.fill(0)
                t_heap_mem = copy_time(heap, src)
                heap.fill(0)
                t_heap_warm = copy_time(heap, view)
                if not np.array_equal(heap, src):
                    raise SystemExit(f"warm copy of {name} into np.empty differs")
                mem.append(size / t_mem / 1e9)
                fresh.append(t_mem / t_fresh)
                warm.append(t_mem / t_warm)
                heap_mem.append(size / t_heap_mem / 1e9)
                heap_warm.append(t_heap_mem / t_heap_warm)
            del view  # unmapped before the unlink: no recall of our own view
        if size != max(sizes):
            client.unlink(path)
        res[name] = {
            "memcpy_GBps": summary(mem),
            "fresh_over_memcpy": summary(fresh),
            "warm_over_memcpy": summary(warm),
            "heap_memcpy_GBps": summary(heap_mem),
            "heap_warm_over_memcpy": summary(heap_warm),
            "view_huge_fraction": huge,
        }
    return res


def random_loads(client: Client, size: int, reps: int, counts: tuple[int, int]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    private = touched(size, seed=size)
    rng = np.random.default_rng(17)
    with client.open(f"/copy-{label(size)}", "rb") as f:
        view = f.array()
        res["private_huge_fraction"] = mapped_huge(int(private.ctypes.data), size) / size
        for unit, count, name in ((4096, counts[0], "4k"), (64, counts[1], "64b")):
            rows_p, rows_v = private.reshape(-1, unit), view.reshape(-1, unit)
            out_p = np.zeros((count, unit), dtype=np.uint8)
            out_v = np.zeros((count, unit), dtype=np.uint8)
            ns_p, ns_v, ratio = [], [], []
            for _ in range(reps):
                idx = rng.integers(0, len(rows_p), count)
                t_p = take_time(rows_p, idx, out_p)
                t_v = take_time(rows_v, idx, out_v)
                if not np.array_equal(out_p, out_v):
                    raise SystemExit("random loads from the view differ from private memory")
                ns_p.append(t_p / count * 1e9)
                ns_v.append(t_v / count * 1e9)
                ratio.append(t_v / t_p)
            del rows_v
            res[name] = {
                "private_ns": summary(ns_p),
                "view_ns": summary(ns_v),
                "view_over_private": summary(ratio),
            }
        del view
    client.unlink(f"/copy-{label(size)}")
    return res


def appends(client: Client) -> dict[str, Any]:
    piece = touched(PIECE, seed=3)
    before = client.stats().layouts
    with client.open("/append", "wb") as f:
        for _ in range(GIB // PIECE):
            f.write(piece)
    calls = client.stats().layouts - before
    st = client.stat("/append")
    client.unlink("/append")
    return {"getlayout_per_gib": calls, "size": st.size, "allocated_after_close": st.allocated}


def fmt(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def table(cases: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, list[str]]] = []
    sizes = list(cases[0]["copies"])
    for name in sizes:
        rows.append(
            (f"memcpy {name}, GB/s", [fmt(c["copies"][name]["memcpy_GBps"], 1) for c in cases])
        )
        rows.append(
            (
                f"fresh open+array()+copy {name} / memcpy",
                [fmt(c["copies"][name]["fresh_over_memcpy"]) for c in cases],
            )
        )
        rows.append(
            (
                f"warm view copy {name} / memcpy",
                [fmt(c["copies"][name]["warm_over_memcpy"]) for c in cases],
            )
        )
        rows.append(
            (
                f"into np.empty (16 B past a page): memcpy {name}, GB/s",
                [fmt(c["copies"][name]["heap_memcpy_GBps"], 1) for c in cases],
            )
        )
        rows.append(
            (
                f"into np.empty: warm view copy {name} / the same memcpy",
                [fmt(c["copies"][name]["heap_warm_over_memcpy"]) for c in cases],
            )
        )
        rows.append(
            (
                f"view mapped with 2 MiB entries, {name}",
                [f"{c['copies'][name]['view_huge_fraction']:.0%}" for c in cases],
            )
        )
    for name in ("4k", "64b"):
        rows.append(
            (
                f"random {name} load, view / private",
                [fmt(c["loads"][name]["view_over_private"]) for c in cases],
            )
        )
        rows.append(
            (
                f"random {name} load ns, view vs private",
                [
                    "{:.0f} vs {:.0f}".format(
                        c["loads"][name]["view_ns"]["median"],
                        c["loads"][name]["private_ns"]["median"],
                    )
                    for c in cases
                ],
            )
        )
    rows.append(
        (
            "private array mapped with 2 MiB entries",
            [f"{c['loads']['private_huge_fraction']:.0%}" for c in cases],
        )
    )
    rows.append(
        (
            "GetLayout calls, 1 GiB appended in 16 MiB",
            [str(c["appends"]["getlayout_per_gib"]) for c in cases],
        )
    )
    rows.append(
        ("load average start / end", [f"{c['load_start']} / {c['load_end']}" for c in cases])
    )
    head = ["figure", *[("4 KiB pages" if c["pages"] == "4k" else "2 MiB pages") for c in cases]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([r[0], *r[1]]) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sizes", default="64M,256M,1G")
    ap.add_argument("--loads", default="20000,200000", help="random 4 KiB and 64 B loads per rep")
    ap.add_argument("--pages", default="4k,2m")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args(argv)
    global clock
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    l4, l64 = (int(x) for x in args.loads.split(","))
    cases = []
    for pages in args.pages.split(","):
        try:
            cases.append(run_case(pages, sizes, args.reps, (l4, l64)))
        except OSError as exc:
            print(f"{pages} pages skipped: {exc}", file=sys.stderr)
    print(table(cases))
    for c in cases:
        print(f"{c['pages']}: server said {c['server_pages']}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(cases, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
