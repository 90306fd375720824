"""The region: a byte array shared by the server and every client, mapped MAP_SHARED.

Backing stores:
- a regular file (the embedded default lives in /dev/shm; a file on a DAX-mounted
  filesystem gives real pmem), sized by ftruncate at format time;
- a /dev/dax character device, whose size comes from sysfs and cannot change;
- in a VM, a shared-memory PCI BAR (ivshmem's sysfs ``resource2``), mapped only.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daxfs.shared.errors import FormatError, InvalidArgument, NotFound
from daxfs.shared.flush import Flusher, FlushMode, libpmem
from daxfs.shared.format import SUPERBLOCK_SIZE, Superblock
from daxfs.shared.hugepages import HUGE_PAGE, filesystem_type
from daxfs.shared.mman import punch_hole

log = logging.getLogger(__name__)

DEFAULT_REGION_PATH = "/dev/shm/daxfs.region"


def _device_size(path: str, st: os.stat_result) -> int:
    """Size of a /dev/dax character device, read from sysfs."""
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    sysfs = Path(f"/sys/dev/char/{major}:{minor}/size")
    try:
        return int(sysfs.read_text().strip())
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: cannot read the device size from {sysfs}: {exc}") from None


def backing_size(path: str) -> int:
    """Current size of a region's backing store (file or device)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"region {path} does not exist") from None
    if stat.S_ISCHR(st.st_mode):
        return _device_size(path, st)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{path}: a region must be a regular file or a /dev/dax device")
    return st.st_size


def format_region(path: str, size: int | None, block_size: int) -> Superblock:
    """Write a fresh superblock; a regular file is created (mode 0600) and sized.

    Formatting a file zero-fills it (ftruncate to 0, then to ``size``), so no
    byte of an earlier life of the region can show through a new file.
    """
    is_device = os.path.exists(path) and stat.S_ISCHR(os.stat(path).st_mode)
    if is_device:
        dev_size = backing_size(path)
        size = dev_size if size is None else size
        if size > dev_size:
            raise InvalidArgument(f"{path}: --size {size} exceeds the device's {dev_size} bytes")
    elif size is None:
        raise InvalidArgument("formatting a file region needs a size (e.g. --size 1G)")
    sb = Superblock.new(size, block_size)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        if is_device:
            _store_first_block(fd, sb)
        else:
            os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
            os.pwrite(fd, sb.pack(), 0)
            os.fsync(fd)
    finally:
        os.close(fd)
    log.info(
        "formatted region path=%s size=%d block=%d uuid=%s", path, size, block_size, sb.uuid_str
    )
    return sb


def write_superblock(path: str, sb: Superblock) -> None:
    """Rewrite an existing region's superblock in place (fsck's repair); nothing else changes.

    The rest of block 0 holds nothing (format zero-filled it), so a device's
    whole first block is stored anew.
    """
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if stat.S_ISCHR(os.fstat(fd).st_mode):
            _store_first_block(fd, sb)
        else:
            os.pwrite(fd, sb.pack(), 0)
            os.fsync(fd)
    finally:
        os.close(fd)
    log.info("rewrote the superblock path=%s uuid=%s", path, sb.uuid_str)


def read_first_block(path: str, length: int) -> bytes:
    """The first ``length`` bytes of a region, read or (a PCI BAR) mapped."""
    with open(path, "rb") as f:
        try:
            return f.read(length)
        except OSError:
            # A PCI BAR's sysfs file (an ivshmem device's resource2) can be mapped, not read.
            with mmap.mmap(f.fileno(), length, prot=mmap.PROT_READ) as mm:
                return bytes(mm)


def _store_first_block(fd: int, sb: Superblock) -> None:
    """Write a device's first block: /dev/dax takes no write(2) or fsync, only stores."""
    with mmap.mmap(fd, sb.block_size) as mm:
        u8 = np.frombuffer(mm, dtype=np.uint8)
        try:
            u8[:] = 0
            packed = sb.pack()
            u8[: len(packed)] = np.frombuffer(packed, dtype=np.uint8)
            # msync has no file to write back here; a cache-line flush is what there is.
            if libpmem() is not None:
                Flusher(int(u8.ctypes.data), sb.block_size, mode=FlushMode.PMEM).persist(
                    0, sb.block_size
                )
        finally:
            del u8


def read_superblock(path: str) -> Superblock:
    """Read and check the superblock without mapping the region."""
    return Superblock.unpack(read_first_block(path, SUPERBLOCK_SIZE), source=path)


class Region:
    """A mapped region. ``u8`` is a zero-copy uint8 view of all of it.

    The mapping stays valid until :meth:`close`; views taken from ``u8`` must be
    dropped before that.
    """

    def __init__(self, path: str, *, writable: bool = True) -> None:
        self.path = path
        size = backing_size(path)
        #: The superblock's bytes as opened: nothing may change them while mapped.
        self._superblock_bytes = read_first_block(path, SUPERBLOCK_SIZE)
        self.superblock = Superblock.unpack(self._superblock_bytes, source=path)
        if size < self.superblock.region_size:
            raise FormatError(
                f"{path}: the backing store has {size} bytes but the superblock says "
                f"{self.superblock.region_size}; it was truncated behind daxfs's back"
            )
        self.writable = writable
        self.fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            self._mm = mmap.mmap(
                self.fd, self.superblock.region_size, flags=mmap.MAP_SHARED, prot=prot
            )
        except OSError:
            os.close(self.fd)
            raise
        is_device = stat.S_ISCHR(os.fstat(self.fd).st_mode)
        #: Whether a read fault maps a shared page writable (tmpfs, /dev/dax: no
        #: write-notify), so writable views need only read population.
        self.read_fault_maps_writable = is_device or filesystem_type(path) == "tmpfs"
        if self.block_size >= HUGE_PAGE and not is_device:
            self._mm.madvise(mmap.MADV_HUGEPAGE)  # what tmpfs huge=advise waits for
        self.u8: npt.NDArray[np.uint8] = np.frombuffer(self._mm, dtype=np.uint8)
        if not writable:
            self.u8.flags.writeable = False
        self.base = int(self.u8.ctypes.data)
        self.flusher = Flusher(self.base, self.size)

    @property
    def size(self) -> int:
        return self.superblock.region_size

    @property
    def block_size(self) -> int:
        return self.superblock.block_size

    @property
    def flush_mode(self) -> FlushMode:
        return self.flusher.mode

    def check_range(self, offset: int, length: int) -> None:
        """Refuse a range that is not inside the data area."""
        if offset < self.superblock.data_offset or length < 0 or offset + length > self.size:
            raise InvalidArgument(
                f"range [{offset}, {offset + length}) is outside the region's data area"
            )

    def check(self) -> str | None:
        """What is wrong with the backing store now, or None (a region watchdog's probe).

        A truncated file would fault (SIGBUS) on access; a replaced or removed
        one means new clients would map something else than this mapping.
        """
        st = os.fstat(self.fd)
        if stat.S_ISREG(st.st_mode) and st.st_size < self.size:
            return f"truncated to {st.st_size} bytes behind daxfs's back"
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return "removed behind daxfs's back"
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return "replaced by another file behind daxfs's back"
        return None

    def check_superblock(self) -> str | None:
        """What overwrote the superblock since it was opened, or None (the watchdog's probe).

        Nothing of daxfs writes block 0 while a volume is open, so any
        difference from the bytes read at open is damage; new clients could
        no longer map the region.
        """
        now = self.u8[:SUPERBLOCK_SIZE].tobytes()
        if now == self._superblock_bytes:
            return None
        try:
            Superblock.unpack(now, source=self.path)
        except FormatError as exc:
            return str(exc)
        return f"{self.path}: superblock rewritten with other values behind daxfs's back"

    def supports_discard(self) -> bool:
        """Whether :meth:`discard` can punch holes here (tmpfs and DAX filesystems can).

        Probed on the unused tail of the superblock block, which holds nothing.
        """
        if not stat.S_ISREG(os.fstat(self.fd).st_mode) or not self.writable:
            return False
        probe = self.superblock.data_offset // 2
        return punch_hole(self.fd, probe, self.superblock.data_offset - probe) == 0

    def discard(self, offset: int, length: int) -> None:
        """Free extents: give their memory back (punch a hole) so they read as zeros.

        Where holes cannot be punched (a /dev/dax device), store zeros instead.
        """
        self.check_range(offset, length)
        if punch_hole(self.fd, offset, length) != 0:
            self.u8[offset : offset + length] = 0

    def zero(self, offset: int, length: int) -> None:
        self.check_range(offset, length)
        self.u8[offset : offset + length] = 0

    def persist(self, offset: int, length: int) -> None:
        self.flusher.persist(offset, length)

    def close(self) -> None:
        if self.fd < 0:
            return
        del self.u8
        try:
            self._mm.close()
        except BufferError:
            # Views handed out (numpy slices) are still alive; the mapping goes
            # away with the last of them.
            log.debug("region %s still has live views; unmapped when they go", self.path)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
