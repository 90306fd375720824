"""The POSIX permission rule, once: the server enforces it; the FUSE mount answers access()."""

from __future__ import annotations

import stat
from collections.abc import Collection

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
