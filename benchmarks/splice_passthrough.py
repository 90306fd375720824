#!/usr/bin/env python3
"""Experiment: the naive passthrough, reading through libfuse's ``read_buf`` with fd-backed buffers.

``python benchmarks/splice_passthrough.py [--splice] SOURCE MOUNTPOINT``
serves reads without a copy in Python. ``read_buf`` hands libfuse a
``fuse_bufvec`` that names the source file's descriptor and offset
(``FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK``). libfuse then either reads the bytes
itself (default) or, with ``--splice``, splices them into /dev/fuse
(``FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE``). This is the design
daxfs's mount would use to drop its own copy (the region's fd at the extent's
offset), measured here on a plain tmpfs file first. See the README's
Performance section for the result.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import mfusepy

from daxfs.bench.naive_passthrough import Passthrough

FUSE_BUF_IS_FD = 1 << 1
FUSE_BUF_FD_SEEK = 1 << 2
FUSE_CAP_SPLICE_WRITE = 1 << 7
FUSE_CAP_SPLICE_MOVE = 1 << 8


class Buf(ctypes.Structure):
    """``struct fuse_buf``."""

    _fields_ = (
        ("size", ctypes.c_size_t),
        ("flags", ctypes.c_int),
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int),
        ("pos", ctypes.c_int64),
    )


class BufVec(ctypes.Structure):
    """``struct fuse_bufvec`` with its one inline ``buf[1]`` (mfusepy declares a pointer)."""

    _fields_ = (
        ("count", ctypes.c_size_t),
        ("idx", ctypes.c_size_t),
        ("off", ctypes.c_size_t),
        ("buf", Buf * 1),
    )


_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = (ctypes.c_size_t,)


class FdBuffers(Passthrough):
    def __init__(self, root: str, splice: bool) -> None:
        super().__init__(root)
        self.splice = splice

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            caps = FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE
            conn.want = (conn.want | caps) if self.splice else (conn.want & ~caps)

    def read_buf(self, path: str, bufpp: Any, size: int, offset: int, fh: int) -> int:
        # libfuse frees the vector with free(): it must come from malloc.
        raw = _libc.malloc(ctypes.sizeof(BufVec))
        if not raw:
            raise mfusepy.FuseOSError(12)  # ENOMEM
        vec = BufVec.from_address(raw)
        vec.count, vec.idx, vec.off = 1, 0, 0
        buf = vec.buf[0]
        buf.size, buf.flags, buf.mem = size, FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, None
        buf.fd, buf.pos = fh, offset
        ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = raw
        return 0


def main(argv: list[str]) -> int:
    splice = "--splice" in argv
    args = [a for a in argv if a != "--splice"]
    if len(args) != 2:
        print("usage: splice_passthrough.py [--splice] SOURCE MOUNTPOINT", file=sys.stderr)
        return 2
    mfusepy.FUSE(FdBuffers(args[0], splice), args[1], foreground=True, direct_io=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
