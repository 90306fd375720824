"""POSIX ACLs as Linux stores them in extended attributes (``posix_acl_xattr``).

The core keeps an ACL as the bytes of its attribute and reads it only where
the mode bits and the ACL must agree: setting an access ACL sets the mode bits
it implies, and chmod rewrites the entries the mode bits stand for. Nothing
enforces the named entries (the mount does not ask for FUSE_POSIX_ACL): they are
stored and returned, and the mode bits are what permission checks read.
"""

from __future__ import annotations

import struct

from daxfs.shared import errors

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
# posix_acl_xattr format: a u32 version (2), then (u16 tag, u16 perm, u32 id) entries.
_ACL_VERSION = 2
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20

#: One entry: (tag, permission bits rwx, uid or gid for a named entry).
Entry = tuple[int, int, int]


def parse(value: bytes) -> list[Entry]:
    """The entries of a POSIX ACL attribute, checked as Linux's posix_acl_valid does."""
    if len(value) < _ACL_HEADER.size or (len(value) - _ACL_HEADER.size) % _ACL_ENTRY.size:
        raise errors.InvalidArgument("not a POSIX ACL")
    if _ACL_HEADER.unpack_from(value)[0] != _ACL_VERSION:
        raise errors.NotSupported("unknown POSIX ACL version")
    entries = [
        _ACL_ENTRY.unpack_from(value, off)
        for off in range(_ACL_HEADER.size, len(value), _ACL_ENTRY.size)
    ]
    tags = [tag for tag, _, _ in entries]
    named = any(t in (ACL_USER, ACL_GROUP) for t in tags)
    if (
        any(
            t not in (ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER)
            for t in tags
        )
        or any(perm & ~7 for _, perm, _ in entries)
        or [tags.count(t) for t in (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER)] != [1, 1, 1]
        or tags.count(ACL_MASK) > 1
        or (named and ACL_MASK not in tags)
    ):
        raise errors.InvalidArgument("invalid POSIX ACL")
    return entries


def pack(entries: list[Entry]) -> bytes:
    return _ACL_HEADER.pack(_ACL_VERSION) + b"".join(_ACL_ENTRY.pack(*e) for e in entries)


def mode_of(entries: list[Entry]) -> int:
    """The permission bits an access ACL implies: owner, mask (else group), other."""
    perm = {tag: p for tag, p, _ in entries}
    group = perm.get(ACL_MASK, perm[ACL_GROUP_OBJ])
    return perm[ACL_USER_OBJ] << 6 | group << 3 | perm[ACL_OTHER]


def with_mode(entries: list[Entry], mode: int) -> list[Entry]:
    """What chmod makes of an access ACL: its owner, group (or mask) and other entries."""
    has_mask = any(tag == ACL_MASK for tag, _, _ in entries)
    bits = {ACL_USER_OBJ: mode >> 6 & 7, ACL_OTHER: mode & 7}
    bits[ACL_MASK if has_mask else ACL_GROUP_OBJ] = mode >> 3 & 7
    return [(tag, bits.get(tag, perm), ident) for tag, perm, ident in entries]
