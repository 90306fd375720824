"""Cross-guest store-to-load latency: two processes ping-pong a counter.

Through the region: each process maps the same daxfs file with ``array()``
(its own client, its own mapping, as two guests would) and spins on a 64-bit
word the other one stores. Through a mount: the same game with ``pwrite`` and
``pread`` of 8 bytes on one file of a mount (every read is a FUSE request on
a direct_io daxfs mount). One-way latency = median round trip / 2.

The partner runs in a subprocess (``daxfs.bench.worker``); it first stores a
"ready" word, then answers ``rounds`` pings. Both sides give up after a
deadline instead of spinning forever.
"""

from __future__ import annotations

import functools
import os
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from daxfs.bench.plan import Plan
from daxfs.bench.progress import Progress
from daxfs.bench.results import Results
from daxfs.client.library import Client

#: Word indexes in the shared page; PING and PONG sit on different cache lines.
PING, PONG, READY = 0, 8, 16
DEADLINE_S = 120.0
_U64 = struct.Struct("<Q")


class PingTimeout(Exception):
    """The partner stopped answering."""


def _spin(load: Callable[[], int], want: int, deadline: float) -> None:
    n = 0
    while load() != want:
        n += 1
        if n & 0xFFFF == 0 and time.monotonic() > deadline:
            raise PingTimeout(f"no answer {want} before the deadline")


def _word(words: npt.NDArray[np.uint64], i: int) -> int:
    return int(words[i])


def _store(words: npt.NDArray[np.uint64], i: int, value: int) -> None:
    words[i] = value


# -- the partner (runs in daxfs.bench.worker) ---------------------------------


def region_partner(address: str, path: str, rounds: int) -> dict[str, Any]:
    from daxfs.client.library import connect

    deadline = time.monotonic() + DEADLINE_S
    with connect(address) as c, c.open(path, "r+b") as f:
        words = f.array(np.uint64, (512,))
        words[READY] = 1
        for i in range(1, rounds + 1):
            _spin(functools.partial(_word, words, PING), i, deadline)
            words[PONG] = i
        del words
    return {"rounds": rounds}


def file_partner(path: str, rounds: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, _U64.pack(1), READY * 8)
        for i in range(1, rounds + 1):
            _spin(lambda: _U64.unpack(os.pread(fd, 8, PING * 8))[0], i, deadline)
            os.pwrite(fd, _U64.pack(i), PONG * 8)
    finally:
        os.close(fd)
    return {"rounds": rounds}


# -- the pinging side -------------------------------------------------------


def _partner(kind: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "daxfs.bench.worker", kind, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen[bytes], *, failed: bool) -> None:
    """Wait for the partner; after a failure on this side, stop it instead."""
    if failed:
        proc.kill()
        proc.communicate()
        return
    try:
        _, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise PingTimeout("the ping-pong partner did not finish") from None
    if proc.returncode != 0:
        raise RuntimeError(f"ping-pong partner failed:\n{err.decode(errors='replace')}")


def _ping(
    store: Callable[[int], None],
    load_pong: Callable[[], int],
    load_ready: Callable[[], int],
    proc: subprocess.Popen[bytes],
    res: Results,
    name: str,
    plan: Plan,
    rounds: int,
    progress: Progress,
) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while load_ready() != 1:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise PingTimeout(f"{name}: the partner never became ready")
        time.sleep(0.001)
    i = 0
    for rep in range(plan.reps):
        progress(f"cross-guest ping-pong {name} (rep {rep + 1}/{plan.reps})")
        trips = []
        for _ in range(rounds):
            i += 1
            t = time.perf_counter()
            store(i)
            _spin(load_pong, i, deadline)
            trips.append(time.perf_counter() - t)
        # The median round trip: a preempted partner (2 cores, other work) spoils a
        # few trips, not the figure.
        res.add(f"cross.{name}", "us", statistics.median(trips) / 2 * 1e6,
                higher_is_better=False)  # fmt: skip


def run_region(client: Client, res: Results, plan: Plan, progress: Progress) -> None:
    path = "/pingpong"
    with client.open(path, "w+b") as f:
        words = f.array(np.uint64, (512,))
        words[:] = 0
        rounds = plan.ping_region
        proc = _partner("region", client.address, path, str(rounds * plan.reps))
        failed = True
        try:
            _ping(functools.partial(_store, words, PING), functools.partial(_word, words, PONG),
                  functools.partial(_word, words, READY), proc, res, "region", plan, rounds,
                  progress)  # fmt: skip
            failed = False
        finally:
            _finish(proc, failed=failed)
        del words
    client.unlink(path)


def run_file(path: str, name: str, res: Results, plan: Plan, progress: Progress) -> None:
    """Ping-pong through ``path`` (a file on a mount; created here, removed after)."""
    with open(path, "wb") as f:
        f.write(bytes(4096))
    fd = os.open(path, os.O_RDWR)
    rounds = plan.ping_mount
    proc = _partner("file", path, str(rounds * plan.reps))
    failed = True
    try:

        def load(word: int) -> int:
            value: int = _U64.unpack(os.pread(fd, 8, word * 8))[0]
            return value

        def store(i: int) -> None:
            os.pwrite(fd, _U64.pack(i), PING * 8)

        _ping(store, lambda: load(PONG), lambda: load(READY), proc, res, name, plan, rounds,
              progress)  # fmt: skip
        failed = False
    finally:
        try:
            _finish(proc, failed=failed)
        finally:
            os.close(fd)
            os.unlink(path)
