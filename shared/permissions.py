"""The POSIX permission rule, once: the server enforces it; the FUSE mount answers access()."""

from __future__ import annotations

import stat
from collections.abc import Collection
from dataclasses import dataclass

R_OK, W_OK, X_OK = 4, 2, 1


def mode_allows(
    mode: int, owner: int, group: int, uid: int, gid: int, groups: Collection[int], mask: int
) -> bool:
    """Whether a caller (uid, gid, groups) may do ``mask`` (R_OK|W_OK|X_OK) to a file.

    The owner class applies to the owner, the group class to members of the
    file's group, the other class to everyone else. Root may do anything but
    execute a non-directory that has no execute bit at all.
    """
    mask &= 7
    if uid == 0:
        return not (mask & X_OK) or stat.S_ISDIR(mode) or bool(mode & 0o111)
    if uid == owner:
        bits = (mode >> 6) & 7
    elif gid == group or group in groups:
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return not (mask & ~bits)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a call acts for: the POSIX ids the server checks mode bits against.

    The client library acts for its own process unless a call names another
    identity (the FUSE mount names the process whose system call it serves).
    """

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def may(self, mode: int, owner: int, group: int, mask: int) -> bool:
        """Whether this identity may do ``mask`` to a file with these mode bits and owners."""
        return mode_allows(mode, owner, group, self.uid, self.gid, self.groups, mask)
