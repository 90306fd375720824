"""Flush primitives: make stores to a shared mapping durable (pmem) or written back (msync).

The model is PMDK's libpmem: when ``pmem_is_pmem`` says a mapping is real
persistent memory (DAX, or forced with ``PMEM_IS_PMEM_FORCE=1``), a store is
durable once its cache lines are flushed (CLWB/CLFLUSHOPT) and fenced, all from
user space: :func:`Flusher.persist` calls ``pmem_persist``. Otherwise the
mapping is page-cache backed (a /dev/shm or disk file) and the only portable
way is ``msync(MS_SYNC)`` over the page-aligned range.

Visibility between guests needs no flush at all on one coherent machine: the
bytes are the same physical memory. Durability does.

libpmem reads ``PMEM_IS_PMEM_FORCE`` when it is loaded, so set it before the
first use of this module in a process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import logging
import mmap
import os
import threading

from daxfs.shared.errors import DaxfsError, InvalidArgument
from daxfs.shared.mman import msync

log = logging.getLogger(__name__)

PAGE_SIZE = mmap.PAGESIZE


class FlushMode(enum.StrEnum):
    PMEM = "pmem"
    """libpmem cache-line flush + fence; no system call."""
    MSYNC = "msync"
    """msync(MS_SYNC) on the page-aligned range."""


_pmem_lock = threading.Lock()
_pmem: ctypes.CDLL | None = None
_pmem_loaded = False


def libpmem() -> ctypes.CDLL | None:
    """libpmem (Debian's libpmem1) if installed, else None. Loaded once per process."""
    global _pmem, _pmem_loaded
    with _pmem_lock:
        if not _pmem_loaded:
            _pmem_loaded = True
            for name in ("libpmem.so.1", ctypes.util.find_library("pmem")):
                if not name:
                    continue
                try:
                    lib = ctypes.CDLL(name, use_errno=True)
                except OSError:
                    continue
                lib.pmem_is_pmem.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
                lib.pmem_is_pmem.restype = ctypes.c_int
                lib.pmem_persist.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
                lib.pmem_persist.restype = None
                lib.pmem_flush.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
                lib.pmem_flush.restype = None
                lib.pmem_drain.argtypes = ()
                lib.pmem_drain.restype = None
                _pmem = lib
                break
            if _pmem is None:
                log.debug("libpmem not found; every flush uses msync")
        return _pmem


class Flusher:
    """Flushes ranges of one mapping ``[base, base + length)``; the path is chosen once.

    ``persist`` guarantees that when it returns, stores made by this process to
    the range before the call are durable on pmem, or written back to the
    backing file otherwise. It does not make a file's new *size* known to the
    server: that is CommitLayout's job.
    """

    __slots__ = ("_base", "_length", "_lib", "mode")

    def __init__(self, base: int, length: int, *, mode: FlushMode | None = None) -> None:
        self._base = base
        self._length = length
        lib = libpmem()
        if mode is None:
            is_pmem = lib is not None and length > 0 and lib.pmem_is_pmem(base, length) == 1
            mode = FlushMode.PMEM if is_pmem else FlushMode.MSYNC
        if mode is FlushMode.PMEM and lib is None:
            raise InvalidArgument("the pmem flush path needs libpmem (apt install libpmem1)")
        self._lib = lib
        self.mode = mode

    def persist(self, offset: int, length: int) -> None:
        """Make ``[offset, offset + length)`` of the mapping durable."""
        if offset < 0 or length < 0 or offset + length > self._length:
            raise InvalidArgument(
                f"flush range [{offset}, {offset + length}) outside mapping of {self._length} bytes"
            )
        if length == 0:
            return
        if self.mode is FlushMode.PMEM:
            assert self._lib is not None
            self._lib.pmem_persist(self._base + offset, length)
            return
        start = (self._base + offset) // PAGE_SIZE * PAGE_SIZE
        end = self._base + offset + length
        err = msync(start, end - start)
        if err:
            raise DaxfsError(f"msync failed: {os.strerror(err)}", errno=err)

    def drain(self) -> None:
        """Wait for flushes issued so far (a fence on pmem; msync is already synchronous)."""
        if self.mode is FlushMode.PMEM:
            assert self._lib is not None
            self._lib.pmem_drain()


def buffer_address(view: object) -> tuple[int, int]:
    """(address, length in bytes) of any object exporting a contiguous buffer."""
    import numpy as np

    arr = view if isinstance(view, np.ndarray) else np.frombuffer(view, dtype=np.uint8)  # type: ignore[call-overload]
    if not arr.flags.c_contiguous:
        raise InvalidArgument("persist needs a contiguous buffer")
    return int(arr.ctypes.data), int(arr.nbytes)


def persist(view: object, offset: int = 0, length: int | None = None) -> FlushMode:
    """Make bytes ``[offset, offset + length)`` of a mapped buffer durable; returns the path used.

    ``view`` is a numpy array, memoryview or mmap over a shared mapping. The path
    (libpmem or msync) is chosen by ``pmem_is_pmem`` on that buffer.
    """
    base, size = buffer_address(view)
    if length is None:
        length = size - offset
    flusher = Flusher(base, size)
    flusher.persist(offset, length)
    return flusher.mode


def drain() -> None:
    """Fence outstanding pmem flushes (libpmem ``pmem_drain``); a no-op without libpmem."""
    lib = libpmem()
    if lib is not None:
        lib.pmem_drain()


def flush_mode(view: object) -> FlushMode:
    """Which path :func:`persist` takes for this buffer."""
    base, size = buffer_address(view)
    return Flusher(base, size).mode
