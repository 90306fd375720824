"""Metadata figures: create/stat/unlink through a mount, GetLayout round trips, layouts per open.

``GetLayout`` is timed against two bare unary calls on the same channel: the
health service's ``Check`` (no daxfs code at all) and daxfs's ``Stats`` (a
servicer call with no namespace work), interleaved call by call so a noisy
moment hits all three. Layouts per open count what the server granted
(``Stats.layouts``) while a whole file is read or written through the library.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from daxfs.bench.plan import Plan, size_label
from daxfs.bench.progress import Progress
from daxfs.bench.results import Results
from daxfs.client.library import Client
from daxfs.proto import daxfs_pb2 as pb
from daxfs.shared.format import MIB

#: Request size of the layout-counting reads and writes.
CHUNK = 16 * MIB


def run_namespace(directory: Path, target: str, res: Results, count: int) -> None:
    """create+close, stat, unlink of ``count`` files in ``directory``: one sample each."""
    names = [str(directory / f"m{i:06d}") for i in range(count)]
    t = time.perf_counter()
    for name in names:
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    res.add(f"meta.{target}.create", "ops/s", count / (time.perf_counter() - t))
    t = time.perf_counter()
    for name in names:
        os.stat(name)
    res.add(f"meta.{target}.stat", "ops/s", count / (time.perf_counter() - t))
    t = time.perf_counter()
    for name in names:
        os.unlink(name)
    res.add(f"meta.{target}.unlink", "ops/s", count / (time.perf_counter() - t))


def _percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def run_rpc_latency(client: Client, res: Results, plan: Plan, progress: Progress) -> None:
    """GetLayout of a whole file vs health Check vs Stats: p50 and p99 per repetition, in us."""
    path = "/layout-probe"
    with client.open(path, "w+b") as f:
        f.write(b"x" * (4 * MIB))
    stub, md = client.conn.stub, client.conn.metadata
    health = health_pb2_grpc.HealthStub(client.conn.channel)
    check_req = health_pb2.HealthCheckRequest(service="daxfs.v1.Daxfs")
    stats_req = pb.StatsRequest()
    with client.open(path, "rb") as f:
        layout_req = pb.GetLayoutRequest(
            caller=client.server.caller,
            handle=f.handle,
            offset=0,
            length=f.size,
            mode=pb.LAYOUT_MODE_READ,
        )
        calls: tuple[tuple[str, Callable[[], object]], ...] = (
            ("getlayout", lambda: stub.GetLayout(layout_req, metadata=md, timeout=30)),
            ("check", lambda: health.Check(check_req, metadata=md, timeout=30)),
            ("stats", lambda: stub.Stats(stats_req, metadata=md, timeout=30)),
        )
        for _, call in calls:
            for _ in range(20):
                call()  # warm the channel and the server's threads
        for rep in range(plan.reps):
            progress(f"GetLayout vs bare unary round trips (rep {rep + 1}/{plan.reps})")
            samples: dict[str, list[float]] = {name: [] for name, _ in calls}
            for _ in range(plan.rpc_calls):
                for name, call in calls:
                    t = time.perf_counter()
                    call()
                    samples[name].append((time.perf_counter() - t) * 1e6)
            for name, values in samples.items():
                res.add(f"rpc.{name}.p50", "us", statistics.median(values), higher_is_better=False)
                res.add(f"rpc.{name}.p99", "us", _percentile(values, 99), higher_is_better=False)
    client.unlink(path)
    res.ratio("rpc.getlayout.p50/check.p50", "rpc.getlayout.p50", "rpc.check.p50", target=1.2,
              at_most=True)  # fmt: skip
    res.ratio("rpc.getlayout.p50/stats.p50", "rpc.getlayout.p50", "rpc.stats.p50")
    res.ratio("rpc.getlayout.p99/check.p99", "rpc.getlayout.p99", "rpc.check.p99")


def run_layouts_per_open(client: Client, res: Results, plan: Plan, progress: Progress) -> None:
    """Layouts granted for one open + whole-file read, and one open + sequential write."""
    size = plan.net_size
    label = size_label(size)
    buf = np.zeros(CHUNK, dtype=np.uint8)
    src = path = f"/seq-{label}"
    for rep in range(plan.reps):
        progress(f"layouts per open, {label} read and write (rep {rep + 1}/{plan.reps})")
        before = client.stats().layouts
        with client.open(src, "rb") as f:
            while f.readinto(buf):
                pass
        res.add(f"layout.per_open.read.{label}", "calls", client.stats().layouts - before,
                higher_is_better=False)  # fmt: skip
        path = f"/layout-write-{rep}"
        before = client.stats().layouts
        with client.open(path, "wb") as f:
            for _ in range(size // CHUNK):
                f.write(buf)
        res.add(f"layout.per_open.write.{label}", "calls", client.stats().layouts - before,
                higher_is_better=False)  # fmt: skip
        client.unlink(path)
