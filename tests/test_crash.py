"""Crashes: the server killed with SIGKILL at random points, restarted on the same volume.

After every kill: fsck is clean, and every file whose last operation was an
fsync that returned reads back exactly what was fsync'd. The default run does
30 kills; DAXFS_CRASH_KILLS=300 runs the long soak.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from daxfs.client import Client, connect
from daxfs.shared import errors
from daxfs.shared.format import MIB
from daxfs.testing import ServerProc, Volume, assert_fsck_clean, start_server, wait_stopped

KILLS = int(os.environ.get("DAXFS_CRASH_KILLS", "30"))
#: The region: room for the restart-grace quarantine of a run of kills (below).
REGION = 1024 * MIB
#: Free space each run of the workload starts with (it frees ~30 MiB a kill).
ROOM = 256 * MIB
#: The servers' lease. A restarted server keeps every block freed in its first
#: lease (plus a second) in quarantine, and frees it in a sweep (every second)
#: once that is over; a server here is killed within a second, so the
#: quarantine only grows, and without room the workload would get nothing but
#: ENOSPC. When free space runs short, one server lives until it has swept.
LEASE_S = 5.0


class Workload:
    """Random creates, writes, fsyncs, truncates, renames and deletes, with a journal.

    ``durable[path]`` holds the digest of what an fsync that returned made
    durable, for files whose later operations all completed too; a path with
    an operation in flight at the kill is ``uncertain`` and not checked.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.durable: dict[str, str] = {}
        self.uncertain: set[str] = set()
        self.stop = threading.Event()
        self.ops = 0
        #: Why each run ended: the server died under it, normally.
        self.endings: list[Exception] = []

    def run(self, c: Client) -> None:
        try:
            while not self.stop.is_set():
                self.step(c)
                self.ops += 1
        except (errors.DaxfsError, OSError) as exc:
            self.endings.append(exc)  # the server died under us: expected

    def step(self, c: Client) -> None:
        rng = self.rng
        name = f"/f{rng.randrange(24)}"
        op = rng.choice(["write", "write", "truncate", "rename", "unlink"])
        self.uncertain.add(name)
        if op == "write":
            data = rng.randbytes(rng.choice([1, 4096, 70_000, 1 << 20]))
            with c.open(name, "wb") as f:
                f.write(data)
                f.fsync()
            self.durable[name] = hashlib.sha256(data).hexdigest()
        elif op == "truncate" and name in self.durable:
            c.truncate(name, 0)
            self.durable[name] = hashlib.sha256(b"").hexdigest()
        elif op == "rename" and name in self.durable:
            target = f"/f{rng.randrange(24)}"
            self.uncertain.add(target)
            c.rename(name, target)
            if target != name:
                self.durable[target] = self.durable.pop(name)
            self.uncertain.discard(target)
        elif op == "unlink" and name in self.durable:
            c.unlink(name)
            del self.durable[name]
        self.uncertain.discard(name)

    def verify(self, c: Client) -> None:
        for path, digest in self.durable.items():
            if path in self.uncertain:
                continue
            with c.open(path, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest, f"{path} lost fsync'd bytes"

    def settle(self, c: Client) -> None:
        """After a kill: learn the real state of uncertain paths, so they can be checked again."""
        for path in list(self.uncertain):
            try:
                with c.open(path, "rb") as f:
                    self.durable[path] = hashlib.sha256(f.read()).hexdigest()
            except errors.NotFound:
                self.durable.pop(path, None)
        self.uncertain.clear()


def wait_for_room(c: Client) -> None:
    """Let the server live until its sweeps have freed ROOM (the quarantine that is due)."""
    deadline = time.monotonic() + 10 * LEASE_S
    while c.stats().free_bytes < ROOM:
        assert time.monotonic() < deadline, f"quarantine not released: {c.stats()}"
        time.sleep(0.1)


@pytest.mark.client_log("session stream lost")
@pytest.mark.timeout(900)
def test_server_sigkill_at_random_points(workdir: Path) -> None:
    volume = Volume.create(workdir, size=REGION)
    work = Workload(seed=1234)
    rng = random.Random(99)
    total_ops = 0
    # Clients of killed servers, closing: a close sends a goodbye that waits
    # out its deadline on the dead server (or is answered by the next one),
    # which the test has no reason to wait for before the next kill.
    closing: list[threading.Thread] = []
    srv = start_server(volume, "--lease-seconds", str(LEASE_S))
    try:
        for _ in range(KILLS):
            with connect(srv.address) as checker:
                work.verify(checker)
                work.settle(checker)
                wait_for_room(checker)
            c = connect(srv.address)
            # The workload's calls: one made after the kill waits for the server
            # up to this deadline, then fails (one on a stalled live server too,
            # which ends that run early and leaves its path to settle()).
            c.conn.timeout = 1.0
            work.stop.clear()
            t = threading.Thread(target=work.run, args=(c,))
            t.start()
            time.sleep(rng.uniform(0.05, 0.4))
            srv.kill()
            work.stop.set()
            t.join(timeout=60)
            assert not t.is_alive(), "a client call hung after the server died"
            closing.append(threading.Thread(target=c.close))
            closing[-1].start()
            assert_fsck_clean(volume)
            total_ops = work.ops
            srv = start_server(volume, "--lease-seconds", str(LEASE_S))
        with connect(srv.address) as c:
            work.verify(c)
    finally:
        for closer in closing:
            closer.join(timeout=60)
        code = srv.stop()
    assert code == 0
    assert not any(closer.is_alive() for closer in closing), "a client's close hung"
    assert_fsck_clean(volume)
    assert total_ops > KILLS, "the workload should have done real work between kills"
    full = [exc for exc in work.endings if isinstance(exc, errors.NoSpace)]
    assert not full, f"the workload ran out of space: {full[0]}"


@pytest.mark.client_log("session stream lost")
def test_clients_recover_after_a_server_restart(volume: Volume) -> None:
    srv = start_server(volume)
    c = connect(srv.address, timeout=5)
    try:
        with c.open("/keep", "wb") as f:
            f.write(b"before the restart")
            f.fsync()
        f = c.open("/keep", "rb")
        view = f.array(np.uint8)
        srv.kill()
        srv = start_server(volume)
        # The old handle names nothing on the new server: a clean error, no hang.
        # (Until the client learns of the restart its cached layouts stay usable:
        # the restart grace keeps their blocks from reuse for a lease.)
        c.layouts.clear()
        with pytest.raises(errors.StaleHandle):
            f.pread(4, 0)
        f.close()
        # The next open works, through the same client object.
        with c.open("/keep", "rb") as g:
            assert g.read() == b"before the restart"
        with c.open("/new", "wb") as g:
            g.write(b"after")
        # Views of the lost session are fenced: the new instance knows no lease of ours.
        assert not view.any()
    finally:
        c.close()
        assert srv.stop() == 0
    assert_fsck_clean(volume)


def test_a_client_call_to_a_dead_server_fails_within_its_deadline(
    server: ServerProc, workdir: Path
) -> None:
    with connect(server.address, timeout=2) as c:
        with c.open("/x", "wb") as f:
            f.write(b"x")
        server.proc.send_signal(19)  # SIGSTOP: alive but silent
        try:
            wait_stopped(server.proc.pid)
            t0 = time.monotonic()
            with pytest.raises(errors.Unavailable):
                c.stat("/x")
            assert time.monotonic() - t0 < 30
        finally:
            server.proc.send_signal(18)  # SIGCONT
        c.unlink("/x")
