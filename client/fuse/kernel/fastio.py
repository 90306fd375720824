"""The kernel mount's compiled data path (``_fastio.c``) and what keeps it safe.

A 4 KiB READ or WRITE served in Python costs 30-46 µs of daemon CPU, most of
it the interpreter between two system calls. The compiled loop reads requests
from /dev/fuse itself. It answers a READ of an open file whose layout Python
showed it with one ``writev`` whose iovec points into the region (the same
one copy, by the kernel, as Python's ``DaxFile.send_segments``), and a WRITE
that overwrites mapped bytes inside the file's visible size with one memcpy
into the region (as ``DaxFile.pwrite``), without the interpreter. Every other
request, and any READ or WRITE it cannot answer (no copy for the handle, a
part not known to be mapped, a hole, growth, the lease near its end, a
set-id bit to clear, an O_APPEND handle), goes back to Python, which serves
it as before and then shows the loop the handle as it is now
(:meth:`FastPath.install`).

The layout safety invariant holds as on Python's path:
- A copy is what the client core knows (LayoutCache, the inode's visible
  size and mode) at one moment. Every change to those, and every fence,
  calls :meth:`FastPath.bump` (``SessionState.watch_copies``), which drops
  every copy under the loop's exclusive lock: when it returns, no READ or
  WRITE served from a dropped copy is in flight. A recall bumps under the
  fence's exclusive lock (``SessionState.recalled`` invalidates the layout
  cache there), so the recall is acknowledged only after the loop let go of
  the extents, exactly as for Python's copies.
- A copy is installed only if no bump came after Python read the generation
  it took the copy at (``fio_install``): a change racing the install wins.
- A copy is not used past the lease's self-fencing point as it stood at the
  install (earlier than the lease's end); Python's path then serves, and
  installs again with the renewed lease.
- The WRITEs it served are recorded per handle (the span they cover) until
  Python takes them (:meth:`FastPath.take_written`) before it serves that
  handle's FLUSH, FSYNC, SETATTR or RELEASE: the file is then dirty (its
  mtime moves at the publication) and an fsync persists the span.

The library is built from ``_fastio.c`` on first use with the system's C
compiler into ``$DAXFS_CACHE_DIR`` (default ``~/.cache/daxfs``), named by the
source's hash; without a compiler (a slim container) the mount serves every
request in Python. ``DAXFS_FASTIO=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

from daxfs.client.daxfile import IoCopy

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_fastio.c")
#: Request sizes the loop counts, handles it records WRITEs of, and the
#: ``may`` bits (``SIZES``, ``SLOTS``, ``MAY_READ``, ``MAY_WRITE`` in the C source).
_SIZES = 16
_SLOTS = 64
_MAY_READ = 1
_MAY_WRITE = 2

#: How long the loop stays awake polling for the next request after a request
#: was answered (by it, or by Python just before), before it sleeps in
#: read(2) (µs; ``$DAXFS_FASTIO_SPIN_US``, 0: never).
#: A sleeping thread is woken on another CPU, which on a virtual machine costs
#: more than the request (fio psync 4 KiB reads here: 25,000/s against
#: 135,000/s with reader and daemon on one CPU); a synchronous reader's next
#: request comes a few microseconds after the reply.
SPIN_US = 50

_build_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


class Counts(NamedTuple):
    """READs and WRITEs the compiled loop answered, and those it left to Python."""

    reads: int
    read_bytes: int
    fallbacks: int
    #: {READ size: count}
    sizes: dict[int, int]
    writes: int
    write_bytes: int
    #: {WRITE size: count}
    write_sizes: dict[int, int]
    #: Replies the kernel refused (EINVAL: a bug here; Python's path logs them).
    refused: int = 0


class Written(NamedTuple):
    """WRITEs the loop served through handle ``fh`` since the last take: they cover [lo, hi)."""

    fh: int
    lo: int
    hi: int


def cache_dir() -> Path:
    return Path(os.environ.get("DAXFS_CACHE_DIR") or Path.home() / ".cache" / "daxfs")


def enabled() -> bool:
    return os.environ.get("DAXFS_FASTIO", "1") != "0"


def library() -> ctypes.CDLL | None:
    """The compiled loop, built if needed; None when it cannot be (logged once)."""
    global _lib, _tried
    with _build_lock:
        if _tried:
            return _lib
        _tried = True
        try:
            _lib = _load(_build())
        except (OSError, subprocess.SubprocessError) as exc:
            log.info("the compiled READ path is unavailable (%s): READs are served in Python", exc)
            _lib = None
        return _lib


def _build() -> Path:
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = cache_dir() / f"fastio-{digest}.so"
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".fastio-", suffix=".so")
    os.close(fd)
    try:
        subprocess.run(
            [cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-lpthread"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(tmp, target)  # atomic: a concurrent build loses nothing
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp, u64, i64 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64
    lib.fio_new.argtypes, lib.fio_new.restype = [vp, u64], vp
    lib.fio_free.argtypes, lib.fio_free.restype = [vp], None
    lib.fio_gen.argtypes, lib.fio_gen.restype = [vp], u64
    lib.fio_bump.argtypes, lib.fio_bump.restype = [vp], None
    lib.fio_forget.argtypes, lib.fio_forget.restype = [vp, u64], None
    u32 = ctypes.c_uint32
    lib.fio_install.argtypes = [vp, u64, u32, u64, u64, i64, u32, ctypes.POINTER(u64)]
    lib.fio_install.restype = ctypes.c_int
    lib.fio_counts.argtypes, lib.fio_counts.restype = [vp, ctypes.POINTER(u64)], None
    lib.fio_take_written.argtypes = [vp, ctypes.POINTER(u64), u32]
    lib.fio_take_written.restype = u32
    lib.fio_serve.argtypes = [vp, ctypes.c_int, vp, ctypes.c_size_t, ctypes.c_int]
    lib.fio_serve.restype = ctypes.c_ssize_t
    lib.fio_set_spin.argtypes, lib.fio_set_spin.restype = [vp, i64], None
    lib.fio_spins.argtypes, lib.fio_spins.restype = [vp, ctypes.POINTER(u64)], None
    return lib


class FastPath:
    """The compiled loop of one mount, over the region mapped at ``address``."""

    def __init__(self, lib: ctypes.CDLL, address: int, length: int) -> None:
        self._lib = lib
        self._state = lib.fio_new(address, length)
        if not self._state:
            raise MemoryError("fio_new")
        self._closed = False
        self.set_spin(int(os.environ.get("DAXFS_FASTIO_SPIN_US", SPIN_US)))

    def set_spin(self, us: int) -> None:
        """Poll for the next request up to ``us`` microseconds after answering one (0: sleep)."""
        self._lib.fio_set_spin(self._state, max(0, us) * 1000)

    def spins(self) -> tuple[int, int]:
        """(caught, missed): waits after an answer that found the next request, that ran out."""
        out = (ctypes.c_uint64 * 2)()
        self._lib.fio_spins(self._state, out)
        return int(out[0]), int(out[1])

    def serve(self, fd: int, buf: int, length: int, answered: bool = False) -> int:
        """Answer READs and WRITEs until a request for Python arrives: its length (in ``buf``),
        0 once unmounted; raises OSError if /dev/fuse cannot be read. Runs without the GIL.
        ``answered``: the caller just answered a request, so the loop first waits
        awake for the next one (:meth:`set_spin`), as after one it answered."""
        n = int(self._lib.fio_serve(self._state, fd, buf, length, int(answered)))
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        return n

    def generation(self) -> int:
        """Read before taking a copy to install (see :meth:`install`)."""
        return int(self._lib.fio_gen(self._state))

    def bump(self) -> None:
        """Drop every copy; returns once no READ or WRITE served from one is in flight."""
        self._lib.fio_bump(self._state)

    def install(
        self,
        fh: int,
        generation: int,
        copy: IoCopy,
        until_ns: int,
    ) -> bool:
        """Show the loop handle ``fh`` as ``copy`` says, usable until ``until_ns``
        (CLOCK_MONOTONIC), taken at ``generation``. False if a bump came since."""
        tiles = copy.tiles
        flat = (ctypes.c_uint64 * (3 * len(tiles) or 1))(*(v for t in tiles for v in t))
        may = (_MAY_READ if copy.readable else 0) | (_MAY_WRITE if copy.writable else 0)
        installed = self._lib.fio_install(
            self._state, fh, may, generation, copy.size, until_ns, len(tiles), flat
        )
        return int(installed) > 0

    def take_written(self) -> list[Written]:
        """The WRITEs served here since the last take, one record per handle."""
        out: list[Written] = []
        buf = (ctypes.c_uint64 * (3 * _SLOTS))()
        while True:
            n = int(self._lib.fio_take_written(self._state, buf, _SLOTS))
            out.extend(Written(buf[3 * i], buf[3 * i + 1], buf[3 * i + 2]) for i in range(n))
            if n < _SLOTS:
                return out

    def forget(self, fh: int) -> None:
        self._lib.fio_forget(self._state, fh)

    def counts(self) -> Counts:
        out = (ctypes.c_uint64 * (6 + 4 * _SIZES))()
        self._lib.fio_counts(self._state, out)

        def sizes(at: int) -> dict[int, int]:
            pairs = ((int(out[at + 2 * i]), int(out[at + 2 * i + 1])) for i in range(_SIZES))
            return {size: count for size, count in pairs if size}

        return Counts(
            int(out[0]),
            int(out[1]),
            int(out[2]),
            sizes(5),
            int(out[3]),
            int(out[4]),
            sizes(5 + 2 * _SIZES),
            int(out[5 + 4 * _SIZES]),
        )
