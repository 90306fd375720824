"""Extended attributes, with Linux's rules for names, sizes, namespaces and ACLs.

The values live in the metadata store (``xattrs`` table). Who may read or
write which namespace is :func:`daxfs.server.access.may_xattr`; a POSIX
access ACL and the mode bits are kept in agreement here (``acl.py`` holds
its format). The namespace resolves the path, holds its lock and transaction,
and updates ctime after a change; this module decides and stores.
"""

from __future__ import annotations

import stat

from daxfs.server import acl
from daxfs.server.access import Caller, may_xattr
from daxfs.server.metadata import InodeRow, Metadata
from daxfs.shared import errors
from daxfs.shared.extent import InodeId
from daxfs.shared.format import MIB

XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 64 * 1024
#: Names and values of one inode together, bytes (ENOSPC beyond).
XATTR_TOTAL_MAX = 1 * MIB
_XATTR_CREATE, _XATTR_REPLACE = 1, 2


def check_sizes(name: str, value: bytes) -> None:
    """setxattr(2)'s first checks: name 1..255 bytes (ERANGE), value up to 64 KiB (E2BIG)."""
    if not name or len(name.encode()) > XATTR_NAME_MAX:
        raise errors.RangeError(f"attribute name of 1..{XATTR_NAME_MAX} bytes")
    if len(value) > XATTR_SIZE_MAX:
        raise errors.ArgumentTooBig(f"attribute value over {XATTR_SIZE_MAX} bytes")


class Xattrs:
    """The extended attributes of every inode. The namespace's lock guards every call;
    the changing ones run inside its transaction."""

    def __init__(self, meta: Metadata) -> None:
        self.meta = meta

    def get(self, row: InodeRow, name: str, caller: Caller) -> bytes:
        may_xattr(row, name, caller, write=False)
        value = self.meta.get_xattr(row.ino, name)
        if value is None:
            raise errors.NoData(f"no attribute {name!r}")
        return value

    def names(self, row: InodeRow, caller: Caller) -> list[str]:
        """listxattr(2): ``trusted.*`` names only for root."""
        names = self.meta.list_xattrs(row.ino)
        if caller.uid != 0:
            names = [n for n in names if not n.startswith("trusted.")]
        return names

    def set(self, row: InodeRow, name: str, value: bytes, caller: Caller, *, flags: int) -> None:
        """setxattr(2) after :func:`check_sizes`; ``flags`` XATTR_CREATE (1) or _REPLACE (2).

        All names and values of one inode together stay within XATTR_TOTAL_MAX
        (ENOSPC beyond, as ext4 when its attribute space is full). An access
        ACL sets the permission bits it implies, and is stored only when it
        says more than they do (posix_acl_update_mode).
        """
        may_xattr(row, name, caller, write=True)
        old = self.meta.get_xattr(row.ino, name)
        if flags == _XATTR_CREATE and old is not None:
            raise errors.AlreadyExists(f"attribute {name!r} exists")
        if flags == _XATTR_REPLACE and old is None:
            raise errors.NoData(f"no attribute {name!r}")
        if name == acl.ACL_DEFAULT and not stat.S_ISDIR(row.mode):
            raise errors.PermissionDenied("a default ACL belongs on a directory")
        if name in (acl.ACL_ACCESS, acl.ACL_DEFAULT):
            entries = acl.parse(value)
            if name == acl.ACL_ACCESS:
                mode = (row.mode & ~0o777) | acl.mode_of(entries)
                in_group = row.gid == caller.gid or row.gid in caller.groups
                if caller.uid != 0 and not in_group:
                    mode &= ~stat.S_ISGID
                self.meta.update_inode(row.ino, mode=mode)
                if len(entries) == 3:  # no more than the mode bits say: not stored
                    self.meta.remove_xattr(row.ino, name)
                    return
        used = sum(
            len(n.encode()) + len(self.meta.get_xattr(row.ino, n) or b"")
            for n in self.meta.list_xattrs(row.ino)
            if n != name
        )
        if used + len(name.encode()) + len(value) > XATTR_TOTAL_MAX:
            raise errors.NoSpace(f"extended attributes of inode {row.ino} are full")
        self.meta.set_xattr(row.ino, name, value)

    def remove(self, row: InodeRow, name: str, caller: Caller) -> None:
        may_xattr(row, name, caller, write=True)
        if not self.meta.remove_xattr(row.ino, name):
            raise errors.NoData(f"no attribute {name!r}")

    def chmod_acl(self, ino: InodeId, mode: int) -> None:
        """chmod rewrites a stored access ACL's owner, group (or mask) and other entries."""
        value = self.meta.get_xattr(ino, acl.ACL_ACCESS)
        if value is None:
            return
        self.meta.set_xattr(ino, acl.ACL_ACCESS, acl.pack(acl.with_mode(acl.parse(value), mode)))
