"""Many guests, one region, through real FUSE mounts (one daemon per guest).

Stores are visible across guests at once (same memory, no guest page cache);
truncate, unlink and rename by one guest are recalled from the others; eight
guests under a bounded mixed load leave fsck clean and the server's memory
bounded.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daxfs.testing import (
    ServerProc,
    Volume,
    assert_fsck_clean,
    assert_log_clean,
    fuse_mount,
    start_server,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
MIB = 1024 * 1024


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_two_guests_see_each_others_stores_and_recalls(server: ServerProc, workdir: Path) -> None:
    a, b = workdir / "a", workdir / "b"
    with fuse_mount(server.address, a), fuse_mount(server.address, b):
        (a / "shared").write_bytes(b"1" * MIB)
        with open(b / "shared", "rb", buffering=0) as fb:
            assert fb.read(4) == b"1111"
            # A store by guest a is seen by guest b's very next read: no cache anywhere.
            with open(a / "shared", "r+b", buffering=0) as fa:
                fa.write(b"2222")
                fb.seek(0)
                assert fb.read(4) == b"2222"
            # Truncate by a while b holds the file open: b's reads stop at the new EOF.
            os.truncate(a / "shared", 10)
            fb.seek(0)
            assert fb.read() == b"2222111111"
        # Rename over: b's next open sees the new file.
        (a / "new").write_bytes(b"replacement")
        os.rename(a / "new", a / "shared")
        assert (b / "shared").read_bytes() == b"replacement"
        os.unlink(b / "shared")
        assert not (a / "shared").exists()


def test_a_truncate_by_one_guest_is_seen_by_an_open_reader_in_another(
    server: ServerProc, workdir: Path
) -> None:
    a, b = workdir / "a", workdir / "b"
    with fuse_mount(server.address, a), fuse_mount(server.address, b):
        (a / "t").write_bytes(b"1" * MIB)
        with open(b / "t", "rb", buffering=0) as fb:
            assert fb.read(4) == b"1111"
            os.truncate(a / "t", 10)
            fb.seek(0)
            assert fb.read() == b"1" * 10


def test_eight_guests_share_and_recall(server: ServerProc, workdir: Path) -> None:
    mounts = [workdir / f"g{i}" for i in range(8)]
    with contextlib.ExitStack() as stack:
        for m in mounts:
            stack.enter_context(fuse_mount(server.address, m))
        for i, m in enumerate(mounts):
            (m / f"from-{i}").write_bytes(bytes([i + 1]) * 65536)
        for m in mounts:
            for i in range(8):
                assert (m / f"from-{i}").read_bytes() == bytes([i + 1]) * 65536
        with contextlib.ExitStack() as files:
            handles = [
                files.enter_context(open(m / "from-0", "rb", buffering=0)) for m in mounts[1:]
            ]
            for h in handles:  # reading takes a layout: the truncate below recalls it
                assert h.read(1) == b"\x01"
                h.seek(0)
            os.truncate(mounts[0] / "from-0", 100)
            for h in handles:  # open handles see the new EOF too (the recall told them)
                assert h.read() == b"\x01" * 100
        for m in mounts:  # close-to-open: every guest's next open sees the new size
            assert (m / "from-0").read_bytes() == b"\x01" * 100
        for i, m in enumerate(mounts):
            os.unlink(m / f"from-{i}")
        assert os.listdir(mounts[3]) == []


LOAD = textwrap.dedent(
    """
    import os, random, sys, time
    root, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    ops = 0
    mine = os.path.join(root, f"w{seed}")
    os.makedirs(mine, exist_ok=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        name = os.path.join(mine, f"f{rng.randrange(16)}")
        op = rng.randrange(6)
        if op <= 1:
            data = rng.randbytes(rng.choice([100, 4096, 65536, 300000]))
            with open(name, "wb") as f:
                f.write(data)
            with open(name, "rb") as f:
                assert f.read() == data, "read back differs"
        elif op == 2 and os.path.exists(name):
            os.truncate(name, rng.randrange(5000))
        elif op == 3 and os.path.exists(name):
            os.rename(name, name + ".r")
            os.rename(name + ".r", name)
        elif op == 4 and os.path.exists(name):
            os.unlink(name)
        else:
            os.listdir(mine)
            os.stat(mine)
        ops += 1
    print(ops)
    """
)


def test_eight_guests_under_mixed_load(volume: Volume, workdir: Path) -> None:
    seconds = float(os.environ.get("DAXFS_LOAD_SECONDS", "8"))
    srv = start_server(volume)
    try:
        mounts = [workdir / f"m{i}" for i in range(8)]
        with contextlib.ExitStack() as stack:
            for m in mounts:
                stack.enter_context(fuse_mount(srv.address, m))
            rss_before = rss_kib(srv.proc.pid)
            t0 = time.monotonic()
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", LOAD, str(m), str(seconds), str(i)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i, m in enumerate(mounts)
            ]
            total = 0
            for p in procs:
                out, err = p.communicate(timeout=seconds + 120)
                assert p.returncode == 0, err
                total += int(out)
            elapsed = time.monotonic() - t0
            rss_after = rss_kib(srv.proc.pid)
            print(
                f"\n8 guests: {total} ops in {elapsed:.1f} s = {total / elapsed:.0f} ops/s; "
                f"server RSS {rss_before} -> {rss_after} KiB"
            )
            # The server keeps no per-operation state: its memory stays within 64 MiB of idle.
            assert rss_after - rss_before < 64 * 1024
    finally:
        assert srv.stop() == 0
    assert_log_clean(srv.log)
    assert_fsck_clean(volume)
