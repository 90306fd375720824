"""Names and paths as the core accepts them.

Paths are absolute, ``/``-separated, already resolved by the caller (the FUSE
kernel resolves ``.``, ``..`` and symlinks before a request reaches a FUSE
daemon; the client library does the same). A ``.`` or ``..`` component, a NUL
or a component over 255 bytes is refused. The whole path has no limit here:
PATH_MAX bounds each system call's argument, which the kernel checks, and a
relative name deep in a tree reaches the server as a long absolute path.
"""

from __future__ import annotations

from daxfs.shared import errors
from daxfs.shared.limits import NAME_MAX

#: Longest symlink target in bytes (Linux: PATH_MAX including the NUL).
SYMLINK_MAX = 4095


def check_name(name: str) -> None:
    """A directory entry name: 1..255 bytes of UTF-8, no '/', no NUL, not '.' or '..'."""
    if not name:
        raise errors.InvalidArgument("empty name")
    if "/" in name:
        raise errors.InvalidArgument(f"name {name!r} contains '/'")
    if "\0" in name:
        raise errors.InvalidArgument("name contains NUL")
    if name in (".", ".."):
        raise errors.InvalidArgument(f"name {name!r} is reserved")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidArgument(f"name {name!r} is not valid UTF-8") from None
    if len(encoded) > NAME_MAX:
        raise errors.NameTooLong(f"name of {len(encoded)} bytes exceeds {NAME_MAX}")


def split_path(path: str) -> list[str]:
    """Components of an absolute path; '//' collapses."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise errors.InvalidArgument(f"path {path!r} must be absolute")
    parts = [p for p in path.split("/") if p]
    for p in parts:
        check_name(p)
    return parts
