"""The kernel mount's compiled data path (client/fuse/kernel/fastio.py, _fastio.c).

The loop itself is specified over a SOCK_SEQPACKET pair standing in for
/dev/fuse (one message per request and per reply, as the device), with a
buffer standing in for the region. Through a real mount: it answers reads
and overwrites, every change to what its copy was taken from (a recall,
growth through another descriptor, a set-id bit) is seen by the very next
request, as on Python's path, and what it wrote is published at close.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.client import connect
from daxfs.client.daxfile import IoCopy
from daxfs.client.fuse.kernel import fastio
from daxfs.shared.format import MIB
from daxfs.testing import Mount, ServerProc, start_mount, wait_until

READ, WRITE, GETATTR = 15, 16, 3
IN_HEADER = struct.Struct("<IIQQIIIHH")
READ_IN = struct.Struct("<QQIIQII")
WRITE_IN = struct.Struct("<QQIIQI4x")
OUT_HEADER = struct.Struct("<IiQ")
FAR = 1 << 62


def copy(size: int, tiles: list[tuple[int, int, int]], *, writable: bool = False) -> IoCopy:
    return IoCopy(size, tiles, readable=True, writable=writable)


needs_compiler = pytest.mark.skipif(
    fastio.library() is None, reason="no C compiler: the mount serves READs in Python"
)


def read_request(unique: int, fh: int, offset: int, size: int) -> bytes:
    body = READ_IN.pack(fh, offset, size, 0, 0, 0, 0)
    return IN_HEADER.pack(IN_HEADER.size + len(body), READ, unique, 1, 0, 0, 0, 0, 0) + body


def write_request(unique: int, fh: int, offset: int, data: bytes) -> bytes:
    body = WRITE_IN.pack(fh, offset, len(data), 0, 0, 0) + data
    return IN_HEADER.pack(IN_HEADER.size + len(body), WRITE, unique, 1, 0, 0, 0, 0, 0) + body


class Loop:
    """One compiled loop over a 1 MiB stand-in region, served through a socket pair."""

    def __init__(self) -> None:
        lib = fastio.library()
        assert lib is not None
        self.region = (ctypes.c_ubyte * MIB).from_buffer_copy(os.urandom(MIB))
        self.fast = fastio.FastPath(lib, ctypes.addressof(self.region), MIB)
        self.kernel, self.daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.buf = (ctypes.c_ubyte * (MIB + 4096))()

    def ask(self, request: bytes) -> tuple[int, bytes | None]:
        """Send ``request``; (what serve returned, the reply it wrote or None)."""
        self.kernel.send(request)
        returned = self.fast.serve(self.daemon.fileno(), ctypes.addressof(self.buf), len(self.buf))
        self.kernel.setblocking(False)
        try:
            reply: bytes | None = self.kernel.recv(2 * MIB)
        except BlockingIOError:
            reply = None
        finally:
            self.kernel.setblocking(True)
        return returned, reply

    def answered(self, request: bytes) -> bytes:
        """The data of the reply the loop wrote (it handed the next request back)."""
        self.kernel.send(request)
        self.kernel.send(IN_HEADER.pack(IN_HEADER.size, GETATTR, 99, 1, 0, 0, 0, 0, 0))
        returned = self.fast.serve(self.daemon.fileno(), ctypes.addressof(self.buf), len(self.buf))
        assert returned == IN_HEADER.size, "the GETATTR after it is Python's"
        reply = self.kernel.recv(2 * MIB)
        length, error, _ = OUT_HEADER.unpack_from(reply)
        assert (length, error) == (len(reply), 0)
        return reply[OUT_HEADER.size :]

    def close(self) -> None:
        self.kernel.close()
        self.daemon.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    try:
        yield lp
    finally:
        lp.close()


@needs_compiler
def test_a_read_of_an_installed_handle_is_answered_from_its_tiles(loop: Loop) -> None:
    region = bytes(loop.region)
    # File bytes [0, 8192) live at region 65536, [8192, 12288) at region 4096.
    tiles = [(0, 8192, 65536), (8192, 4096, 4096)]
    assert loop.fast.install(7, loop.fast.generation(), copy(10000, tiles), FAR)
    assert loop.answered(read_request(1, 7, 100, 4096)) == region[65636 : 65636 + 4096]
    # Across the two tiles, and cut at the size (10000): a short read.
    assert loop.answered(read_request(2, 7, 8000, 4096)) == (
        region[65536 + 8000 : 65536 + 8192] + region[4096 : 4096 + 10000 - 8192]
    )
    assert loop.answered(read_request(3, 7, 10000, 4096)) == b""  # at EOF
    counts = loop.fast.counts()
    assert (counts.reads, counts.read_bytes, counts.sizes) == (3, 4096 + 2000, {4096: 3})


@needs_compiler
def test_after_an_answer_the_loop_waits_awake_for_the_next_request(loop: Loop) -> None:
    """It polls for up to the spin time before it sleeps in read(2), after a
    request it answered or one Python just answered: a request already there
    is caught awake; one that comes later is read after a miss. With no spin
    time it never polls."""
    assert loop.fast.install(7, loop.fast.generation(), copy(8192, [(0, 8192, 0)]), FAR)
    loop.fast.set_spin(1000)  # 1 ms
    loop.kernel.send(read_request(1, 7, 0, 4096))
    loop.kernel.send(read_request(2, 7, 4096, 4096))
    loop.answered(read_request(3, 7, 0, 100))  # then a GETATTR for Python
    assert loop.fast.spins() == (3, 0)  # after each READ, the next was there
    for _ in range(2):  # the replies to READs 2 and 3 (answered() took 1's)
        loop.kernel.recv(2 * MIB)
    later = threading.Timer(
        0.2, lambda: loop.kernel.send(IN_HEADER.pack(IN_HEADER.size, GETATTR, 9, 1, 0, 0, 0, 0, 0))
    )
    loop.kernel.send(read_request(4, 7, 0, 4096))
    later.start()
    returned = loop.fast.serve(loop.daemon.fileno(), ctypes.addressof(loop.buf), len(loop.buf))
    later.join()
    assert returned == IN_HEADER.size
    assert loop.fast.spins() == (3, 1)  # the GETATTR came after the spin ran out
    # Python answered the GETATTR: called in with ``answered``, it waits awake first.
    loop.kernel.send(IN_HEADER.pack(IN_HEADER.size, GETATTR, 10, 1, 0, 0, 0, 0, 0))
    returned = loop.fast.serve(
        loop.daemon.fileno(), ctypes.addressof(loop.buf), len(loop.buf), answered=True
    )
    assert returned == IN_HEADER.size and loop.fast.spins() == (4, 1)
    loop.fast.set_spin(0)
    loop.kernel.recv(2 * MIB)
    loop.answered(read_request(5, 7, 0, 4096))
    assert loop.fast.spins() == (4, 1)


@needs_compiler
def test_an_overwrite_inside_the_size_is_stored_and_recorded(loop: Loop) -> None:
    tiles = [(0, 8192, 65536), (8192, 4096, 4096)]
    assert loop.fast.install(7, loop.fast.generation(), copy(12288, tiles, writable=True), FAR)
    data = os.urandom(4096)
    reply = loop.answered(write_request(1, 7, 6144, data))  # across the two tiles
    assert struct.unpack("<II", reply) == (4096, 0)  # fuse_write_out: size written
    assert bytes(loop.region[65536 + 6144 : 65536 + 8192]) == data[:2048]
    assert bytes(loop.region[4096 : 4096 + 2048]) == data[2048:]
    loop.answered(write_request(2, 7, 0, b"x" * 100))
    # One record per handle, covering both writes; taken once.
    assert loop.fast.take_written() == [fastio.Written(7, 0, 10240)]
    assert loop.fast.take_written() == []
    counts = loop.fast.counts()
    assert (counts.writes, counts.write_bytes, counts.write_sizes) == (2, 4196, {4096: 1, 100: 1})


@needs_compiler
def test_a_write_it_may_not_make_goes_back_to_python_and_stores_nothing(loop: Loop) -> None:
    before = bytes(loop.region)
    gen = loop.fast.generation()
    assert loop.fast.install(7, gen, copy(8192, [(0, 8192, 0)], writable=True), FAR)
    assert loop.fast.install(8, gen, copy(8192, [(0, 8192, 0)]), FAR)  # read-only
    assert loop.fast.install(9, gen, copy(8192, [(0, 4096, 0)], writable=True), FAR)
    for request in (
        write_request(1, 8, 0, b"y" * 4096),  # a handle that may not write
        write_request(2, 7, 8000, b"y" * 400),  # growth: past the size
        write_request(3, 9, 2048, b"y" * 4096),  # over a part not known to be mapped
        write_request(4, 6, 0, b"y"),  # a handle it was not shown
    ):
        returned, reply = loop.ask(request)
        assert (returned, reply) == (len(request), None)
    assert bytes(loop.region) == before
    assert loop.fast.take_written() == []


@needs_compiler
def test_what_the_loop_cannot_answer_goes_back_to_python_untouched(loop: Loop) -> None:
    tiles = [(0, 4096, 0), (8192, 4096, 8192)]
    assert loop.fast.install(7, loop.fast.generation(), copy(12288, tiles), FAR)
    for request in (
        read_request(1, 8, 0, 4096),  # a handle it was not shown
        read_request(2, 7, 4096, 4096),  # a part not known to be mapped (a hole)
        read_request(3, 7, 0, 12288),  # a read over it
        IN_HEADER.pack(IN_HEADER.size, GETATTR, 4, 1, 0, 0, 0, 0, 0),  # not a READ
    ):
        returned, reply = loop.ask(request)
        assert (returned, reply) == (len(request), None)
        assert bytes(loop.buf[: len(request)]) == request
    assert loop.fast.counts().fallbacks == 3


@needs_compiler
def test_a_bump_drops_every_copy_and_fails_an_install_taken_before_it(loop: Loop) -> None:
    before = loop.fast.generation()
    assert loop.fast.install(7, before, copy(4096, [(0, 4096, 0)]), FAR)
    loop.fast.bump()  # e.g. a recall: the layout cache changed
    request = read_request(1, 7, 0, 4096)
    assert loop.ask(request) == (len(request), None)
    # A copy taken before the bump may be stale: it is refused.
    assert not loop.fast.install(7, before, copy(4096, [(0, 4096, 0)]), FAR)
    assert loop.fast.install(7, loop.fast.generation(), copy(4096, [(0, 4096, 0)]), FAR)
    assert loop.answered(request) == bytes(loop.region[:4096])


@needs_compiler
def test_a_copy_is_not_used_past_its_time(loop: Loop) -> None:
    soon = time.monotonic_ns() + 50_000_000
    assert loop.fast.install(7, loop.fast.generation(), copy(4096, [(0, 4096, 0)]), soon)
    assert loop.answered(read_request(1, 7, 0, 4096)) == bytes(loop.region[:4096])
    wait_until(lambda: time.monotonic_ns() > soon, "the copy's time to pass")
    request = read_request(2, 7, 0, 4096)
    assert loop.ask(request) == (len(request), None)


@needs_compiler
def test_a_reply_the_kernel_refuses_is_counted_and_the_loop_goes_on(loop: Loop) -> None:
    assert loop.fast.install(7, loop.fast.generation(), copy(4096, [(0, 4096, 0)]), FAR)
    loop.kernel.send(read_request(1, 7, 0, 4096))
    getattr_request = IN_HEADER.pack(IN_HEADER.size, GETATTR, 2, 1, 0, 0, 0, 0, 0)
    loop.kernel.send(getattr_request)
    loop.kernel.shutdown(socket.SHUT_RD)  # the READ's reply fails (EPIPE)
    returned = loop.fast.serve(loop.daemon.fileno(), ctypes.addressof(loop.buf), len(loop.buf))
    assert returned == len(getattr_request)
    assert loop.fast.counts().refused == 1


@needs_compiler
def test_a_tile_outside_the_region_is_refused(loop: Loop) -> None:
    gen = loop.fast.generation()
    assert not loop.fast.install(7, gen, copy(8192, [(0, 8192, MIB - 4096)]), FAR)
    assert loop.fast.install(7, gen, copy(4096, [(0, 4096, MIB - 4096)]), FAR)


def test_without_a_compiler_there_is_no_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DAXFS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setattr(fastio, "_tried", False)
    monkeypatch.setattr(fastio, "_lib", None)
    assert fastio.library() is None
    assert list(tmp_path.iterdir()) == []  # nothing half-built left behind


# -- through a real mount ------------------------------------------------------


def iostats(m: Mount) -> dict[str, int]:
    doc: dict[str, int] = json.loads(os.getxattr(m.path, "user.daxfs.iostats"))
    return doc


@pytest.fixture
def mount(server: ServerProc, workdir: Path) -> Iterator[Mount]:
    m = start_mount(server.address, workdir / "mnt", backend="kernel")
    try:
        yield m
    finally:
        m.stop()


@pytest.mark.fuse
@needs_compiler
def test_reads_through_the_mount_are_answered_by_the_loop(mount: Mount) -> None:
    data = os.urandom(MIB)
    (mount.path / "f").write_bytes(data)
    fd = os.open(mount.path / "f", os.O_RDONLY)
    try:
        for offset in range(0, MIB, 12288):
            assert os.pread(fd, 4096, offset) == data[offset : offset + 4096]
    finally:
        os.close(fd)
    stats = iostats(mount)
    assert stats["compiled_reads"] >= 80  # all but the one that showed it the file
    assert stats["requests"]["READ"] == stats["reads"] >= 86


@pytest.mark.fuse
@needs_compiler
def test_a_truncate_by_another_guest_is_seen_by_the_next_read(
    mount: Mount, server: ServerProc
) -> None:
    """The recall drops the loop's copy before it is acknowledged: after the
    truncate returns, the blocks may hold another file's bytes."""
    data = os.urandom(256 * 1024)
    (mount.path / "shrinks").write_bytes(data)
    fd = os.open(mount.path / "shrinks", os.O_RDONLY)
    other = connect(server.address)
    try:
        for _ in range(3):
            assert os.pread(fd, len(data), 0) == data
        assert iostats(mount)["compiled_reads"] >= 2
        # A recall reaches a session only over its stream, which attaches a
        # little after the mount (under load, seconds): until then the server
        # has nobody to wait for, and quarantine alone keeps the blocks.
        wait_until(
            lambda: all(s.attached for s in other.sessions()), "every session's stream to attach"
        )
        other.truncate("/shrinks", 0)
        with other.open("/reuses", "wb") as f:  # may take the freed blocks
            f.write(b"\xee" * len(data))
        if other.stats().recall_waits_timed_out == 0:
            # The truncate returned after the mount acknowledged the recall
            # (else, on a machine too loaded to answer within the server's
            # wait, its lease bounds what it may still read, and fstat below
            # catches up).
            assert os.pread(fd, len(data), 0) == b""
        wait_until(lambda: os.fstat(fd).st_size == 0, "the recall to reach the mount")
        assert os.pread(fd, len(data), 0) == b""
    finally:
        other.close()
        os.close(fd)


@pytest.mark.fuse
@needs_compiler
def test_a_stat_that_finds_the_size_unchanged_keeps_the_loops_copy(mount: Mount) -> None:
    data = os.urandom(64 * 1024)
    (mount.path / "f").write_bytes(data)
    fd = os.open(mount.path / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == data[:4096]  # Python's: shows the loop the handle
        before = iostats(mount)["compiled_reads"]
        for i in range(20):
            assert os.fstat(fd).st_size == len(data)  # a GetAttr, size confirmed
            assert os.pread(fd, 4096, i * 3000) == data[i * 3000 : i * 3000 + 4096]
        assert iostats(mount)["compiled_reads"] - before == 20
    finally:
        os.close(fd)


@pytest.mark.fuse
@needs_compiler
def test_growth_through_another_descriptor_is_read_at_once(mount: Mount) -> None:
    path = mount.path / "grows"
    w = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    r = os.open(path, os.O_RDONLY)
    try:
        os.pwrite(w, b"a" * 4096, 0)  # its layout reaches past the end: growth needs none
        for _ in range(3):
            assert os.pread(r, 8192, 0) == b"a" * 4096
        before = iostats(mount)["compiled_reads"]
        assert before >= 2
        os.pwrite(w, b"b" * 4096, 4096)
        assert os.pread(r, 8192, 0) == b"a" * 4096 + b"b" * 4096
    finally:
        os.close(w)
        os.close(r)


@pytest.mark.fuse
@needs_compiler
def test_overwrites_through_the_mount_are_answered_by_the_loop_and_published_at_close(
    mount: Mount, server: ServerProc
) -> None:
    path = mount.path / "db"
    model = bytearray(os.urandom(256 * 1024))
    path.write_bytes(model)
    os.utime(path, ns=(10**18, 10**18))  # an old mtime: the writes must move it
    fd = os.open(path, os.O_RDWR)
    try:
        # The first READ (Python's) shows the loop the handle: every write is its.
        assert os.pread(fd, 4096, 0) == model[:4096]
        for i in range(64):
            offset = (i * 7919 * 4096) % len(model)
            chunk = os.urandom(4096)
            assert os.pwrite(fd, chunk, offset) == 4096
            model[offset : offset + 4096] = chunk
            assert os.pread(fd, 4096, offset) == chunk
    finally:
        os.close(fd)
    stats = iostats(mount)
    assert stats["compiled_writes"] == 64 and stats["writes"] == stats["requests"]["WRITE"] == 65
    other = connect(server.address)
    try:
        with other.open("/db", "rb") as f:
            assert f.read() == bytes(model)
        assert other.attr("/db").mtime_ns > 10**18  # the close published the writes
    finally:
        other.close()


@pytest.mark.fuse
def test_turned_off_the_mount_reads_in_python(
    server: ServerProc, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAXFS_FASTIO", "0")
    m = start_mount(server.address, workdir / "mnt", backend="kernel")
    try:
        data = os.urandom(64 * 1024)
        (m.path / "f").write_bytes(data)
        fd = os.open(m.path / "f", os.O_RDONLY)
        try:
            for _ in range(3):
                assert os.pread(fd, len(data), 0) == data
        finally:
            os.close(fd)
        stats = iostats(m)
        assert stats["compiled_reads"] == stats["compiled_writes"] == 0 and stats["reads"] >= 3
    finally:
        m.stop()
