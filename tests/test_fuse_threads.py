"""The kernel daemon's serving threads: one reads /dev/fuse at a time, none stalls the rest.

One thread holds the reader token and serves READ and WRITE itself
(client/fuse/kernel/session.py); it hands the token over before anything that
may wait on the server. These tests hold a reply at a real proxy in front of a
real server and check that the mount goes on serving meanwhile.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.client import connect
from daxfs.testing import FaultyProxy, Mount, ServerProc, fuse_mount

DATA = bytes(range(256)) * 256  # 64 KiB


@pytest.fixture
def mount(proxy: FaultyProxy, server: ServerProc, workdir: Path) -> Iterator[Mount]:
    with connect(server.address) as c:
        for name in ("held", "free"):
            with c.open(f"/{name}", "wb") as f:
                f.write(DATA)
    mnt = workdir / "mnt"
    mnt.mkdir()
    with fuse_mount(proxy.address, mnt, backend="kernel") as m:
        yield m


def _in_thread(fn: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)  # type: ignore[operator]
    t.start()
    return t, out


@pytest.mark.parametrize("held", ["GetLayout", "Open"])
def test_a_request_waiting_on_the_server_does_not_stall_reads_of_other_files(
    mount: Mount, proxy: FaultyProxy, held: str
) -> None:
    free = os.open(mount.path / "free", os.O_RDONLY)
    try:
        assert os.pread(free, 4096, 0) == DATA[:4096]  # its layout came with the open
        proxy.hold_next(held)
        if held == "GetLayout":
            # A WRITE is served by the token's holder itself; its layout call waits.
            fd = os.open(mount.path / "held", os.O_WRONLY)
            waiting, done = _in_thread(lambda: os.pwrite(fd, b"w" * 4096, 8192))
        else:
            waiting, done = _in_thread(lambda: os.open(mount.path / "held", os.O_RDONLY))
        assert proxy.holding.wait(10), f"the {held} never reached the server"
        reader, got = _in_thread(lambda: os.pread(free, 4096, 4096))
        reader.join(10)
        assert got == [DATA[4096:8192]], "a read of another file waited for the held reply"
        assert not done, f"the {held} reply is still held"
        proxy.release()
        waiting.join(10)
        assert done, f"the {held} never finished after its reply was released"
        if held == "GetLayout":
            assert done == [4096]
            os.close(fd)
        else:
            os.close(int(done[0]))  # type: ignore[call-overload]
    finally:
        os.close(free)
