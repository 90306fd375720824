"""An fsx-like model checker: random operations on a mounted file against a bytearray.

Like xfstests' fsx: writes, reads, truncates, fallocate (mode 0 and
KEEP_SIZE), punch hole and zero range, fsync, and closing and reopening the
file, through two descriptors, each step checked against an in-memory model
of the file's bytes and size. The run is seeded: a failure names the seed and
the last operations, and ``DAXFS_FSX_SEED=N`` replays it.

``make test`` runs a brief check (a few hundred operations);
``DAXFS_FSX_OPS=100000`` runs long (several seeds: ``DAXFS_FSX_SEEDS=1,2,3``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from daxfs.testing import ServerProc, fuse_mount

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing: no FUSE in this machine"
    ),
]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

#: Largest file the run makes (fsx's default maxlen).
MAX_LEN = 256 * 1024
#: Largest single write, read or fallocate.
MAX_OP = 64 * 1024

OPS = int(os.environ.get("DAXFS_FSX_OPS", "600"))
SEEDS = [
    int(s)
    for s in os.environ.get("DAXFS_FSX_SEEDS", os.environ.get("DAXFS_FSX_SEED", "1")).split(",")
]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Fsx:
    """The file under test, its model, and the log of what was done."""

    def __init__(self, path: Path, seed: int) -> None:
        self.path = path
        self.seed = seed
        self.rng = random.Random(seed)
        self.model = bytearray()
        self.log: list[str] = []
        self.fds = [self._open(), self._open()]

    def _open(self) -> int:
        return os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)

    def fail(self, what: str) -> None:
        tail = "\n".join(self.log[-25:])
        pytest.fail(
            f"fsx seed {self.seed}, op {len(self.log)}: {what}\n"
            f"replay with DAXFS_FSX_SEED={self.seed} DAXFS_FSX_OPS={len(self.log)}\n"
            f"last operations:\n{tail}"
        )

    def _range(self, *, past_eof: bool = True) -> tuple[int, int]:
        end = MAX_LEN if past_eof else max(len(self.model), 1)
        offset = self.rng.randrange(end)
        length = self.rng.randrange(1, min(MAX_OP, MAX_LEN - offset) + 1)
        return offset, length

    def _fd(self) -> int:
        return self.rng.choice(self.fds)

    # -- operations --------------------------------------------------------

    def write(self) -> None:
        offset, length = self._range()
        data = self.rng.randbytes(length)
        self.log.append(f"write {offset} {length}")
        if os.pwrite(self._fd(), data, offset) != length:
            self.fail("short write")
        if offset > len(self.model):
            self.model.extend(bytes(offset - len(self.model)))
        self.model[offset : offset + length] = data

    def read(self) -> None:
        offset, length = self._range(past_eof=False)
        self.log.append(f"read {offset} {length}")
        got = os.pread(self._fd(), length, offset)
        want = bytes(self.model[offset : offset + length])
        if got != want:
            bad = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
            self.fail(
                f"READ BAD DATA at {offset}+{length}: got {len(got)} bytes, want {len(want)};"
                f" first difference at offset {None if bad is None else offset + bad}"
            )

    def truncate(self) -> None:
        size = self.rng.randrange(MAX_LEN)
        self.log.append(f"truncate {size}")
        if self.rng.random() < 0.5:
            os.ftruncate(self._fd(), size)
        else:
            os.truncate(self.path, size)
        if size < len(self.model):
            del self.model[size:]
        else:
            self.model.extend(bytes(size - len(self.model)))

    def _grow_to(self, end: int) -> None:
        if end > len(self.model):
            self.model.extend(bytes(end - len(self.model)))

    def allocate(self) -> None:
        offset, length = self._range()
        keep = self.rng.random() < 0.5
        self.log.append(f"fallocate {offset} {length}{' keep_size' if keep else ''}")
        fallocate(self._fd(), FALLOC_FL_KEEP_SIZE if keep else 0, offset, length)
        if not keep:
            self._grow_to(offset + length)

    def punch(self) -> None:
        offset, length = self._range()
        self.log.append(f"punch_hole {offset} {length}")
        fallocate(self._fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        end = min(offset + length, len(self.model))
        if offset < end:
            self.model[offset:end] = bytes(end - offset)

    def zero(self) -> None:
        offset, length = self._range()
        keep = self.rng.random() < 0.5
        self.log.append(f"zero_range {offset} {length}{' keep_size' if keep else ''}")
        fallocate(
            self._fd(), FALLOC_FL_ZERO_RANGE | (FALLOC_FL_KEEP_SIZE if keep else 0), offset, length
        )
        end = min(offset + length, len(self.model))
        if offset < end:
            self.model[offset:end] = bytes(end - offset)
        if not keep:
            self._grow_to(offset + length)

    def fsync(self) -> None:
        self.log.append("fsync")
        os.fsync(self._fd())

    def reopen(self) -> None:
        i = self.rng.randrange(len(self.fds))
        self.log.append(f"close and reopen descriptor {i}")
        os.close(self.fds[i])
        self.fds[i] = self._open()

    def check_size(self) -> None:
        for fd in self.fds:
            size = os.fstat(fd).st_size
            if size != len(self.model):
                self.fail(f"size {size}, model says {len(self.model)}")

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def run(self, ops: int) -> None:
        table: list[tuple[int, Callable[[], None]]] = [
            (30, self.write),
            (30, self.read),
            (6, self.truncate),
            (6, self.allocate),
            (6, self.punch),
            (6, self.zero),
            (3, self.fsync),
            (3, self.reopen),
        ]
        weights = [w for w, _ in table]
        calls = [c for _, c in table]
        try:
            for _ in range(ops):
                op = self.rng.choices(calls, weights)[0]
                try:
                    op()
                except OSError as exc:
                    self.fail(f"{self.log[-1]}: {errno.errorcode.get(exc.errno or 0)} {exc}")
                self.check_size()
            self.log.append("final read")
            whole = os.pread(self.fds[0], MAX_LEN + 1, 0)
            if whole != bytes(self.model):
                self.fail("final contents differ from the model")
        finally:
            self.close()
        if self.path.read_bytes() != bytes(self.model):
            self.fail("contents after the last close differ from the model")


@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_match_the_model(server: ServerProc, workdir: Path, seed: int) -> None:
    with fuse_mount(server.address, workdir / "mnt"):
        Fsx(workdir / "mnt" / "fsx.data", seed).run(OPS)
