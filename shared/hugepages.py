"""Huge pages: which page size a region's mappings get, and a tmpfs that gives 2 MiB pages.

A view maps each extent of a file separately. With 4 KiB pages a 1 GiB view
is 262,144 page-table entries: filling them costs time at every fresh view,
and random loads miss the TLB where numpy's private arrays (transparent huge
pages) do not. With 2 MiB blocks every extent starts and ends on a 2 MiB
boundary in the region, the view places file offset 0 on a 2 MiB boundary
too, and the kernel maps each 2 MiB with one PMD entry, if the backing store
has 2 MiB pages to give:

- a **tmpfs mounted ``huge=always``** (or ``within_size``, or any tmpfs when
  ``/sys/kernel/mm/transparent_hugepage/shmem_enabled`` says ``force``):
  ``daxfs server --huge`` mounts one at :data:`HUGE_TMPFS` unless something
  is mounted there already. When the kernel has no free 2 MiB page (memory
  fragmented), tmpfs silently uses 4 KiB pages for that piece: everything
  works, that piece is just slower;
- a tmpfs mounted ``huge=advise`` (or shmem_enabled ``advise``): the same once
  the mapping asks with madvise(MADV_HUGEPAGE), which daxfs does on 2 MiB-block
  regions;
- a ``/dev/dax`` device with 2 MiB alignment (the default).

hugetlbfs is not usable for a region file: it has no write(), which
formatting needs.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import stat
import tempfile
from pathlib import Path

import numpy as np

from daxfs.shared.format import KIB, MIB
from daxfs.shared.mman import libc

log = logging.getLogger(__name__)

#: The huge page size daxfs aims at: a PMD entry on x86-64 and arm64 (4 KiB granule).
HUGE_PAGE = 2 * MIB
BASE_PAGE = 4 * KIB
#: Where ``daxfs server --huge`` mounts its tmpfs, and the region file it puts there.
HUGE_TMPFS = "/run/daxfs/huge"
HUGE_REGION_PATH = f"{HUGE_TMPFS}/daxfs.region"
_PMD_FIELDS = ("ShmemPmdMapped:", "FilePmdMapped:", "AnonHugePages:")
_SHMEM_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")


def _mount_of(path: str) -> tuple[str, str, set[str]] | None:
    """(mount point, fs type, super-block options) of the filesystem holding ``path``."""
    real = os.path.realpath(path)
    best: tuple[str, str, set[str]] | None = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, rfields[0], set(rfields[2].split(",")) | set(fields[5].split(",")))
    return best


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding ``path`` ("tmpfs", "ext4", ...; "" if unknown)."""
    mount = _mount_of(path)
    return "" if mount is None else mount[1]


def _shmem_policy() -> str:
    """The bracketed word of shmem_enabled ('never' when the file is missing)."""
    try:
        text = _SHMEM_ENABLED.read_text()
    except OSError:
        return "never"
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return "never"


def backing_page_size(path: str) -> int:
    """The page size mappings of ``path`` (a region, or where one will be created) can get.

    HUGE_PAGE for a /dev/dax device and for a tmpfs that gives huge pages
    (mount option, or the system-wide shmem policy); BASE_PAGE otherwise.
    What a mapping actually got is :func:`mapped_huge`.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISCHR(st.st_mode):
        return HUGE_PAGE
    mount = _mount_of(path if st is not None else os.path.dirname(os.path.abspath(path)))
    if mount is None or mount[1] != "tmpfs":
        return BASE_PAGE
    policy = _shmem_policy()
    if policy == "deny":
        return BASE_PAGE
    if policy == "force":
        return HUGE_PAGE
    huge = {o.split("=", 1)[1] for o in mount[2] if o.startswith("huge=")}
    if huge & {"always", "within_size", "advise"} or policy in ("always", "within_size", "advise"):
        return HUGE_PAGE
    return BASE_PAGE


def mapped_huge(addr: int, length: int) -> int:
    """Bytes of [addr, addr+length) this process maps with huge page-table entries.

    Read from /proc/self/smaps (ShmemPmdMapped, FilePmdMapped, AnonHugePages,
    and hugetlb mappings); only pages already mapped count.
    """
    total = 0
    inside = False
    kernel_page = 0
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        head = line.split(maxsplit=1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo < addr + length and hi > addr
            kernel_page = 0
        elif inside and line.endswith(" kB"):
            name, value, _unit = line.split()
            if name == "KernelPageSize:":
                kernel_page = int(value) * KIB
            elif name in _PMD_FIELDS or (name == "Rss:" and kernel_page >= HUGE_PAGE):
                total += int(value) * KIB  # PMD-mapped THP, or all of a hugetlb mapping
    return total


def measured_page_size(path: str) -> int:
    """The page size new data of the region at ``path`` gets now: HUGE_PAGE or BASE_PAGE.

    Maps a 2 MiB scratch file next to the region (unnamed, gone at return),
    reads it and asks /proc/self/smaps; this also shows a tmpfs that should
    give huge pages but cannot (memory too fragmented). A /dev/dax device is
    taken at :func:`backing_page_size`'s word, as is a directory where the
    scratch file cannot be made.
    """
    st = os.stat(path)
    if stat.S_ISCHR(st.st_mode):
        return backing_page_size(path)
    try:
        with tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(path))) as f:
            os.ftruncate(f.fileno(), HUGE_PAGE)
            with mmap.mmap(f.fileno(), HUGE_PAGE, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                m.madvise(mmap.MADV_HUGEPAGE)
                probe = np.frombuffer(m, dtype=np.uint8)
                int(probe[0])  # the read maps the page
                huge = mapped_huge(int(probe.ctypes.data), HUGE_PAGE)
                del probe
                return HUGE_PAGE if huge else BASE_PAGE
    except OSError:
        return backing_page_size(path)


def mount_huge_tmpfs(point: str = HUGE_TMPFS) -> None:
    """Mount a tmpfs with huge=always at ``point`` unless a filesystem is mounted there already.

    Needs CAP_SYS_ADMIN. The tmpfs gets the kernel's default size limit (half
    of RAM); mount one yourself for other sizes, it is then used as it is.
    """
    os.makedirs(point, mode=0o700, exist_ok=True)
    if os.path.ismount(point):
        return
    libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
    options = b"huge=always,mode=0700"
    if libc.mount(b"daxfs-huge", point.encode(), b"tmpfs", 0, options) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount a huge-page tmpfs at {point}: {os.strerror(err)}")
    log.info("mounted a tmpfs with huge=always at %s", point)
