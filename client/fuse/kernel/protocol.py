"""The FUSE kernel protocol (``<linux/fuse.h>``), the parts the daxfs daemon speaks.

One place for every opcode, flag and struct of the wire format, as typed
values: :class:`Opcode`, :class:`InitFlag`, :class:`SetattrValid` and
:class:`OpenFlag` name the numbers, and each ``struct.Struct`` below is one C
struct, little-endian, its size asserted against the header's at import.
The daemon answers protocol 7.39 (the first with FUSE_DIRECT_IO_ALLOW_MMAP) or
the kernel's own minor when that is lower, down to :data:`MIN_MINOR`; every
struct used here has had its present size since 7.31 or earlier.

A request is a ``fuse_in_header`` and the opcode's body; a reply is a
``fuse_out_header`` (``error`` is 0 or a negative errno) and the body. A
notification is a reply with ``unique`` 0 and the notify code in ``error``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final, NamedTuple

#: The protocol this daemon speaks: major 7, minor up to 39.
MAJOR: Final = 7
MINOR: Final = 39
#: Oldest kernel protocol accepted (Linux 5.4): the struct sizes below hold from it on.
MIN_MINOR: Final = 31

#: The smallest buffer the kernel accepts for a read of /dev/fuse.
MIN_READ_BUFFER: Final = 8192

#: fuse_attr.rdev etc. of the root node, and FUSE_ROOT_ID.
ROOT_ID: Final = 1


class Opcode(enum.IntEnum):
    """``enum fuse_opcode``."""

    LOOKUP = 1
    FORGET = 2  # no reply
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36  # no reply
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41  # no reply
    BATCH_FORGET = 42  # no reply
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51


#: Requests the kernel expects no answer to.
NO_REPLY: Final = frozenset(
    {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT, Opcode.NOTIFY_REPLY}
)


class InitFlag(enum.IntFlag):
    """``fuse_init_in/out.flags`` (bits 0-31) and ``flags2`` (bits 32-63, under INIT_EXT)."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    PARALLEL_DIROPS = 1 << 18
    HANDLE_KILLPRIV = 1 << 19
    POSIX_ACL = 1 << 20
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    INIT_EXT = 1 << 30
    #: flags2 bit 4 (7.39): a direct_io file may still be mapped MAP_SHARED.
    DIRECT_IO_ALLOW_MMAP = 1 << 36


class SetattrValid(enum.IntFlag):
    """``fuse_setattr_in.valid``: which fields a SETATTR sets."""

    MODE = 1 << 0
    UID = 1 << 1
    GID = 1 << 2
    SIZE = 1 << 3
    ATIME = 1 << 4
    MTIME = 1 << 5
    FH = 1 << 6
    ATIME_NOW = 1 << 7
    MTIME_NOW = 1 << 8
    LOCKOWNER = 1 << 9
    CTIME = 1 << 10
    KILL_SUIDGID = 1 << 11


class OpenFlag(enum.IntFlag):
    """``fuse_open_out.open_flags``."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3


class NotifyCode(enum.IntEnum):
    """``enum fuse_notify_code``: the ``error`` field of a notification."""

    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6


#: fuse_getattr_in.getattr_flags: ``fh`` is valid (an fstat).
GETATTR_FH: Final = 1 << 0
#: fuse_fsync_in.fsync_flags: fdatasync.
FSYNC_FDATASYNC: Final = 1 << 0


def _struct(fmt: str, size: int) -> struct.Struct:
    s = struct.Struct("<" + fmt)
    assert s.size == size, (fmt, s.size, size)
    return s


# -- headers ------------------------------------------------------------------
#: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
IN_HEADER: Final = _struct("IIQQIIIHH", 40)
#: len, error (0 or -errno), unique
OUT_HEADER: Final = _struct("IiQ", 16)

# -- request bodies -----------------------------------------------------------
#: major, minor, max_readahead, flags, flags2, unused[11]
INIT_IN: Final = _struct("IIIII44x", 64)
#: nlookup
FORGET_IN: Final = _struct("Q", 8)
#: count, dummy; then ``count`` FORGET_ONE
BATCH_FORGET_IN: Final = _struct("I4x", 8)
#: nodeid, nlookup
FORGET_ONE: Final = _struct("QQ", 16)
#: getattr_flags, dummy, fh
GETATTR_IN: Final = _struct("I4xQ", 16)
#: valid, padding, fh, size, lock_owner, atime, mtime, ctime, atimensec,
#: mtimensec, ctimensec, mode, unused4, uid, gid, unused5
SETATTR_IN: Final = _struct("I4xQQQQQQIIII4xII4x", 88)
#: mode, rdev, umask, padding; then the name
MKNOD_IN: Final = _struct("III4x", 16)
#: mode, umask; then the name
MKDIR_IN: Final = _struct("II", 8)
#: newdir; then old name, new name
RENAME_IN: Final = _struct("Q", 8)
#: newdir, flags, padding; then old name, new name
RENAME2_IN: Final = _struct("QI4x", 16)
#: oldnodeid; then the new name
LINK_IN: Final = _struct("Q", 8)
#: flags, open_flags
OPEN_IN: Final = _struct("II", 8)
#: flags, mode, umask, open_flags; then the name
CREATE_IN: Final = _struct("IIII", 16)
#: fh, offset, size, read_flags, lock_owner, flags, padding (READ, READDIR, READDIRPLUS)
READ_IN: Final = _struct("QQIIQI4x", 40)
#: fh, offset, size, write_flags, lock_owner, flags, padding; then the data
WRITE_IN: Final = _struct("QQIIQI4x", 40)
#: fh, flags, release_flags, lock_owner
RELEASE_IN: Final = _struct("QIIQ", 24)
#: fh, unused, padding, lock_owner
FLUSH_IN: Final = _struct("QI4xQ", 24)
#: fh, fsync_flags, padding
FSYNC_IN: Final = _struct("QI4x", 16)
#: size, flags (FUSE_COMPAT_SETXATTR_IN_SIZE: SETXATTR_EXT is not negotiated); name, value
SETXATTR_IN: Final = _struct("II", 8)
#: size, padding; then the name (GETXATTR) or nothing (LISTXATTR)
GETXATTR_IN: Final = _struct("I4x", 8)
#: mask, padding
ACCESS_IN: Final = _struct("I4x", 8)
#: fh, offset, length, mode, padding
FALLOCATE_IN: Final = _struct("QQQI4x", 32)
#: unique of the request to interrupt
INTERRUPT_IN: Final = _struct("Q", 8)

# -- reply bodies -------------------------------------------------------------
#: major, minor, max_readahead, flags, max_background, congestion_threshold,
#: max_write, time_gran, max_pages, map_alignment, flags2, max_stack_depth, unused[6]
INIT_OUT: Final = _struct("IIIIHHIIHHII24x", 64)
#: fuse_attr: ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec,
#: ctimensec, mode, nlink, uid, gid, rdev, blksize, flags
ATTR: Final = _struct("QQQQQQIIIIIIIIII", 88)
#: attr_valid, attr_valid_nsec, dummy; then fuse_attr
ATTR_OUT: Final = _struct("QII", 16)
#: nodeid, generation, entry_valid, attr_valid, entry_valid_nsec, attr_valid_nsec; then fuse_attr
ENTRY_OUT: Final = _struct("QQQQII", 40)
#: fh, open_flags, backing_id
OPEN_OUT: Final = _struct("QIi", 16)
#: size, padding
WRITE_OUT: Final = _struct("I4x", 8)
#: size, padding (GETXATTR/LISTXATTR asked with size 0)
GETXATTR_OUT: Final = _struct("I4x", 8)
#: kstatfs: blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, padding, spare[6]
STATFS_OUT: Final = _struct("QQQQQIII4x24x", 80)
#: fuse_dirent: ino, off, namelen, type; then the name, padded to 8 bytes
DIRENT: Final = _struct("QQII", 24)
#: fuse_notify_inval_inode_out: ino, off, len (len <= 0: to the end)
NOTIFY_INVAL_INODE_OUT: Final = _struct("Qqq", 24)
#: fuse_notify_inval_entry_out: parent, namelen, flags; then the name and a NUL
NOTIFY_INVAL_ENTRY_OUT: Final = _struct("QII", 16)


class InHeader(NamedTuple):
    """``fuse_in_header``: who asked what of which node.

    A NamedTuple, not a frozen dataclass: one is made per request, and a frozen
    dataclass's ``__init__`` costs a few microseconds of the 4 KiB read's budget.
    """

    #: Bytes of the whole request, header included.
    length: int
    opcode: int
    #: The request's id; the reply carries it back (0 only in notifications).
    unique: int
    #: The node the request is about (``ROOT_ID`` for the mount's root).
    nodeid: int
    #: The credentials of the calling process (0 for requests of the kernel itself).
    uid: int
    gid: int
    pid: int

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> InHeader:
        return cls._make(_IN_HEADER_FIELDS.unpack_from(buf))


#: ``fuse_in_header`` then the head of ``fuse_read_in`` (``fuse_write_in`` starts
#: the same): len, opcode, unique, nodeid, uid, gid, pid, fh, offset, size. The
#: one unpack of a READ or WRITE (the serving loop's per-request path).
IO_HEAD: Final = struct.Struct("<IIQQIII4xQQI")

#: IN_HEADER without total_extlen and padding (not used here).
_IN_HEADER_FIELDS: Final = struct.Struct("<IIQQIII")


@dataclass(frozen=True, slots=True)
class Attr:
    """``fuse_attr``: what a GETATTR, LOOKUP or CREATE reports of a node."""

    ino: int
    #: Bytes.
    size: int
    #: 512-byte blocks allocated.
    blocks: int
    #: Times in nanoseconds since the epoch.
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int = 0
    #: Preferred I/O size, bytes.
    blksize: int = 4096

    def pack(self) -> bytes:
        a, m, c = (divmod(t, 1_000_000_000) for t in (self.atime_ns, self.mtime_ns, self.ctime_ns))
        return ATTR.pack(
            self.ino,
            self.size,
            self.blocks,
            a[0],
            m[0],
            c[0],
            a[1],
            m[1],
            c[1],
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.rdev,
            self.blksize,
            0,
        )


def ns_to_s(pair: tuple[int, int]) -> float:
    """A (seconds, nanoseconds) validity pair back in seconds."""
    return pair[0] + pair[1] / 1e9


def split_ns(seconds: float) -> tuple[int, int]:
    """A timeout in seconds as (seconds, nanoseconds), the kernel's valid/nsec pair."""
    ns = max(0, round(seconds * 1_000_000_000))
    return ns // 1_000_000_000, ns % 1_000_000_000


def dirent(ino: int, offset: int, name: bytes, kind: int) -> bytes:
    """One ``fuse_dirent``, padded to 8 bytes; ``kind`` is the DT_* type, ``offset`` the next's."""
    rec = DIRENT.pack(ino, offset, len(name), kind) + name
    return rec + b"\0" * (-len(rec) % 8)


def out_header(length: int, unique: int, error: int = 0) -> bytes:
    """``fuse_out_header`` of a reply ``length`` bytes long; ``error`` is an errno (positive)."""
    return OUT_HEADER.pack(length, -error, unique)
