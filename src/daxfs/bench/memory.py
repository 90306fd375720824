"""Memory-speed figures: the copy limit, the DAX path, the client library, the gRPC byte path.

Every copy is one single-threaded numpy call (``np.copyto`` / ``np.take``) so
the DAX path is compared with the same loop over private memory and over a
plain /dev/shm mapping. Destination buffers are touched before timing (no page
faults in the warm figures); the ``cold`` and ``net`` figures include opening
the file, mapping it and the first-touch faults, because a reader pays them.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from daxfs.bench.plan import Plan, size_label
from daxfs.bench.progress import Progress
from daxfs.bench.results import Results, digest, pattern
from daxfs.client.library import Client
from daxfs.shared.limits import MAX_RPC_IO

#: The server's largest Read: the byte path's request size.
RPC_CHUNK = MAX_RPC_IO

U8 = npt.NDArray[np.uint8]


def timed_copy(dst: npt.NDArray[Any], src: npt.NDArray[Any]) -> float:
    """Seconds of one ``np.copyto`` (a single-threaded memcpy for contiguous arrays)."""
    t = time.perf_counter()
    np.copyto(dst, src)
    return time.perf_counter() - t


def timed_take(src: npt.NDArray[Any], idx: npt.NDArray[Any], out: npt.NDArray[Any]) -> float:
    """Seconds of gathering rows ``idx`` of ``src`` into ``out``."""
    t = time.perf_counter()
    np.take(src, idx, axis=0, out=out)
    return time.perf_counter() - t


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def touched(n: int) -> U8:
    """A private buffer whose pages are already faulted in."""
    a = np.empty(n, dtype=np.uint8)
    a.fill(0)
    return a


def write_file(client: Client, path: str, data: U8) -> None:
    """Create ``path`` holding ``data`` (through an array() view), durable."""
    with client.open(path, "w+b") as f:
        view = f.array(np.uint8, len(data))
        np.copyto(view, data)
        f.fsync()
        del view


class ShmMapping:
    """A /dev/shm file holding ``data``, mapped shared and read-only: the non-daxfs baseline."""

    def __init__(self, data: U8) -> None:
        fd, self.path = tempfile.mkstemp(prefix="daxfs-bench-", dir="/dev/shm")
        try:
            os.ftruncate(fd, len(data))
            self.map = mmap.mmap(fd, len(data), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.view: U8 = np.frombuffer(self.map, dtype=np.uint8)
        np.copyto(self.view, data)

    def close(self) -> None:
        del self.view
        self.map.close()
        os.unlink(self.path)


def run_sequential(client: Client, res: Results, plan: Plan, progress: Progress) -> None:
    """Limit (private and /dev/shm copies) against DAX copy out and in, size by size."""
    for size in plan.seq_sizes:
        label = size_label(size)
        srcs = (pattern(size, 1), pattern(size, 2))
        sums = [digest(s) for s in srcs]
        rpath, wpath = f"/seq-{label}", f"/seq-{label}.w"
        write_file(client, rpath, srcs[0])
        write_file(client, wpath, np.zeros(size, dtype=np.uint8))
        shm = ShmMapping(srcs[0])
        dst = touched(size)
        rf, wf = client.open(rpath, "rb"), client.open(wpath, "r+b")
        try:
            rview, wview = rf.array(), wf.array()
            digest(rview)  # first touch of the mapping, outside the timed runs
            wview.fill(0)
            res.expect(f"read.{label}", sums[0])
            for rep in range(plan.reps):
                progress(f"sequential copies {label} (rep {rep + 1}/{plan.reps})")
                src = srcs[rep % 2]
                res.add(f"limit.ram.{label}", "GB/s", gbps(size, timed_copy(dst, src)))
                res.expect(f"limit.ram.{label}", sums[rep % 2])
                res.verify(f"limit.ram.{label}", digest(dst))
                res.add(f"limit.shm.{label}", "GB/s", gbps(size, timed_copy(dst, shm.view)))
                res.verify(f"read.{label}", digest(dst))
                dst.fill(0)
                res.add(f"dax.read.{label}", "GB/s", gbps(size, timed_copy(dst, rview)))
                res.verify(f"read.{label}", digest(dst))
                res.add(f"dax.write.{label}", "GB/s", gbps(size, timed_copy(wview, src)))
                res.expect(f"dax.write.{label}", sums[rep % 2])
                res.verify(f"dax.write.{label}", digest(wview))
                dst.fill(0)
                res.add(
                    f"dax.read_cold.{label}", "GB/s", gbps(size, _cold_read(client, rpath, dst))
                )
                res.verify(f"read.{label}", digest(dst))
            del rview, wview
        finally:
            rf.close()
            wf.close()
            shm.close()
            client.unlink(wpath)
        res.ratio(
            f"dax.read.{label}/limit.ram", f"dax.read.{label}", f"limit.ram.{label}", target=0.9
        )
        res.ratio(f"dax.read.{label}/limit.shm", f"dax.read.{label}", f"limit.shm.{label}")
        res.ratio(
            f"dax.write.{label}/limit.ram", f"dax.write.{label}", f"limit.ram.{label}", target=0.9
        )
        res.ratio(
            f"dax.read_cold.{label}/limit.ram", f"dax.read_cold.{label}", f"limit.ram.{label}"
        )


def _cold_read(client: Client, path: str, dst: U8) -> float:
    """open + array() + copy out + close: what a reader that did not map the file yet pays."""
    t = time.perf_counter()
    with client.open(path, "rb") as f:
        view = f.array()
        np.copyto(dst, view)
        del view
    return time.perf_counter() - t


def run_random(client: Client, res: Results, plan: Plan, progress: Progress) -> None:
    """Random 4 KiB and 64 B loads from the largest DAX file vs the same from private memory."""
    size = max(plan.seq_sizes)
    label = size_label(size)
    ram = pattern(size, 1)
    rng = np.random.default_rng(5)
    with client.open(f"/seq-{label}", "rb") as f:
        view = f.array()
        digest(view)  # faulted in, like ``ram``
        for unit, count, name in ((4096, plan.load_4k, "4k"), (64, plan.load_64b, "64b")):
            r2, v2 = ram.reshape(-1, unit), view.reshape(-1, unit)
            out_r = np.zeros((count, unit), dtype=np.uint8)
            out_v = np.zeros((count, unit), dtype=np.uint8)
            for rep in range(plan.reps):
                progress(f"random {name} loads over {label} (rep {rep + 1}/{plan.reps})")
                idx = rng.integers(0, len(r2), count)
                t = timed_take(r2, idx, out_r)
                res.add(f"limit.ram.load_{name}", "ns", t / count * 1e9, higher_is_better=False)
                t = timed_take(v2, idx, out_v)
                res.add(f"dax.load_{name}", "ns", t / count * 1e9, higher_is_better=False)
                res.expect(f"dax.load_{name}", digest(out_r))
                res.verify(f"dax.load_{name}", digest(out_v))
            res.ratio(f"dax.load_{name}/limit.ram", f"dax.load_{name}", f"limit.ram.load_{name}")
        del view, r2, v2


def run_library(client: Client, res: Results, plan: Plan, progress: Progress) -> None:
    """DaxFile read()/readinto()/write() of 64 MiB against one numpy copy (issue 2: >= 0.5x)."""
    size = plan.lib_size
    srcs = (pattern(size, 3), pattern(size, 4))
    sums = [digest(s) for s in srcs]
    path = "/library"
    write_file(client, path, srcs[0])
    dst = touched(size)
    with client.open(path, "r+b") as f:
        for rep in range(plan.reps):
            progress(f"client library 64 MiB read/readinto/write (rep {rep + 1}/{plan.reps})")
            src, want = srcs[rep % 2], sums[rep % 2]
            res.add("lib.numpy_copy", "GB/s", gbps(size, timed_copy(dst, src)))
            res.expect("lib.write", want)
            f.seek(0)
            t = time.perf_counter()
            f.write(src)
            res.add("lib.write", "GB/s", gbps(size, time.perf_counter() - t))
            dst.fill(0)
            f.seek(0)
            t = time.perf_counter()
            f.readinto(dst)
            res.add("lib.readinto", "GB/s", gbps(size, time.perf_counter() - t))
            res.verify("lib.write", digest(dst))
            f.seek(0)
            t = time.perf_counter()
            got = f.read(size)
            res.add("lib.read", "GB/s", gbps(size, time.perf_counter() - t))
            res.verify("lib.write", digest(got))
            del got
            # What any read() returning a new 64 MiB bytes object pays: allocation,
            # first-touch page faults, one copy.
            t = time.perf_counter()
            got = src.tobytes()
            res.add("lib.numpy_tobytes", "GB/s", gbps(size, time.perf_counter() - t))
            del got
    client.unlink(path)
    for op in ("read", "readinto", "write"):
        res.ratio(f"lib.{op}/numpy_copy", f"lib.{op}", "lib.numpy_copy", target=0.5)
    res.ratio("lib.read/numpy_tobytes", "lib.read", "lib.numpy_tobytes")


def run_network(client: Client, res: Results, plan: Plan, progress: Progress) -> None:
    """The same file read through the Read RPC (bytes over gRPC) and through the DAX path.

    Both sides are end to end: open, read every byte into the same buffer,
    close. The RPC side asks for the server's largest request (16 MiB).
    """
    size = plan.net_size
    label = size_label(size)
    path = f"/seq-{label}"
    if not client.exists(path):
        write_file(client, path, pattern(size, 1))
    want = digest(pattern(size, 1))
    res.expect(f"net.{label}", want)
    dst = touched(size)
    for rep in range(plan.reps):
        progress(f"{label} read: gRPC byte path vs DAX (rep {rep + 1}/{plan.reps})")
        dst.fill(0)
        res.add("net.grpc_read", "GB/s", gbps(size, _grpc_read(client, path, dst)))
        res.verify(f"net.{label}", digest(dst))
        dst.fill(0)
        res.add("net.dax_read", "GB/s", gbps(size, _cold_read(client, path, dst)))
        res.verify(f"net.{label}", digest(dst))
    res.info["net.size"] = size
    res.ratio("net.dax_read/grpc_read", "net.dax_read", "net.grpc_read", target=10.0)


def _grpc_read(client: Client, path: str, dst: U8) -> float:
    server = client.server
    t = time.perf_counter()
    opened = server.open(path, read=True, write=False, append=False, truncate=False, layout=False)
    try:
        off = 0
        while off < len(dst):
            data = server.read(opened.handle, off, RPC_CHUNK)
            if not data:
                break
            dst[off : off + len(data)] = np.frombuffer(data, dtype=np.uint8)
            off += len(data)
    finally:
        server.release(opened.handle)
    return time.perf_counter() - t


def persist_worker(address: str, path: str, reps: int, sizes: list[int]) -> dict[str, Any]:
    """Time ``persist()`` of freshly dirtied ranges; runs in a subprocess (see run_persist)."""
    from daxfs.client.library import connect

    out: dict[str, Any] = {"samples": {str(s): [] for s in sizes}}
    with connect(address) as c, c.open(path, "r+b") as f:
        view = f.array()
        for rep in range(reps):
            for size in sizes:
                view[:size] = rep + 1  # every page and cache line of the range dirty
                t = time.perf_counter()
                mode = f.persist(0, size)
                out["samples"][str(size)].append((time.perf_counter() - t) * 1e6)
        out["mode"] = str(mode)
        del view
    return out


def run_persist(client: Client, res: Results, plan: Plan, progress: Progress) -> None:
    """persist() of dirty ranges on both flush paths, each in its own process.

    libpmem reads ``PMEM_IS_PMEM_FORCE`` when it loads, so the msync run gets
    ``0`` (never pmem) and the pmem run ``1`` (always pmem) in a fresh process.
    """
    path = "/persist"
    size = max(plan.persist_sizes)
    write_file(client, path, np.zeros(size, dtype=np.uint8))
    try:
        for mode, force in (("msync", "0"), ("pmem", "1")):
            progress(f"persist() on the {mode} path")
            args = [client.address, path, str(plan.reps), *map(str, plan.persist_sizes)]
            env = dict(os.environ, PMEM_IS_PMEM_FORCE=force)
            out = subprocess.run(
                [sys.executable, "-m", "daxfs.bench.worker", "persist", *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"persist worker ({mode}) failed:\n{out.stderr}")
            doc = json.loads(out.stdout)
            if doc["mode"] != mode:
                raise RuntimeError(f"asked for the {mode} flush path, persist() used {doc['mode']}")
            for s in plan.persist_sizes:
                for value in doc["samples"][str(s)]:
                    res.add(f"persist.{mode}.{size_label(s)}", "us", value, higher_is_better=False)
    finally:
        client.unlink(path)
    for s in plan.persist_sizes:
        label = size_label(s)
        res.ratio(f"persist.pmem.{label}/msync", f"persist.pmem.{label}", f"persist.msync.{label}")
