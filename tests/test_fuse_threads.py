"""The kernel daemon's serving threads: one reads /dev/fuse at a time, none stalls the rest.

One thread holds the reader token and serves READ and WRITE itself
(client/fuse/kernel/session.py), and the metadata requests whose only waits
are RPCs; it hands the token over before a call waits on gRPC, and, over the
frame socket, as soon as a request comes while it waits for the reply. These
tests hold a reply at a real proxy in front of a real server and check that
the mount goes on serving meanwhile.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daxfs.client import connect
from daxfs.shared.address import unix_path
from daxfs.shared.framing import frame_path
from daxfs.testing import FaultyProxy, FrameProxy, Mount, ServerProc, fuse_mount

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


@pytest.mark.parametrize("call", ["mkdir", "unlink", "rename"])
def test_a_metadata_call_waiting_on_the_frame_socket_does_not_stall_reads_of_other_files(
    server: ServerProc,
    proxy_to: Callable[[str], FaultyProxy],
    workdir: Path,
    call: str,
) -> None:
    """The token's holder serves a MKDIR, UNLINK or RENAME itself and waits for its
    reply holding the token: a READ of another file arriving meanwhile makes it
    hand the token over, so the READ is served while the reply is held."""
    with connect(server.address) as c:
        for name in ("free", "victim"):
            with c.open(f"/{name}", "wb") as f:
                f.write(DATA)
    grpc_proxy = proxy_to(server.address)
    frames = FrameProxy(
        frame_path(unix_path(server.address) or ""),
        frame_path(unix_path(grpc_proxy.address) or ""),
    )
    mnt = workdir / "mnt"
    mnt.mkdir()
    try:
        with fuse_mount(grpc_proxy.address, mnt, backend="kernel") as m:
            free = os.open(m.path / "free", os.O_RDONLY)
            try:
                assert os.pread(free, 4096, 0) == DATA[:4096]
                calls = grpc_proxy.calls.copy()
                frames.hold()
                waiting, done = _in_thread(
                    {
                        "mkdir": lambda: os.mkdir(m.path / "d"),
                        "unlink": lambda: os.unlink(m.path / "victim"),
                        "rename": lambda: os.rename(m.path / "victim", m.path / "moved"),
                    }[call]
                )
                assert frames.holding.wait(10), f"the {call} never reached the frame socket"
                reader, got = _in_thread(lambda: os.pread(free, 4096, 4096))
                reader.join(10)
                assert got == [DATA[4096:8192]], f"a read waited for the held {call} reply"
                assert not done, f"the {call} reply is still held"
                frames.release()
                waiting.join(10)
                assert done == [None], f"the {call} never finished after its reply was released"
                assert grpc_proxy.calls == calls, "the calls went over gRPC, not the frame socket"
            finally:
                os.close(free)
    finally:
        frames.close()
