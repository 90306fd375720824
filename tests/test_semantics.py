"""One file-system semantics suite, run against both front ends.

As zarr's ``StoreTests`` runs one class of behaviours against every store,
:class:`FilesystemSemantics` states what a daxfs file does once, and each
subclass binds it to a front end: :class:`TestLibrary` to the client library
(``daxfs.client``), :class:`TestMount` to a real FUSE mount through ``os``.
The raw accessors (``raw_*``) set up and check state through a second,
independent client connection: its own session, layout cache and sizes, so a
behaviour is never checked only through the state of the code under test.
Behaviours that belong to one front end (numpy views, FUSE errnos, the kernel's
request sizes) stay in ``test_client_library.py`` and ``test_fuse.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from daxfs.client import Client, connect
from daxfs.shared.format import MIB
from daxfs.testing import ServerProc, fuse_mount


class Reader(Protocol):
    def read_all(self) -> bytes: ...
    def close(self) -> None: ...


class FilesystemSemantics:
    """The behaviours; a subclass provides the front end (``fs_*``) and ``raw``."""

    #: The second connection the raw accessors use (set by the ``bind`` fixture).
    raw: Client

    # -- the front end under test ------------------------------------------
    def fs_write(self, path: str, data: bytes) -> None:
        """Create or truncate ``path`` and write ``data``."""
        raise NotImplementedError

    def fs_pwrite(self, path: str, data: bytes, offset: int) -> None:
        """Write ``data`` at ``offset``, creating ``path`` if needed, truncating nothing."""
        raise NotImplementedError

    def fs_read(self, path: str) -> bytes:
        raise NotImplementedError

    def fs_pread(self, path: str, length: int, offset: int) -> bytes:
        raise NotImplementedError

    def fs_size(self, path: str) -> int:
        raise NotImplementedError

    def fs_truncate(self, path: str, size: int) -> None:
        raise NotImplementedError

    def fs_rename(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def fs_unlink(self, path: str) -> None:
        raise NotImplementedError

    def fs_exists(self, path: str) -> bool:
        raise NotImplementedError

    def fs_open_reader(self, path: str) -> Reader:
        raise NotImplementedError

    # -- raw accessors: a second client, not the code under test -----------
    def raw_read(self, path: str) -> bytes:
        with self.raw.open(path, "rb") as f:
            return f.read()

    def raw_write(self, path: str, data: bytes) -> None:
        with self.raw.open(path, "wb") as f:
            f.write(data)
            f.fsync()

    # -- behaviours ---------------------------------------------------------
    def test_written_bytes_are_what_another_client_reads(self) -> None:
        data = os.urandom(3 * MIB + 17)
        self.fs_write("/out", data)
        assert self.raw_read("/out") == data
        self.raw_write("/in", data[::-1])
        assert self.fs_read("/in") == data[::-1]
        assert self.fs_size("/in") == len(data)

    def test_holes_read_zero_and_hold_no_storage(self) -> None:
        self.fs_pwrite("/sparse", b"tail", 10 * MIB)
        assert self.fs_size("/sparse") == 10 * MIB + 4
        assert self.fs_pread("/sparse", 16, 5 * MIB) == bytes(16)
        assert self.fs_pread("/sparse", 4, 10 * MIB) == b"tail"
        assert self.raw_read("/sparse")[-6:] == b"\0\0tail"
        assert self.raw.stat("/sparse").allocated < 2 * MIB

    def test_truncate_zeroes_the_tail_before_regrowth(self) -> None:
        self.fs_write("/t", b"\xff" * 8192)
        self.fs_truncate("/t", 100)
        self.fs_truncate("/t", 8192)
        assert self.fs_read("/t") == b"\xff" * 100 + bytes(8092)
        assert self.raw_read("/t") == b"\xff" * 100 + bytes(8092)

    def test_rename_replaces_the_target(self) -> None:
        self.fs_write("/a", b"A")
        self.raw_write("/b", b"B")
        self.fs_rename("/a", "/b")
        assert not self.fs_exists("/a")
        assert self.fs_read("/b") == b"A"
        assert self.raw_read("/b") == b"A"

    def test_unlink_while_open_keeps_the_file_until_close(self) -> None:
        self.raw_write("/u", b"still here")
        free_before = self.raw.statfs().blocks_free
        reader = self.fs_open_reader("/u")
        try:
            self.fs_unlink("/u")
            assert not self.fs_exists("/u") and not self.raw.exists("/u")
            assert reader.read_all() == b"still here"
        finally:
            reader.close()
        # The last close gives the file's block back (the mount's close reaches
        # the server asynchronously: wait for it, never for a fixed time).
        _eventually(lambda: self.raw.statfs().blocks_free == free_before + 1)


def _eventually(predicate: Any, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


class TestLibrary(FilesystemSemantics):
    """The client library: ``Client`` and ``DaxFile``."""

    fs: Client

    @pytest.fixture(autouse=True)
    def bind(self, server: ServerProc, client: Client) -> Iterator[None]:
        self.fs = client
        with connect(server.address) as raw:
            self.raw = raw
            yield

    def fs_write(self, path: str, data: bytes) -> None:
        with self.fs.open(path, "wb") as f:
            f.write(data)

    def fs_pwrite(self, path: str, data: bytes, offset: int) -> None:
        mode = "r+b" if self.fs.exists(path) else "wb"
        with self.fs.open(path, mode) as f:
            f.pwrite(data, offset)

    def fs_read(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as f:
            return f.read()

    def fs_pread(self, path: str, length: int, offset: int) -> bytes:
        with self.fs.open(path, "rb") as f:
            return f.pread(length, offset)

    def fs_size(self, path: str) -> int:
        return self.fs.stat(path).size

    def fs_truncate(self, path: str, size: int) -> None:
        self.fs.truncate(path, size)

    def fs_rename(self, src: str, dst: str) -> None:
        self.fs.rename(src, dst)

    def fs_unlink(self, path: str) -> None:
        self.fs.unlink(path)

    def fs_exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def fs_open_reader(self, path: str) -> Reader:
        f = self.fs.open(path, "rb")

        class _Reader:
            def read_all(self) -> bytes:
                return f.read()

            def close(self) -> None:
                f.close()

        return _Reader()


@pytest.mark.fuse
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing")
class TestMount(FilesystemSemantics):
    """A real ``daxfs mount``, driven through ``os`` as any program would, on each
    FUSE front end (``--backend``)."""

    mnt: Path

    @pytest.fixture(autouse=True, params=["libfuse", "kernel"])
    def bind(
        self, server: ServerProc, client: Client, workdir: Path, request: pytest.FixtureRequest
    ) -> Iterator[None]:
        self.raw = client
        with fuse_mount(server.address, workdir / "mnt", backend=request.param) as m:
            self.mnt = m.path
            yield

    def _p(self, path: str) -> Path:
        return self.mnt / path.lstrip("/")

    def fs_write(self, path: str, data: bytes) -> None:
        self._p(path).write_bytes(data)

    def fs_pwrite(self, path: str, data: bytes, offset: int) -> None:
        fd = os.open(self._p(path), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def fs_read(self, path: str) -> bytes:
        return self._p(path).read_bytes()

    def fs_pread(self, path: str, length: int, offset: int) -> bytes:
        fd = os.open(self._p(path), os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def fs_size(self, path: str) -> int:
        return os.stat(self._p(path)).st_size

    def fs_truncate(self, path: str, size: int) -> None:
        os.truncate(self._p(path), size)

    def fs_rename(self, src: str, dst: str) -> None:
        os.rename(self._p(src), self._p(dst))

    def fs_unlink(self, path: str) -> None:
        os.unlink(self._p(path))

    def fs_exists(self, path: str) -> bool:
        return self._p(path).exists()

    def fs_open_reader(self, path: str) -> Reader:
        fd = os.open(self._p(path), os.O_RDONLY)

        class _Reader:
            def read_all(self) -> bytes:
                return os.pread(fd, 1 << 20, 0)

            def close(self) -> None:
                os.close(fd)

        return _Reader()
