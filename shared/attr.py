"""What stat() reports about an inode: one value type for the server's core and every client.

The server's core returns it (``Namespace.getattr`` and every call that
changes an inode), the gRPC edge carries it as ``pb.Attr``, and the client
library hands it to applications (``Client.stat``, ``Client.mkdir``, ...) and
to the FUSE edge, which turns it into the kernel's ``struct stat``. Only the
edges convert: ``server/service.py`` to the wire, ``client/rpc.py`` from it.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from daxfs.shared.extent import InodeId


@dataclass(frozen=True, slots=True)
class Attr:
    """An inode's attributes; sizes in bytes, times in ns since the epoch."""

    ino: InodeId
    generation: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    allocated: int
    """Bytes of region held by the file's extents (st_blocks * 512)."""
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    blksize: int
    rdev: int = 0
    """Device number of a character or block device, else 0."""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


@dataclass(frozen=True, slots=True)
class StatFs:
    """What statfs() reports of the volume: sizes in blocks of ``block_size`` bytes."""

    block_size: int
    blocks: int
    blocks_free: int
    files: int
    name_max: int
    """Longest name of one path component, in bytes (the server's NAME_MAX)."""


@dataclass(frozen=True, slots=True)
class SetAttr:
    """What one setattr changes (chmod, chown, truncate, utimens): each field given
    (not None, or True) is set, the rest of the inode is left as it is."""

    mode: int | None = None
    """Permission bits (the low twelve); the file type is kept."""
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    """New size in bytes: a truncate, down or up."""
    atime_ns: int | None = None
    """Explicit access time, ns since the epoch (the owner only)."""
    mtime_ns: int | None = None
    """Explicit modification time, ns since the epoch (the owner only)."""
    atime_now: bool = False
    """Access time to the server's now (UTIME_NOW: any writer may)."""
    mtime_now: bool = False
    """Modification time to the server's now (UTIME_NOW: any writer may)."""

    @property
    def touches_data(self) -> bool:
        """A size or time change: a client publishes its unpublished writes first
        (a truncate up would zero them, and a later publication would overwrite
        explicit times with now)."""
        return (
            self.size is not None
            or self.atime_ns is not None
            or self.mtime_ns is not None
            or self.atime_now
            or self.mtime_now
        )
