"""Who asks, and what POSIX lets them do: the core's permission rules.

Each rule raises the errno Linux gives (EACCES for the mode bits, EPERM for
ownership rules) or returns. They read inode rows and a :class:`Caller`, and
change nothing: the namespace calls them inside its transaction, before it
changes anything.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from daxfs.server.acl import ACL_ACCESS, ACL_DEFAULT
from daxfs.server.metadata import InodeRow
from daxfs.shared import errors
from daxfs.shared.extent import ClientId
from daxfs.shared.permissions import R_OK, W_OK, X_OK, mode_allows


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: POSIX credentials checked against mode bits, and the client session."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    client: ClientId = ClientId(0)  # noqa: RUF009 - NewType() is the identity at run time
    """Session from Hello; 0 for a one-shot caller without layouts."""
    credential: str | None = None
    """The credential the edge authenticated; the session must belong to it (None: no check)."""


ROOT = Caller()


def may(row: InodeRow, caller: Caller, mask: int) -> None:
    """POSIX permission check; root passes except for exec on a file with no x bit."""
    if not mode_allows(row.mode, row.uid, row.gid, caller.uid, caller.gid, caller.groups, mask):
        raise errors.PermissionDenied(f"permission denied (inode {row.ino})")


def may_modify_dir(parent: InodeRow, victim: InodeRow | None, caller: Caller) -> None:
    """Adding or removing an entry of ``parent`` (``victim``: the entry removed, if any)."""
    may(parent, caller, W_OK | X_OK)
    # Sticky directory: only the owner of the entry or of the directory may remove it.
    sticky = victim is not None and parent.mode & stat.S_ISVTX and caller.uid != 0
    if sticky and victim is not None and caller.uid not in (victim.uid, parent.uid):
        raise errors.NotPermitted("sticky directory: not the owner")


def may_link(row: InodeRow, caller: Caller) -> None:
    """Linux's fs.protected_hardlinks = 1: link only what you own or may read and write.

    Someone else's file qualifies when it is a regular file that is neither
    set-uid nor set-gid-executable and the caller may read and write it.
    """
    if caller.uid in (0, row.uid):
        return
    setid = row.mode & stat.S_ISUID or (row.mode & stat.S_ISGID and row.mode & stat.S_IXGRP)
    if (
        not stat.S_ISREG(row.mode)
        or setid
        or not mode_allows(
            row.mode, row.uid, row.gid, caller.uid, caller.gid, caller.groups, R_OK | W_OK
        )
    ):
        raise errors.NotPermitted("protected hard links: not the owner of the file")


def may_xattr(row: InodeRow, name: str, caller: Caller, *, write: bool) -> None:
    """Linux's xattr_permission, by namespace.

    ``user.*``: read or write permission on the file, regular files and
    directories only. ``trusted.*``: root (CAP_SYS_ADMIN) only; others see
    none. ``security.*``: stored; written by the owner or root.
    ``system.posix_acl_access`` and ``_default``: set by the owner or
    root. Any other name: EOPNOTSUPP.
    """
    if name.startswith("user."):
        if not (stat.S_ISREG(row.mode) or stat.S_ISDIR(row.mode)):
            if write:
                raise errors.NotPermitted("user.* attributes need a file or directory")
            raise errors.NoData(f"no attribute {name!r}")
        may(row, caller, W_OK if write else R_OK)
    elif name.startswith("trusted."):
        if caller.uid != 0:
            if write:
                raise errors.NotPermitted("trusted.* attributes need CAP_SYS_ADMIN")
            raise errors.NoData(f"no attribute {name!r}")
    elif name.startswith("security.") or name in (ACL_ACCESS, ACL_DEFAULT):
        if write and caller.uid not in (0, row.uid):
            raise errors.NotPermitted(f"only the owner may set {name}")
    else:
        raise errors.NotSupported(f"attribute namespace of {name!r} is not supported")
