"""A volume: one region and the metadata file that describes it, opened or formatted together.

Opening never formats. The metadata file records the region's UUID, size and
block size; a region and a metadata file that do not belong together are
refused with a message that says which is which, because pairing the wrong
ones would hand out extents that other files own.
"""

from __future__ import annotations

import logging
import os

from daxfs.server.lease_lifecycle import LEASES_AT_STOP
from daxfs.server.leases import DEFAULT_LEASE_NS, DEFAULT_MAX_SESSIONS, LeaseTable
from daxfs.server.metadata import ROOT_INO, Metadata
from daxfs.server.namespace import Namespace
from daxfs.shared.errors import FormatError, InvalidArgument, NotFound
from daxfs.shared.format import DEFAULT_BLOCK_SIZE
from daxfs.shared.region import Region, backing_size, format_region, read_superblock

log = logging.getLogger(__name__)


def default_meta_path(region_path: str) -> str:
    """The metadata file lives next to the region unless told otherwise."""
    return region_path + ".meta"


def format_volume(
    region_path: str, meta_path: str, size: int | None, block_size: int = DEFAULT_BLOCK_SIZE
) -> None:
    """mkfs: a fresh region and a fresh metadata file with an empty root directory."""
    import stat as _stat
    import time

    sb = format_region(region_path, size, block_size)
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(meta_path + suffix)
        except FileNotFoundError:
            pass
    meta = Metadata(meta_path)
    try:
        meta.create_schema(
            {
                "region_uuid": sb.uuid_str,
                "region_size": str(sb.region_size),
                "block_size": str(sb.block_size),
                "next_generation": "2",
            }
        )
        from daxfs.server.allocator import Allocator

        with meta.transaction():
            meta.insert_inode(
                ino=ROOT_INO,
                generation=1,
                mode=_stat.S_IFDIR | 0o755,
                uid=0,
                gid=0,
                nlink=2,
                now_ns=time.time_ns(),
            )
            Allocator(meta, sb.data_offset, sb.region_size, sb.block_size).format()
            # A new volume has had no leases: its first server needs no restart grace.
            meta.set_meta(LEASES_AT_STOP, "0")
    finally:
        meta.close()
    os.chmod(meta_path, 0o600)


def check_pairing(region_path: str, meta: Metadata) -> None:
    """Refuse a metadata file that describes another region."""
    sb = read_superblock(region_path)
    uuid = meta.get_meta("region_uuid")
    if uuid != sb.uuid_str:
        raise FormatError(
            f"metadata {meta.path} belongs to region {uuid}, but {region_path} is region "
            f"{sb.uuid_str}; pass the matching --meta, or format anew with `daxfs mkfs`"
        )
    for key, value in (("region_size", sb.region_size), ("block_size", sb.block_size)):
        if meta.get_meta(key) != str(value):
            raise FormatError(
                f"metadata {meta.path} says {key}={meta.get_meta(key)}, region says {value}"
            )


def open_volume(
    region_path: str,
    meta_path: str,
    *,
    size: int | None = None,
    lease_ns: int | None = None,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
) -> Namespace:
    """Open an existing volume; never formats. ``size``, if given, must match."""
    if not os.path.exists(region_path):
        raise NotFound(
            f"region {region_path} does not exist; create it with `daxfs mkfs` or pass --format"
        )
    if not os.path.exists(meta_path):
        raise NotFound(
            f"metadata {meta_path} does not exist; pass the right --meta, or format anew "
            "with `daxfs mkfs` (which erases the region)"
        )
    sb = read_superblock(region_path)
    if size is not None and size != sb.region_size:
        raise InvalidArgument(
            f"--size {size} differs from the existing region's {sb.region_size} bytes; "
            "drop --size to reopen it, or format anew with `daxfs mkfs`"
        )
    if backing_size(region_path) < sb.region_size:
        raise FormatError(f"{region_path} is shorter than its superblock says; it was truncated")
    meta = Metadata(meta_path)
    try:
        meta.check_schema()
        check_pairing(region_path, meta)
        region = Region(region_path)
    except BaseException:
        meta.close()
        raise
    leases = LeaseTable(
        DEFAULT_LEASE_NS if lease_ns is None else lease_ns, max_sessions=max_sessions
    )
    ns = Namespace(region, meta, leases=leases)
    reclaimed = ns.reclaim_orphans()
    if reclaimed:
        log.info("reclaimed %d orphan inodes left by the previous run", reclaimed)
    return ns


def close_volume(ns: Namespace) -> None:
    if not ns.failed:
        ns.shutdown()
    ns.meta.close()
    ns.region.close()
