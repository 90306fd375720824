"""A volume: one region and the metadata file that describes it, opened or formatted together.

Opening never formats. The metadata file records the region's UUID, size and
block size; a region and a metadata file that do not belong together are
refused with a message that says which is which, because pairing the wrong
ones would hand out extents that other files own.

The metadata's record is also what a damaged superblock is rebuilt from
(``daxfs fsck --repair``), so no message here advises ``daxfs mkfs`` while a
metadata file records the region: mkfs would erase files that are intact.

One process at a time may write a volume: a server, mkfs, or a repairing
fsck. Each holds :class:`VolumeLock`, an exclusive ``flock`` on
``<metadata>.lock``. The kernel drops the lock when the holder's last
descriptor closes, so a process killed with SIGKILL leaves no stale lock; the
file's text (pid, host, command) only names the holder to whoever is refused.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import uuid as _uuid
from dataclasses import dataclass

from daxfs.server.lease_lifecycle import LEASES_AT_STOP
from daxfs.server.leases import DEFAULT_LEASE_NS, DEFAULT_MAX_SESSIONS, LeaseTable
from daxfs.server.metadata import ROOT_INO, Metadata
from daxfs.server.namespace import Namespace
from daxfs.shared.errors import (
    DaxfsError,
    FormatError,
    InvalidArgument,
    NotFound,
    SuperblockDamaged,
    VolumeBusy,
)
from daxfs.shared.format import DEFAULT_BLOCK_SIZE, Superblock, validate_geometry
from daxfs.shared.region import Region, backing_size, format_region, read_superblock

log = logging.getLogger(__name__)

#: Metadata keys of the region's record, written by mkfs.
REGION_UUID, REGION_SIZE, BLOCK_SIZE, REGION_CREATED_NS = (
    "region_uuid",
    "region_size",
    "block_size",
    "region_created_ns",
)


def default_meta_path(region_path: str) -> str:
    """The metadata file lives next to the region unless told otherwise."""
    return region_path + ".meta"


# -- the volume lock ------------------------------------------------------------


def lock_path(meta_path: str) -> str:
    return meta_path + ".lock"


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a volume's lock, as the holder wrote it into the lock file."""

    pid: int | None
    """None when the holder has not written its name yet (it is just starting)."""
    host: str = ""
    command: str = ""

    def __str__(self) -> str:
        if self.pid is None:
            return "another process (starting; its name is not written yet)"
        return f"pid {self.pid} on {self.host or 'an unknown host'} (`{self.command}`)"


def _read_holder(fd: int) -> LockHolder:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return LockHolder(int(info["pid"]), str(info.get("host", "")), str(info.get("command", "")))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return LockHolder(None)


class VolumeLock:
    """The exclusive lock of one volume, held from construction until :meth:`release`.

    Raises :class:`VolumeBusy` naming the holder if another process holds it.
    ``flock`` locks belong to an open file description: a second lock taken
    in the same process through another ``open`` is refused too, as it should.
    """

    def __init__(self, meta_path: str, purpose: str) -> None:
        self.path = lock_path(meta_path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(self._fd)
            os.close(self._fd)
            raise VolumeBusy(
                f"volume {meta_path} is in use by {holder}; {purpose} needs it alone: "
                "stop that process first",
                holder=holder,
            ) from None
        except BaseException:
            os.close(self._fd)
            raise
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(["daxfs", *sys.argv[1:]])[:1024],
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(me).encode() + b"\n", 0)

    def release(self) -> None:
        if self._fd >= 0:
            # Unlock before close; the name stays in the file: it is only read
            # by someone refused, and then it names the live holder.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> VolumeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(meta_path: str) -> LockHolder | None:
    """Who holds the volume's lock now, or None if nobody does (takes nothing)."""
    try:
        fd = os.open(lock_path(meta_path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        # Another user's volume: a check cannot tell, and says nothing rather than guess.
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# -- the region's record in the metadata ----------------------------------------


def recorded_superblock(meta: Metadata) -> Superblock:
    """The superblock the metadata's record describes (what mkfs wrote).

    Raises FormatError if the record is incomplete or impossible.
    """
    values = {k: meta.get_meta(k) for k in (REGION_UUID, REGION_SIZE, BLOCK_SIZE)}
    try:
        uid = _uuid.UUID(values[REGION_UUID] or "").bytes
        size, bsize = int(values[REGION_SIZE] or ""), int(values[BLOCK_SIZE] or "")
    except ValueError:
        raise FormatError(
            f"metadata {meta.path}: the region record is incomplete ({values})"
        ) from None
    validate_geometry(size, bsize, source=f"metadata {meta.path}")
    created = meta.get_meta(REGION_CREATED_NS)
    return Superblock(
        uuid=uid,
        region_size=size,
        block_size=bsize,
        data_offset=bsize,
        created_ns=int(created) if created and created.isdigit() else 0,
    )


def recorded_region(meta_path: str) -> Superblock | None:
    """The region the metadata file at ``meta_path`` records, or None if there is no
    readable daxfs metadata there."""
    if not os.path.isfile(meta_path):
        return None
    try:
        meta = Metadata(meta_path)
    except DaxfsError:
        return None
    try:
        meta.check_schema()
        return recorded_superblock(meta)
    except (DaxfsError, OSError):
        return None
    finally:
        meta.close()


def repair_advice(region_path: str, meta_path: str) -> str:
    """What to do about a region whose superblock is damaged, given its metadata."""
    rec = recorded_region(meta_path)
    if rec is None:
        return (
            f"no daxfs metadata at {meta_path} records it (pass the right --meta if it has "
            "one); if the region holds nothing you need, `daxfs mkfs` formats it"
        )
    try:
        size = backing_size(region_path)
    except DaxfsError:
        size = rec.region_size
    if size < rec.region_size or (os.path.isfile(region_path) and size != rec.region_size):
        return (
            f"the metadata {meta_path} records region {rec.uuid_str} of {rec.region_size} "
            f"bytes, but {region_path} has {size}: it is not that region (replaced or "
            "resized?); pass the --region the metadata belongs to (do not run mkfs: it "
            "would erase the metadata's files)"
        )
    return (
        f"the metadata {meta_path} is readable and records region {rec.uuid_str} "
        f"({rec.region_size} bytes, {rec.block_size}-byte blocks): stop any server on it and "
        f"run `daxfs fsck --repair --region {region_path} --meta {meta_path}`, which checks "
        "that they belong together and rewrites the superblock from that record, keeping "
        "every file (do not run mkfs: it would erase them)"
    )


def read_volume_superblock(region_path: str, meta_path: str) -> Superblock:
    """The region's superblock; a damaged one is refused with what to do about it."""
    try:
        return read_superblock(region_path)
    except SuperblockDamaged as exc:
        raise SuperblockDamaged(
            f"{exc}; {repair_advice(region_path, meta_path)}", **exc.context
        ) from None


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
                REGION_UUID: sb.uuid_str,
                REGION_SIZE: str(sb.region_size),
                BLOCK_SIZE: str(sb.block_size),
                REGION_CREATED_NS: str(sb.created_ns),
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


def check_pairing(region_path: str, meta: Metadata, sb: Superblock | None = None) -> None:
    """Refuse a metadata file that describes another region than ``region_path``
    (whose superblock is ``sb``, read here if not given)."""
    if sb is None:
        sb = read_volume_superblock(region_path, meta.path)
    uuid = meta.get_meta(REGION_UUID)
    if uuid != sb.uuid_str:
        raise FormatError(
            f"metadata {meta.path} belongs to region {uuid}, but {region_path} is region "
            f"{sb.uuid_str}; pass the --meta that belongs to this region"
        )
    for key, value in ((REGION_SIZE, sb.region_size), (BLOCK_SIZE, sb.block_size)):
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
        if recorded_region(meta_path) is not None:
            raise NotFound(
                f"region {region_path} does not exist, but the metadata {meta_path} records "
                "one: pass the --region it was moved to; if it is lost, the files' bytes "
                "are lost with it, and only `daxfs mkfs` (a new, empty volume) remains"
            )
        raise NotFound(
            f"region {region_path} does not exist; create it with `daxfs mkfs` or pass --format"
        )
    if not os.path.exists(meta_path):
        raise NotFound(
            f"metadata {meta_path} does not exist; pass the right --meta, or format anew "
            "with `daxfs mkfs` (which erases the region)"
        )
    sb = read_volume_superblock(region_path, meta_path)
    if size is not None and size != sb.region_size:
        raise InvalidArgument(
            f"--size {size} differs from the existing region's {sb.region_size} bytes; "
            "drop --size to reopen it"
        )
    if backing_size(region_path) < sb.region_size:
        raise FormatError(f"{region_path} is shorter than its superblock says; it was truncated")
    meta = Metadata(meta_path)
    try:
        meta.check_schema()
        check_pairing(region_path, meta, sb)
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


def close_volume(ns: Namespace, *, clean: bool = True) -> None:
    """Close the volume; ``clean`` records the stop for the next start's restart grace
    (not after the volume failed: its metadata may not take the write)."""
    if clean:
        ns.shutdown()
    ns.meta.close()
    ns.region.close()
