"""The memory-mapping system calls Python's ``mmap`` module does not offer, declared once.

``map_fixed`` (mmap with MAP_FIXED at a chosen address: stitching a file's
extents into one view, and fencing a view with anonymous pages), ``populate``
(filling a mapping's page tables in one call instead of one fault per page),
``msync`` on an arbitrary page-aligned address, and ``punch_hole`` (fallocate
PUNCH_HOLE).
Each returns 0 or the errno instead of raising: callers decide what a failure
means.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap

from daxfs.shared.limits import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
libc.mmap.restype = ctypes.c_void_p
libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
libc.madvise.restype = ctypes.c_int
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
libc.mprotect.restype = ctypes.c_int
libc.msync.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
libc.msync.restype = ctypes.c_int
libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
libc.fallocate.restype = ctypes.c_int

MAP_FIXED = 0x10  # <sys/mman.h>, the same on every Linux architecture daxfs targets
MAP_POPULATE = 0x8000
MADV_HUGEPAGE = 14
MADV_POPULATE_READ = 22  # Linux 5.14+; older kernels answer EINVAL
MADV_POPULATE_WRITE = 23
MS_SYNC = 4


def _errno() -> int:
    return ctypes.get_errno() or -1


#: Whether madvise(MADV_POPULATE_*) works here; cleared at its first EINVAL (kernel < 5.14).
_madvise_populates = True


def map_fixed(
    addr: int,
    length: int,
    prot: int,
    flags: int,
    fd: int,
    offset: int,
    *,
    populate: str | None = None,
    huge: bool = False,
) -> int:
    """mmap(addr, length, prot, flags | MAP_FIXED, fd, offset); 0 or the errno.

    ``populate`` ("read" or "write") also fills the page tables now (see
    :func:`populate_range`), so the first touch of each page takes no fault.
    ``huge`` asks for huge pages first (madvise MADV_HUGEPAGE: what a tmpfs
    mounted ``huge=advise`` waits for), so population maps 2 MiB entries.
    Only the mapping's success is reported: pages that cannot be populated
    (memory short) fault in later, and a kernel may ignore the advice.
    """
    if populate and not _madvise_populates:
        flags |= MAP_POPULATE  # read-fault population: what old kernels offer
        populate = None
    got = libc.mmap(addr, length, prot, flags | MAP_FIXED, fd, offset)
    if got != addr:
        return _errno()
    if huge:
        libc.madvise(addr, length, MADV_HUGEPAGE)
    if populate:
        err = populate_range(addr, length, write=populate == "write")
        if err == errno.EINVAL and not _madvise_populates:
            got = libc.mmap(addr, length, prot, flags | MAP_FIXED | MAP_POPULATE, fd, offset)
            if got != addr:
                return _errno()
    return 0


def populate_range(addr: int, length: int, *, write: bool) -> int:
    """Fault in [addr, addr+length) now: madvise(MADV_POPULATE_WRITE or _READ); 0 or the errno.

    WRITE population where a read fault would map pages read-only (a
    writable mapping on a DAX or page-cache filesystem), so that stores take
    no fault either; READ otherwise (on tmpfs and /dev/dax a read fault maps a
    shared writable page writable, and WRITE population costs twice as much:
    every page goes through the dirtying path). EINVAL means the kernel
    predates 5.14 (remembered: later calls of :func:`map_fixed` use
    MAP_POPULATE instead).
    """
    global _madvise_populates
    advice = MADV_POPULATE_WRITE if write else MADV_POPULATE_READ
    if libc.madvise(addr, length, advice) == 0:
        return 0
    err = _errno()
    if err == errno.EINVAL:
        _madvise_populates = False
    return err


def map_anonymous_over(addr: int, length: int) -> int:
    """Replace [addr, addr+length) with private zero pages; on failure revoke all access."""
    err = map_fixed(
        addr, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0
    )
    if err:
        libc.mprotect(addr, length, 0)  # PROT_NONE
    return err


def msync(addr: int, length: int) -> int:
    """msync(MS_SYNC) on a page-aligned address; 0 or the errno."""
    return 0 if libc.msync(addr, length, MS_SYNC) == 0 else _errno()


def punch_hole(fd: int, offset: int, length: int) -> int:
    """fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads zeros and holds no memory; 0 or errno."""
    if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return 0
    return _errno()
