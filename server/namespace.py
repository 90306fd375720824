"""The core: the POSIX namespace and its calls over one region and one metadata store.

This module decides; the gRPC servicer only translates. It imports neither grpc
nor mfusepy (tests/test_repository.py enforces that). Each concern the calls
share lives beside it, in a module of its own:

- ``paths.py``: which names and paths are valid;
- ``access.py``: who asks (``Caller``) and the POSIX permission rules;
- ``open_files.py``: the open-file table;
- ``xattrs.py`` (with ``acl.py``): extended attributes and POSIX ACLs;
- ``extent_map.py``: where each file's bytes are;
- ``lease_lifecycle.py``: when freed blocks may be reused (quarantine, recalls,
  the restart grace); after every transaction that freed blocks under others'
  leases, the core sends the recalls and waits for them itself before the call
  returns;
- ``cache_grants.py``: which clients may answer which questions from their caches.

A volume that failed is not a state of this class: the edge stops calling it
and calls a ``FailedVolume`` (``failed.py``) instead, which refuses everything.

Concurrency: every public method holds ``self._lock``. One that changes
anything runs as one SQLite transaction (``_txn``); on failure nothing changes
(the allocator is reloaded from SQLite if it was touched). One that only reads
runs under ``_reading``, which turns SQLite's failures into daxfs errors too.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from daxfs.server import access, cache_grants, xattrs
from daxfs.server.access import ROOT as ROOT  # the edge and tests name them from here
from daxfs.server.access import Caller as Caller
from daxfs.server.allocator import Allocator
from daxfs.server.cache_grants import CacheGrants
from daxfs.server.extent_map import ExtentMap
from daxfs.server.lease_lifecycle import LeaseLifecycle, Outbox
from daxfs.server.leases import LeaseTable, RecallNotice, Session
from daxfs.server.metadata import ROOT_INO, InodeRow, Metadata, initial_size
from daxfs.server.open_files import Opened, OpenFile, OpenFiles
from daxfs.server.paths import SYMLINK_MAX, check_name, split_path
from daxfs.server.xattrs import Xattrs
from daxfs.shared import errors
from daxfs.shared.attr import Attr, StatFs
from daxfs.shared.extent import (
    MAX_FILE_SIZE,
    ClientId,
    Extent,
    FileHandle,
    InodeId,
    Layout,
    LeaseId,
    align_down,
    align_up,
    fill_holes,
)
from daxfs.shared.limits import MAX_RPC_IO, NAME_MAX, RENAME_EXCHANGE, RENAME_NOREPLACE
from daxfs.shared.permissions import R_OK, W_OK, X_OK
from daxfs.shared.region import Region

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    attr: Attr
    #: The inode's extended attribute names, for a caching client only.
    xattr_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OwnInvalidation:
    """What a call made stale in its own caller's cache (the reply's trailer)."""

    inos: list[InodeId]
    """Inodes whose attributes changed (or their extended attributes)."""
    paths: list[str]
    """Paths to drop, and everything below them."""
    xattrs_kept: list[InodeId]
    """Of ``inos``, those whose extended attributes the caller may keep (it
    still holds ``Xattrs(ino)``: only their other attributes changed)."""


@dataclass(slots=True)
class Counters:
    """Data-path RPC counters: a DAX client should leave these at zero."""

    read_calls: int = 0
    read_bytes: int = 0
    write_calls: int = 0
    write_bytes: int = 0
    layouts: int = 0
    recall_waits_timed_out: int = 0
    """Calls that freed blocks and gave up waiting for a live stream's acknowledgement."""
    extra: dict[str, int] = field(default_factory=dict)


def _check_range(offset: int, length: int) -> None:
    if offset < 0:
        raise errors.InvalidArgument(f"negative offset {offset}")
    if length < 0:
        raise errors.InvalidArgument(f"negative length {length}")
    if offset + length > MAX_FILE_SIZE:
        raise errors.FileTooBig(f"range [{offset}, {offset}+{length}) passes the largest file size")


def _setid_cleared(mode: int) -> int:
    """The mode after a chown, as Linux leaves it (root's chown too).

    A non-directory loses S_ISUID, and S_ISGID when group execute is set
    (without it, S_ISGID means mandatory locking and stays).
    """
    if stat.S_ISDIR(mode):
        return mode
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


#: Inode generations reserved by one write of ``next_generation`` (``Namespace._gen``).
GENERATION_BLOCK = 64

_SPECIAL = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFREG)


def _is_device(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _rdev(row: InodeRow) -> int:
    """A device's number, kept in the ``target`` column (decimal text)."""
    if _is_device(row.mode) and row.target:
        return int(row.target)
    return 0


class Namespace:
    """Files, directories and symlinks whose bytes live in extents of ``region``."""

    def __init__(
        self,
        region: Region,
        meta: Metadata,
        *,
        leases: LeaseTable | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.region = region
        self.meta = meta
        self.block_size = region.block_size
        self.leases = leases if leases is not None else LeaseTable()
        #: This server process; a client that sees it change knows its state is gone.
        self.instance = secrets.randbits(63) | 1
        self.clock = clock
        self.counters = Counters()
        self._lock = threading.RLock()
        self.allocator = Allocator(
            meta, region.superblock.data_offset, region.size, region.block_size
        )
        #: Where each file's bytes live (extent_map.py).
        self.extent_map = ExtentMap(region, meta, self.allocator)
        #: Grants, recalls, quarantine and the restart grace (lease_lifecycle.py).
        self.lifecycle = LeaseLifecycle(self.leases, meta, self.allocator, self._lock, clock)
        #: Who holds which file open (open_files.py); guarded by self._lock.
        self.opens = OpenFiles()
        #: Extended attributes and ACLs (xattrs.py).
        self.xattrs = Xattrs(meta)
        #: The next inode generation to hand out, and the bound SQLite records
        #: (``next_generation``): every generation handed out is below it, so
        #: the next instance, which starts there, never repeats one (``_gen``).
        #: Guarded by self._lock.
        self._next_generation = int(meta.get_meta("next_generation") or "1")
        self._generation_bound = self._next_generation
        #: Notified whenever recalls or invalidations complete; waits release self._lock.
        self._recalls_done = self.lifecycle.changed
        self._last_sweep = self.leases.now()  # monotonic ns; guarded by self._lock
        self.lifecycle.grace_until_wall = self._start_instance()
        #: Which clients may answer which metadata questions from their caches.
        self.grants = CacheGrants()
        #: Per serving thread: the session of the call being served, and what of
        #: its own cache its change made stale (the edge returns it with the reply).
        self._local = threading.local()

    # -- server instances ------------------------------------------------------

    def _start_instance(self) -> int:
        """Begin this instance (``LeaseLifecycle.start_instance``); the grace's wall-clock end."""
        return self.lifecycle.start_instance(self.leases.duration_ns)

    def connect(self, outbox: Outbox) -> None:
        """The edge that carries recalls and invalidations to session streams."""
        with self._lock:
            self.lifecycle.outbox = outbox

    def shutdown(self) -> None:
        """A clean stop: record whether leases were left, for the next instance's grace."""
        with self._lock:
            self.lifecycle.record_stop()

    # -- plumbing ------------------------------------------------------------

    @contextlib.contextmanager
    def _txn(self, *, wait_recalls: bool = True) -> Iterator[None]:
        """One SQLite transaction under the lock; after it, recalls go out and are waited for.

        Like a pNFS server that recalls layouts before it answers a conflicting
        SETATTR or REMOVE: once truncate, unlink or rename returns, every other
        guest with a live session stream has acknowledged (or ``RECALL_WAIT_NS``
        passed; quarantine keeps the blocks from reuse either way).
        """
        started: list[int] = []
        invalidated: list[int] = []
        with self._lock:
            outer = self.meta.depth == 0
            try:
                with self.meta.transaction():
                    yield
            except BaseException:
                if outer:
                    self.lifecycle.rollback()
                    self._local.reply = None
                    # The bound this transaction may have written is gone with it.
                    self._generation_bound = 0
                with self.meta.reading():
                    self.allocator.reload()
                raise
            if outer:
                self._discard_freed()
                started = self.lifecycle.send_recalls()
                invalidated = self._invalidate(self.meta.touched)
                self._grant_reply()
        if started and wait_recalls:
            self._wait_recalls(started)
        if outer and invalidated:
            self._wait_invalidations(invalidated)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A call that only reads SQLite: under the lock, its failures as daxfs errors
        (an I/O error or corruption is ``VolumeFailed``, as in a transaction)."""
        with self._lock, self.meta.reading():
            yield

    def _discard_freed(self) -> None:
        """After a commit: freed extents give their memory back and read as zeros.

        Never before the commit: a rolled-back free must keep its bytes. A crash
        between the two leaves free extents with old bytes; open_volume discards
        every free extent again at start.
        """
        for offset, length in self.allocator.take_freed():
            self.region.discard(offset, length)

    def _wait_recalls(self, started: list[int]) -> bool:
        """Until live streams acknowledged ``started`` (``LeaseLifecycle.wait``)."""
        done = self.lifecycle.wait(started)
        if not done:
            self.counters.recall_waits_timed_out += 1
        return done

    # -- metadata caches ------------------------------------------------------

    def start_call(self) -> None:
        """A new call on this thread (the edge says so): nobody's yet."""
        self._local.client = ClientId(0)
        self._local.own = None
        self._local.reply = None

    def take_own_invalidation(self) -> OwnInvalidation | None:
        """What the call just served made stale in its caller's own cache, if anything."""
        own: OwnInvalidation | None = getattr(self._local, "own", None)
        self._local.own = None
        return own

    def _invalidate(self, touched: set[cache_grants.Key]) -> list[int]:
        """After a commit: every client caching what changed is told; returns ids to wait for.

        The caller's own session is not sent anything: what it must drop rides
        back with its reply (``take_own_invalidation``).
        """
        if not touched:
            return []
        holders = self.grants.holders(touched)
        me = getattr(self._local, "client", 0)
        sent: list[int] = []
        for client, keys in holders.items():
            self.grants.revoke(client, keys)
            inos, paths = self._stale(keys)
            if client == me:
                # The caller's Attr(ino) ended, its Xattrs(ino) did not (this
                # change left the xattrs alone, and nobody else's change ended
                # it before this one: that change would have revoked it, under
                # this lock, and told the caller on its stream): it keeps what
                # it knows of them. Decided here, under the lock that orders
                # every change, so a later xattr change by another client finds
                # the grant and is sent to the caller like any invalidation;
                # the caller applies that one whenever it comes, and this reply
                # only ever keeps less than its cache holds (client/meta_cache.py).
                kept = [
                    k.ino
                    for k in keys
                    if isinstance(k, cache_grants.Attr)
                    and self.grants.holds(client, cache_grants.Xattrs(k.ino))
                ]
                own = getattr(self._local, "own", None) or OwnInvalidation([], [], [])
                self._local.own = OwnInvalidation(
                    own.inos + inos, own.paths + paths, own.xattrs_kept + kept
                )
                continue
            session = self.leases.session_or_none(client)
            if session is None:
                self.grants.drop(client)
                continue
            inv = self.grants.send(client, inos, paths, session.deadline_ns)
            self.lifecycle.outbox.deliver_invalidation(client, inv)
            sent.append(inv.id)
        return sent

    def _reply_grant(self, caller: Caller, *keys: cache_grants.Key) -> None:
        """The call's reply depends on ``keys``: a caching caller may keep it.

        Granted only after the commit (``_grant_reply``, in ``_txn``): the
        change revokes what it touched, the caller's own grants included, and
        the reply describes the state after it.
        """
        self._local.reply = (caller.client, keys)

    def _grant_reply(self) -> None:
        """After a commit's invalidations went out, under the same lock: nothing
        can change what the reply said between them and this grant."""
        reply = getattr(self._local, "reply", None)
        self._local.reply = None
        if reply is not None:
            self.grants.grant(*reply)

    def _stale(self, keys: set[cache_grants.Key]) -> tuple[list[InodeId], list[str]]:
        """Keys as a client can apply them: inode numbers, and paths to drop at and under."""
        inos: list[InodeId] = []
        paths: list[str] = []
        for key in keys:
            if isinstance(key, cache_grants.Attr | cache_grants.Xattrs):
                inos.append(key.ino)
                continue
            where = self._dir_path(key.ino if isinstance(key, cache_grants.Perm) else key.dir)
            if where is None:
                continue  # the directory is gone: its entry in its parent is a key too
            if isinstance(key, cache_grants.Entry):
                where = where.rstrip("/") + "/" + key.name
            paths.append(where)
        return inos, paths

    def _dir_path(self, ino: InodeId) -> str | None:
        parts: list[str] = []
        while ino != ROOT_INO:
            entry = self.meta.entry_of(ino)
            if entry is None:
                return None
            ino, name = entry
            parts.append(name)
        return "/" + "/".join(reversed(parts))

    def _wait_invalidations(self, ids: list[int]) -> None:
        """Until each client acknowledged, or the lease it held when told has run out.

        A client answers from its cache only within its lease, counted on its
        own clock from before the server extended it, so past that deadline it
        has dropped the cache by itself.
        """
        with self._recalls_done:
            while self.grants.waiting(ids, self.leases.now()):
                self._recalls_done.wait(0.05)
            self.grants.forget(ids)

    def invalidation_done(self, client: ClientId, invalidation_id: int) -> None:
        with self._lock:
            if self.grants.done(client, invalidation_id):
                self._recalls_done.notify_all()

    def _gen(self) -> int:
        """A new inode's generation. SQLite records a bound ``GENERATION_BLOCK``
        ahead rather than each one (a write per create less); a crash skips at
        most that many. A rolled-back transaction takes its bound back with it:
        ``_txn`` then makes the next call write one again."""
        gen = self._next_generation
        self._next_generation += 1
        if gen >= self._generation_bound:
            self._generation_bound = gen + GENERATION_BLOCK
            self.meta.set_meta("next_generation", str(self._generation_bound))
        return gen

    def _inode(self, ino: InodeId) -> InodeRow:
        row = self.meta.get_inode(ino)
        if row is None:
            raise errors.StaleHandle(f"inode {ino} no longer exists")
        return row

    def _attr(self, row: InodeRow, *, allocated: int | None = None) -> Attr:
        """The attributes of ``row``; ``allocated``: its bytes held, if known (a new inode's: 0)."""
        return Attr(
            ino=row.ino,
            generation=row.generation,
            mode=row.mode,
            nlink=row.nlink,
            uid=row.uid,
            gid=row.gid,
            size=row.size,
            allocated=self.meta.allocated_bytes(row.ino) if allocated is None else allocated,
            atime_ns=row.atime_ns,
            mtime_ns=row.mtime_ns,
            ctime_ns=row.ctime_ns,
            blksize=self.block_size,
            rdev=_rdev(row),
        )

    # The permission rules live in access.py.
    _may = staticmethod(access.may)
    _may_modify_dir = staticmethod(access.may_modify_dir)
    _may_link = staticmethod(access.may_link)

    def _walk(self, parts: list[str], caller: Caller) -> InodeRow:
        self._local.client = caller.client
        caching = self.grants.caches(caller.client)
        keys: list[cache_grants.Key] = []
        row = self._inode(ROOT_INO)
        try:
            for name in parts:
                if not stat.S_ISDIR(row.mode):
                    raise errors.NotADirectory(f"{name!r}: a path component is not a directory")
                self._may(row, caller, X_OK)
                if caching:
                    keys += (cache_grants.Perm(row.ino), cache_grants.Entry(row.ino, name))
                child = self.meta.lookup(row.ino, name)
                if child is None:
                    raise errors.NotFound(f"no such file or directory: {name!r}")
                row = self._inode(child)
            keys.append(cache_grants.Attr(row.ino))
            return row
        finally:
            if caching:  # the answer, an error included, depends on these
                self.grants.grant(caller.client, keys)

    def _resolve(self, path: str, caller: Caller) -> InodeRow:
        return self._walk(split_path(path), caller)

    def _resolve_parent(
        self,
        path: str,
        caller: Caller,
        *,
        beside: str | None = None,
        walked: InodeRow | None = None,
    ) -> tuple[InodeRow, str]:
        """The directory that holds ``path``'s last name, and that name.

        ``beside``, ``walked``: another path of the same call and the parent
        this call resolved for it (under the lock, nothing changed since): a
        path in the same directory reuses it instead of walking again (the
        walk would find the same row and grant the same keys).
        """
        parts = split_path(path)
        if not parts:
            raise errors.Busy("the root directory has no parent")
        if walked is not None and beside is not None and split_path(beside)[:-1] == parts[:-1]:
            parent = walked
        else:
            parent = self._walk(parts[:-1], caller)
        if not stat.S_ISDIR(parent.mode):
            raise errors.NotADirectory(f"{path!r}: parent is not a directory")
        return parent, parts[-1]

    def _open_file(self, fh: FileHandle, caller: Caller) -> OpenFile:
        self._local.client = caller.client
        self.leases.session(caller.client, caller.credential)
        return self.opens.get(fh, caller.client)

    def _touch(self, ino: InodeId, *, mtime: bool = True) -> None:
        now = self.clock()
        if mtime:
            self.meta.update_inode(ino, mtime_ns=now, ctime_ns=now)
        else:
            self.meta.update_inode(ino, ctime_ns=now)

    # -- extents -------------------------------------------------------------

    def _drop_extents_from(
        self,
        ino: InodeId,
        keep_end: int,
        caller: Caller,
        end: int | None = None,
        *,
        beyond_eof: bool = False,
    ) -> None:
        """Free every block of ``ino`` in file range [keep_end, end) (block aligned).

        ``end`` None means to the end of the file (truncate, trimming
        preallocation); a bounded range punches a hole. What leaves the map
        goes through the lease lifecycle (recall and quarantine).
        """
        for piece in self.extent_map.cut(ino, keep_end, end):
            self.lifecycle.release(ino, piece, caller.client, beyond_eof=beyond_eof)

    def _set_size(self, row: InodeRow, new_size: int, caller: Caller) -> None:
        if new_size < row.size:
            keep_end = align_up(new_size, self.block_size)
            self._drop_extents_from(row.ino, keep_end, caller)
            self.extent_map.zero(row.ino, new_size, keep_end)
        elif new_size > row.size:
            # Bytes past the old EOF may hold stores that were never committed.
            self.extent_map.zero(row.ino, row.size, new_size)
        self.meta.update_inode(row.ino, size=new_size)

    def _destroy(self, row: InodeRow, caller: Caller) -> None:
        for piece in self.extent_map.drop(row.ino):
            self.lifecycle.release(row.ino, piece, caller.client)
        self.meta.delete_inode(row.ino)

    def _unref(self, ino: InodeId, caller: Caller) -> None:
        """Drop one link; destroy the inode when no link and no open remain."""
        row = self._inode(ino)
        nlink = row.nlink - (2 if stat.S_ISDIR(row.mode) else 1)
        nlink = max(nlink, 0)
        if nlink == 0 and self.opens.count(ino) == 0:
            # The row goes in this transaction: its last nlink and ctime need
            # no write first (delete_inode touches Attr(ino) as the update would).
            self._destroy(row, caller)  # by its number: what changed since does not matter
            return
        self.meta.update_inode(ino, nlink=nlink, ctime_ns=self.clock())

    @property
    def open_files(self) -> int:
        with self._lock:
            return len(self.opens)

    # -- lifecycle -----------------------------------------------------------

    def hello(self, credential: str = "", name: str = "", *, cache: bool = False) -> Session:
        """A new session bound to ``credential`` (RESOURCE_EXHAUSTED past the limit).

        ``cache``: the client caches metadata and follows invalidations (cache_grants).
        """
        with self._lock:
            session = self.leases.open_session(credential, name)
            if cache:
                self.grants.enable(session.id)
            log.info("session opened id=%d name=%s credential=%s", session.id, name, credential)
            return session

    def check_session(self, caller: Caller) -> None:
        """Refuse a caller naming a session that is not its own or not live; 0 names none.

        Any call naming a live session also counts as a sign of life on the
        server's side (the client still renews on its own clock).
        """
        if caller.client:
            with self._lock:
                self.leases.session(caller.client, caller.credential)
                self.leases.renew(caller.client)

    def goodbye(self, caller: Caller) -> None:
        """A client leaves for good: close its files, drop its leases; its id is dead after."""
        with self._txn():
            self.leases.session(caller.client, caller.credential)
            self._drop_session(caller.client)

    def evict(self, client: ClientId, caller: Caller) -> int:
        """The operator declares a session gone (a frozen or lost guest); returns files closed.

        Its quarantined blocks are released: only an operator can know that a
        guest that never answered will not resume.
        """
        if caller.uid != 0:
            raise errors.NotPermitted("only root may evict a session")
        with self._txn():
            self.leases.session(client)
            closed = self._drop_session(client)
            log.warning("session %d evicted by the operator: closed %d files", client, closed)
            return closed

    def _drop_session(self, client: ClientId) -> int:
        files = self.opens.of_client(client)
        for of in files:
            self._release(of, ROOT)
        self.lifecycle.complete(self.leases.drop_session(client))
        self.grants.drop(client)
        self._recalls_done.notify_all()
        return len(files)

    def renew(self, client: ClientId) -> Session:
        """Extend a session's lease; ESTALE if the server does not know it."""
        with self._lock:
            return self.leases.renew(client)

    def attach(self, client: ClientId) -> list[RecallNotice]:
        """A session stream opened: returns the unacknowledged recalls to send first.

        A client drops its whole metadata cache before it attaches a stream, so
        its cache grants and outstanding invalidations end here.
        """
        with self._lock:
            resend = self.leases.attach(client)
            self.grants.reset(client)
            self._recalls_done.notify_all()
            return resend

    def detach(self, client: ClientId) -> None:
        with self._lock:
            self.leases.detach(client)

    def recall_done(self, client: ClientId, recall_id: int) -> None:
        """A client fenced what a recall asked for."""
        with self._txn():
            self.lifecycle.complete(self.leases.recall_done(client, recall_id))

    def sessions(self) -> list[Session]:
        with self._lock:
            return self.leases.sessions()

    def reclaim_orphans(self) -> int:
        """Destroy inodes unlinked while open before a restart; their opens died with it."""
        with self._txn():
            orphans = self.meta.orphans()
            for ino in orphans:
                self._destroy(self._inode(ino), ROOT)
            return len(orphans)

    def sweep(self) -> int:
        """Drop sessions proven gone; free restart-grace quarantine that is due.

        Idle (no session gone, nothing quarantined) it opens no transaction: the
        daemon sweeps every second.
        """
        with self._lock:
            now = self.leases.now()
            # A gap longer than a client's renewal period (a third of a lease;
            # at least two sweep periods) means the server, not the clients, stalled.
            stall = max(self.leases.duration_ns // 3, 2_000_000_000)
            if now - self._last_sweep > stall:
                log.warning(
                    "server stalled %.1f s: clients get a grace period to renew",
                    (now - self._last_sweep) / 1e9,
                )
                self.leases.grace()
            self._last_sweep = now
            if not self.allocator.quarantined_bytes and not self.leases.gone_sessions():
                return 0
        with self._txn(wait_recalls=False):
            released = 0
            for client in self.leases.gone_sessions():
                before = self.allocator.quarantined_bytes
                closed = self._drop_session(client)
                released += max(before - self.allocator.quarantined_bytes, 0)
                log.info(
                    "session %d gone (stream closed, lease over): closed %d files, "
                    "dropped its leases",
                    client,
                    closed,
                )
            return released + self.lifecycle.release_due()

    # -- namespace calls -----------------------------------------------------

    def getattr(self, path: str, caller: Caller = ROOT) -> Attr:
        with self._reading():
            return self._attr(self._resolve(path, caller))

    def fgetattr(self, fh: FileHandle, caller: Caller) -> Attr:
        with self._reading():
            of = self._open_file(fh, caller)
            return self._attr(self._inode(of.ino))

    def lookup(self, parent: str, name: str, caller: Caller = ROOT) -> Attr:
        check_name(name)
        with self._reading():
            return self._attr(self._walk([*split_path(parent), name], caller))

    def _walk_one(self, dirrow: InodeRow, name: str, caller: Caller) -> InodeRow:
        if not stat.S_ISDIR(dirrow.mode):
            raise errors.NotADirectory("not a directory")
        self._may(dirrow, caller, X_OK)
        child = self.meta.lookup(dirrow.ino, name)
        if child is None:
            raise errors.NotFound(f"no such file or directory: {name!r}")
        return self._inode(child)

    def setattr(
        self,
        path: str | None,
        caller: Caller = ROOT,
        *,
        fh: FileHandle | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        atime_now: bool = False,
        mtime_now: bool = False,
    ) -> Attr:
        """chmod/chown/truncate/utimens; by path, or by open handle (ftruncate).

        Times follow utimensat(2): explicit values need the owner (or root),
        ``*_now`` needs the owner or write permission.
        """
        with self._txn():
            if fh is not None:
                of = self._open_file(fh, caller)
                row = self._inode(of.ino)
            else:
                if path is None:
                    raise errors.InvalidArgument("setattr needs a path or a handle")
                of = None
                row = self._resolve(path, caller)
            now = self.clock()
            owner = caller.uid in (0, row.uid)
            if mode is not None:
                if mode < 0 or mode > 0o7777:
                    raise errors.InvalidArgument(f"mode {mode:o} out of range")
                if not owner:
                    # What a write or truncate by a non-owner does on Linux: drop
                    # the set-id bits. Allowed to whoever may write the file.
                    perm = row.mode & 0o7777
                    dropped = perm & ~mode
                    if mode & ~perm or not dropped or dropped & ~(stat.S_ISUID | stat.S_ISGID):
                        raise errors.NotPermitted("only the owner may chmod")
                    if of is not None:
                        if not of.writable:
                            raise errors.NotPermitted("only the owner may chmod")
                    else:
                        self._may(row, caller, W_OK)
                new_mode = stat.S_IFMT(row.mode) | mode
                if caller.uid != 0 and row.gid != caller.gid and row.gid not in caller.groups:
                    new_mode &= ~stat.S_ISGID
                self.meta.update_inode(row.ino, mode=new_mode, ctime_ns=now)
                self._chmod_acl(row.ino, new_mode)
            if uid is not None or gid is not None:
                if (uid is not None and uid < 0) or (gid is not None and gid < 0):
                    raise errors.InvalidArgument("negative uid or gid")
                if caller.uid != 0:
                    if uid is not None and uid != row.uid:
                        raise errors.NotPermitted("only root may change the owner")
                    if gid is not None and (
                        caller.uid != row.uid or (gid != caller.gid and gid not in caller.groups)
                    ):
                        raise errors.NotPermitted("not allowed to change the group")
                self.meta.update_inode(
                    row.ino,
                    uid=row.uid if uid is None else uid,
                    gid=row.gid if gid is None else gid,
                    mode=_setid_cleared(self._inode(row.ino).mode),
                    ctime_ns=now,
                )
            if size is not None:
                if stat.S_ISDIR(row.mode):
                    raise errors.IsADirectory("cannot truncate a directory")
                if not stat.S_ISREG(row.mode):
                    raise errors.InvalidArgument("can only truncate a regular file")
                _check_range(size, 0)
                if of is not None:
                    if not of.writable:
                        raise errors.BadHandle("handle not open for writing")
                else:
                    self._may(row, caller, W_OK)
                self._set_size(self._inode(row.ino), size, caller)
                self.meta.update_inode(row.ino, mtime_ns=now, ctime_ns=now)
            if (atime_ns is not None or mtime_ns is not None) and not owner:
                raise errors.NotPermitted("only the owner may set explicit times")
            if (atime_now or mtime_now) and not owner:
                self._may(row, caller, W_OK)
            if atime_ns is not None or mtime_ns is not None or atime_now or mtime_now:
                fields: dict[str, Any] = {"ctime_ns": now}
                if atime_now or atime_ns is not None:
                    fields["atime_ns"] = now if atime_now else atime_ns
                if mtime_now or mtime_ns is not None:
                    fields["mtime_ns"] = now if mtime_now else mtime_ns
                self.meta.update_inode(row.ino, **fields)
            if of is None:  # a path's answer: the walk granted the rest
                self._reply_grant(caller, cache_grants.Attr(row.ino))
            return self._attr(self._inode(row.ino))

    def _new_inode(
        self,
        parent: InodeRow,
        name: str,
        mode: int,
        caller: Caller,
        target: str | None = None,
        *,
        absent: bool = False,
    ) -> InodeRow:
        """A new inode named ``name`` in ``parent``; ``absent``: the caller looked the
        name up in this transaction already and found nothing."""
        if not absent and self.meta.lookup(parent.ino, name) is not None:
            raise errors.AlreadyExists(f"{name!r} already exists")
        self._may_modify_dir(parent, None, caller)
        gid = parent.gid if parent.mode & stat.S_ISGID else caller.gid
        if stat.S_ISDIR(mode) and parent.mode & stat.S_ISGID:
            mode |= stat.S_ISGID
        generation = self._gen()
        nlink = 2 if stat.S_ISDIR(mode) else 1
        now = self.clock()
        ino = self.meta.insert_inode(
            generation=generation,
            mode=mode,
            uid=caller.uid,
            gid=gid,
            nlink=nlink,
            now_ns=now,
            target=target,
        )
        self.meta.add_dirent(parent.ino, name, ino)
        if stat.S_ISDIR(mode):
            # Its ".." links the parent; one write with _touch's times.
            touched = self.clock()
            self.meta.update_inode(
                parent.ino, nlink=parent.nlink + 1, mtime_ns=touched, ctime_ns=touched
            )
        else:
            self._touch(parent.ino)
        # The row as inserted (only the parent's changed since): no need to read it back.
        size = initial_size(mode, target)
        return InodeRow(
            ino, generation, mode, caller.uid, gid, nlink, size, now, now, now, target, False
        )

    def create(
        self,
        path: str,
        mode: int,
        caller: Caller = ROOT,
        *,
        exclusive: bool = False,
        truncate: bool = False,
        readable: bool = True,
        writable: bool = True,
        append: bool = False,
    ) -> Opened:
        """open(O_CREAT): make a regular file, or open the existing one unless ``exclusive``."""
        if mode & ~0o7777:
            raise errors.InvalidArgument(f"mode {mode:o}: only permission bits belong here")
        with self._txn():
            parent, name = self._resolve_parent(path, caller)
            self._may(parent, caller, X_OK)
            existing = self.meta.lookup(parent.ino, name)
            if existing is not None:
                if exclusive:
                    raise errors.AlreadyExists(f"{path} already exists")
                opened = self._open(
                    self._inode(existing), caller, readable, writable, append, truncate
                )
            else:
                row = self._new_inode(parent, name, stat.S_IFREG | mode, caller, absent=True)
                opened = self._register_open(row, caller, readable, writable, append, allocated=0)
            ino = opened.attr.ino
            if not self.grants.caches(caller.client):
                self._reply_grant(caller, *self._made(caller, parent, name, ino))
                return opened
            # A caching client learns the file's xattr names too (a new file
            # has none: nothing is inherited, see _new_inode), and keeps them
            # until the server says Xattrs(ino) changed: the kernel's getxattr
            # of security.capability before a write or a chown is then no call.
            names = () if existing is None else self.xattrs.names(self._inode(ino), caller)
            self._reply_grant(
                caller, *self._made(caller, parent, name, ino), cache_grants.Xattrs(ino)
            )
            return Opened(opened.handle, opened.attr, tuple(names))

    def open(
        self,
        path: str,
        caller: Caller = ROOT,
        *,
        readable: bool = True,
        writable: bool = False,
        append: bool = False,
        truncate: bool = False,
    ) -> Opened:
        with self._txn():
            row = self._resolve(path, caller)
            return self._open(row, caller, readable, writable, append, truncate)

    def _open(
        self,
        row: InodeRow,
        caller: Caller,
        readable: bool,
        writable: bool,
        append: bool,
        truncate: bool,
    ) -> Opened:
        if stat.S_ISDIR(row.mode):
            if writable or truncate:
                raise errors.IsADirectory("cannot open a directory for writing")
        elif not stat.S_ISREG(row.mode):
            raise errors.InvalidArgument("only regular files and directories can be opened")
        mask = (R_OK if readable else 0) | (W_OK if writable or truncate else 0)
        self._may(row, caller, mask)
        if truncate and row.size:
            self._set_size(row, 0, caller)
            self._touch(row.ino)
        return self._register_open(self._inode(row.ino), caller, readable, writable, append)

    def _register_open(
        self,
        row: InodeRow,
        caller: Caller,
        readable: bool,
        writable: bool,
        append: bool,
        *,
        allocated: int | None = None,
    ) -> Opened:
        self.leases.session(caller.client, caller.credential)
        fh = self.opens.add(
            caller.client,
            row.ino,
            row.generation,
            readable=readable,
            writable=writable,
            append=append,
        )
        return Opened(fh, self._attr(row, allocated=allocated))

    def release(self, fh: FileHandle, caller: Caller) -> None:
        """close(): on the last close, trim speculative preallocation; destroy if unlinked."""
        with self._lock:
            with self._reading():
                of = self._open_file(fh, caller)
                if not self._release_writes(of):
                    # Most closes change nothing in SQLite (another open
                    # remains, or no block lies past EOF): no write transaction.
                    self.opens.remove(of)
                    return
            with self._txn():
                self._release(of, caller)

    def _release_writes(self, of: OpenFile) -> bool:
        """Whether closing ``of`` changes SQLite: what ``_release`` would write."""
        if self.opens.count(of.ino) > 1:
            return False
        row = self.meta.get_inode(of.ino)
        if row is None:
            return False
        if row.nlink == 0:
            return True
        if stat.S_ISREG(row.mode) and not row.keep_prealloc:
            if not self.meta.allocated_bytes(row.ino):  # (often cached: no blocks at all)
                return False
            end, _held = self.meta.extent_summary(row.ino)
            return end > align_up(row.size, self.block_size)
        return False

    def _release(self, of: OpenFile, caller: Caller) -> None:
        if not self.opens.remove(of):
            return
        row = self.meta.get_inode(of.ino)
        if row is None:
            return
        if row.nlink == 0:
            self._destroy(row, caller)
        elif stat.S_ISREG(row.mode) and not row.keep_prealloc:
            self._drop_extents_from(
                row.ino, align_up(row.size, self.block_size), caller, beyond_eof=True
            )

    def _made(
        self, caller: Caller, parent: InodeRow, name: str, ino: InodeId
    ) -> list[cache_grants.Key]:
        """What the answer for a name just made (or opened by create) depends on,
        beyond the walk to its parent; and the parent's listing, if the caller
        held it (it adds the name to its copy: ``client/meta_cache.py``)."""
        keys: list[cache_grants.Key] = [
            cache_grants.Perm(parent.ino),
            cache_grants.Entry(parent.ino, name),
            cache_grants.Attr(ino),
        ]
        return keys + self._listings_held(caller, parent)

    def _listings_held(self, caller: Caller, *dirs: InodeRow) -> list[cache_grants.Key]:
        """The listings of ``dirs`` the caller holds: its change of a name in them
        ends them (``_invalidate``), and it updates its copy instead, so they are
        granted again with the reply."""
        held = (cache_grants.Names(d.ino) for d in dirs)
        return [k for k in held if self.grants.holds(caller.client, k)]

    def mkdir(self, path: str, mode: int, caller: Caller = ROOT) -> Attr:
        if mode & ~0o7777:
            raise errors.InvalidArgument(f"mode {mode:o}: only permission bits belong here")
        with self._txn():
            parent, name = self._resolve_parent(path, caller)
            row = self._new_inode(parent, name, stat.S_IFDIR | mode, caller)
            # Empty: its creator knows every name in it (none) until told otherwise.
            self._reply_grant(
                caller, *self._made(caller, parent, name, row.ino), cache_grants.Names(row.ino)
            )
            return self._attr(row, allocated=0)

    def mknod(self, path: str, mode: int, caller: Caller = ROOT, *, rdev: int = 0) -> Attr:
        """mknod(2): a FIFO, unix socket, device or empty regular file; nothing is opened.

        Only the inode is stored: the guest kernel serves a special file's I/O.
        A device needs root (CAP_MKNOD), as on Linux.
        """
        kind = stat.S_IFMT(mode)
        if kind not in _SPECIAL or mode & ~(stat.S_IFMT(mode) | 0o7777):
            raise errors.InvalidArgument(f"mknod mode {mode:o}: not a special or regular file")
        if not _is_device(mode):
            rdev = 0
        elif caller.uid != 0:
            raise errors.NotPermitted("only root may create a device node")
        elif rdev < 0 or rdev >= 1 << 64:
            raise errors.InvalidArgument(f"device number {rdev} out of range")
        with self._txn():
            parent, name = self._resolve_parent(path, caller)
            target = str(rdev) if _is_device(mode) else None
            row = self._new_inode(parent, name, mode, caller, target)
            self._reply_grant(caller, *self._made(caller, parent, name, row.ino))
            return self._attr(row, allocated=0)

    def symlink(self, target: str, path: str, caller: Caller = ROOT) -> Attr:
        if not target or "\0" in target:
            raise errors.InvalidArgument("symlink target must be 1 or more bytes without NUL")
        if len(target.encode("utf-8", "surrogatepass")) > SYMLINK_MAX:
            raise errors.NameTooLong(f"symlink target longer than {SYMLINK_MAX} bytes")
        with self._txn():
            parent, name = self._resolve_parent(path, caller)
            row = self._new_inode(parent, name, stat.S_IFLNK | 0o777, caller, target)
            self._reply_grant(caller, *self._made(caller, parent, name, row.ino))
            return self._attr(row, allocated=0)

    def readlink(self, path: str, caller: Caller = ROOT) -> str:
        with self._reading():
            row = self._resolve(path, caller)
            if not stat.S_ISLNK(row.mode) or row.target is None:
                raise errors.InvalidArgument(f"{path} is not a symbolic link")
            return row.target

    def link(self, existing: str, new: str, caller: Caller = ROOT) -> Attr:
        with self._txn():
            row = self._resolve(existing, caller)
            if stat.S_ISDIR(row.mode):
                raise errors.NotPermitted("hard links to directories are not allowed")
            self._may_link(row, caller)
            parent, name = self._resolve_parent(new, caller)
            if self.meta.lookup(parent.ino, name) is not None:
                raise errors.AlreadyExists(f"{new} already exists")
            self._may_modify_dir(parent, None, caller)
            self.meta.add_dirent(parent.ino, name, row.ino)
            self.meta.update_inode(row.ino, nlink=row.nlink + 1, ctime_ns=self.clock())
            self._touch(parent.ino)
            self._reply_grant(caller, *self._made(caller, parent, name, row.ino))
            return self._attr(self._inode(row.ino))

    def unlink(self, path: str, caller: Caller = ROOT) -> None:
        with self._txn():
            parent, name = self._resolve_parent(path, caller)
            row = self._walk_one(parent, name, caller)
            if stat.S_ISDIR(row.mode):
                raise errors.IsADirectory(f"{path} is a directory (use rmdir)")
            self._may_modify_dir(parent, row, caller)
            self.meta.remove_dirent(parent.ino, name)
            self._touch(parent.ino)
            self._unref(row.ino, caller)
            self._reply_grant(caller, *self._listings_held(caller, parent))

    def rmdir(self, path: str, caller: Caller = ROOT) -> None:
        with self._txn():
            parent, name = self._resolve_parent(path, caller)
            row = self._walk_one(parent, name, caller)
            if not stat.S_ISDIR(row.mode):
                raise errors.NotADirectory(f"{path} is not a directory")
            if self.meta.has_children(row.ino):
                raise errors.DirectoryNotEmpty(f"{path} is not empty")
            self._may_modify_dir(parent, row, caller)
            self.meta.remove_dirent(parent.ino, name)
            # Its ".." linked the parent; one write with _touch's times.
            now = self.clock()
            self.meta.update_inode(
                parent.ino, nlink=self._inode(parent.ino).nlink - 1, mtime_ns=now, ctime_ns=now
            )
            self._unref(row.ino, caller)
            self._reply_grant(caller, *self._listings_held(caller, parent))

    def rename(self, old: str, new: str, caller: Caller = ROOT, *, flags: int = 0) -> None:
        """rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise errors.InvalidArgument(f"unsupported rename flags {flags:#x}")
        with self._txn():
            src_parent, src_name = self._resolve_parent(old, caller)
            dst_parent, dst_name = self._resolve_parent(new, caller, beside=old, walked=src_parent)
            src = self._walk_one(src_parent, src_name, caller)
            dst_ino = self.meta.lookup(dst_parent.ino, dst_name)
            dst = None if dst_ino is None else self._inode(dst_ino)
            self._may_modify_dir(src_parent, src, caller)
            self._may_modify_dir(dst_parent, dst, caller)
            src_dir = stat.S_ISDIR(src.mode)
            if src_parent.ino != dst_parent.ino:
                # A directory that changes parent has its ".." rewritten: Linux
                # asks for write permission on it (vfs_rename).
                if src_dir:
                    self._may(src, caller, W_OK)
                if flags & RENAME_EXCHANGE and dst is not None and stat.S_ISDIR(dst.mode):
                    self._may(dst, caller, W_OK)
            if src_dir and self._descends(dst_parent.ino, src.ino):
                raise errors.InvalidArgument("cannot move a directory into itself")
            if flags & RENAME_EXCHANGE:
                if dst is None:
                    raise errors.NotFound(f"{new} does not exist")
                if stat.S_ISDIR(dst.mode) and self._descends(src_parent.ino, dst.ino):
                    raise errors.InvalidArgument("cannot move a directory into itself")
                self.meta.set_dirent(src_parent.ino, src_name, dst.ino)
                self.meta.set_dirent(dst_parent.ino, dst_name, src.ino)
                if src_parent.ino != dst_parent.ino and src_dir != stat.S_ISDIR(dst.mode):
                    delta = 1 if src_dir else -1
                    self.meta.update_inode(
                        dst_parent.ino, nlink=self._inode(dst_parent.ino).nlink + delta
                    )
                    self.meta.update_inode(
                        src_parent.ino, nlink=self._inode(src_parent.ino).nlink - delta
                    )
                self._touch(src.ino, mtime=False)
                self._touch(dst.ino, mtime=False)
                self._touch(src_parent.ino)
                if dst_parent.ino != src_parent.ino:
                    self._touch(dst_parent.ino)
                self._reply_grant(caller, *self._listings_held(caller, src_parent, dst_parent))
                return
            if dst is not None:
                if flags & RENAME_NOREPLACE:
                    raise errors.AlreadyExists(f"{new} already exists")
                if dst.ino == src.ino:
                    return  # POSIX: two links to the same file; nothing happens
                if stat.S_ISDIR(dst.mode):
                    if not src_dir:
                        raise errors.IsADirectory(f"{new} is a directory")
                    if self.meta.has_children(dst.ino):
                        raise errors.DirectoryNotEmpty(f"{new} is not empty")
                elif src_dir:
                    raise errors.NotADirectory(f"{new} is not a directory")
                self.meta.remove_dirent(dst_parent.ino, dst_name)
                if stat.S_ISDIR(dst.mode):
                    self.meta.update_inode(
                        dst_parent.ino, nlink=self._inode(dst_parent.ino).nlink - 1
                    )
                self._unref(dst.ino, caller)
            self.meta.remove_dirent(src_parent.ino, src_name)
            self.meta.add_dirent(dst_parent.ino, dst_name, src.ino)
            if src_dir and src_parent.ino != dst_parent.ino:
                self.meta.update_inode(src_parent.ino, nlink=self._inode(src_parent.ino).nlink - 1)
                self.meta.update_inode(dst_parent.ino, nlink=self._inode(dst_parent.ino).nlink + 1)
            self._touch(src.ino, mtime=False)
            self._touch(src_parent.ino)
            if dst_parent.ino != src_parent.ino:  # one directory: touched once
                self._touch(dst_parent.ino)
            self._reply_grant(caller, *self._listings_held(caller, src_parent, dst_parent))

    def _descends(self, ino: InodeId, ancestor: InodeId) -> bool:
        """True when directory ``ino`` is ``ancestor`` or lies below it."""
        cur: InodeId | None = ino
        while cur is not None:
            if cur == ancestor:
                return True
            if cur == ROOT_INO:
                return False
            cur = self.meta.parent_of(cur)
        return False

    def readdir(self, path: str, caller: Caller = ROOT) -> list[DirEntry]:
        with self._reading():
            row = self._resolve(path, caller)
            if not stat.S_ISDIR(row.mode):
                raise errors.NotADirectory(f"{path} is not a directory")
            self._may(row, caller, R_OK)
            caching = self.grants.caches(caller.client)
            names = self.meta.xattr_names_in(row.ino) if caching else {}
            hidden = () if caller.uid == 0 else ("trusted.",)
            entries = [
                DirEntry(
                    name,
                    self._attr(self._inode(ino)),
                    tuple(n for n in names.get(ino, ()) if not n.startswith(hidden)),
                )
                for name, ino in self.meta.list_dir(row.ino)
            ]
            if caching:
                # Each entry as a lookup of it would grant (a caching client
                # keeps them: the kernel's READDIRPLUS).
                keys: list[cache_grants.Key] = [
                    cache_grants.Perm(row.ino),
                    cache_grants.Names(row.ino),
                ]
                for e in entries:
                    ino = e.attr.ino
                    keys += (
                        cache_grants.Entry(row.ino, e.name),
                        cache_grants.Attr(ino),
                        cache_grants.Xattrs(ino),  # the entry's xattr_names
                    )
                self.grants.grant(caller.client, keys)
            return entries

    def statfs(self) -> StatFs:
        with self._reading():
            bs = self.block_size
            return StatFs(
                block_size=bs,
                blocks=(self.region.size - self.region.superblock.data_offset) // bs,
                blocks_free=self.allocator.free_bytes // bs,
                files=self.meta.count_inodes(),
                name_max=NAME_MAX,
            )

    # -- extended attributes (xattrs.py) -------------------------------------

    def getxattr(self, path: str, name: str, caller: Caller = ROOT) -> bytes:
        with self._reading():
            row = self._resolve(path, caller)
            # The answer (a value or ENODATA) depends on the xattrs as well as
            # on the walk and the attributes _resolve granted.
            self.grants.grant(caller.client, (cache_grants.Xattrs(row.ino),))
            return self.xattrs.get(row, name, caller)

    def setxattr(
        self, path: str, name: str, value: bytes, caller: Caller = ROOT, *, flags: int = 0
    ) -> None:
        """setxattr(2) (``Xattrs.set``); sizes are checked before the path is."""
        xattrs.check_sizes(name, value)
        with self._txn():
            row = self._resolve(path, caller)
            self.xattrs.set(row, name, value, caller, flags=flags)
            self._touch(row.ino, mtime=False)

    def listxattr(self, path: str, caller: Caller = ROOT) -> list[str]:
        with self._reading():
            return self.xattrs.names(self._resolve(path, caller), caller)

    def removexattr(self, path: str, name: str, caller: Caller = ROOT) -> None:
        with self._txn():
            row = self._resolve(path, caller)
            self.xattrs.remove(row, name, caller)
            self._touch(row.ino, mtime=False)

    def _chmod_acl(self, ino: InodeId, mode: int) -> None:
        self.xattrs.chmod_acl(ino, mode)

    # -- layouts -------------------------------------------------------------

    def extents(self, path: str, caller: Caller = ROOT) -> list[Extent]:
        """The whole extent map of a file (inspection: no lease; needs read permission)."""
        with self._reading():
            row = self._resolve(path, caller)
            self._may(row, caller, R_OK)
            return self.extent_map.of(row.ino)

    def get_layout(
        self,
        fh: FileHandle,
        offset: int,
        length: int,
        caller: Caller,
        *,
        write: bool = False,
        contiguous: bool = False,
    ) -> Layout:
        """The extents covering [offset, offset+length), holes included, under a lease.

        With ``write`` every block of the range is backed by zeroed region storage
        first (and a file growing at its end gets a chunk beyond, so that
        sequential writers need few layouts and few extents). The file size is
        not changed: CommitLayout publishes it.
        """
        _check_range(offset, length)
        # A READ layout changes nothing in SQLite: no write transaction (and no
        # WAL sync) on the path every reader takes.
        with self._txn() if write else self._reading():
            of = self._open_file(fh, caller)
            if write and not of.writable:
                raise errors.BadHandle("handle not open for writing")
            if not write and not of.readable:
                raise errors.BadHandle("handle not open for reading")
            if write and length:
                self.extent_map.allocate(of.ino, offset, offset + length, contiguous=contiguous)
            end = offset + length
            mapped = self.extent_map.overlapping(of.ino, offset, end)
            if not write and mapped and not self.opens.writes(caller.client, of.ino):
                # Preallocation past EOF is not data: a reader sees holes there
                # (a writer sees its own uncommitted stores).
                eof = align_up(self._inode(of.ino).size, self.block_size)
                mapped = [p for e in mapped if (p := e.clip(offset, min(end, eof)))]
            tiles = tuple(fill_holes(mapped, offset, end))
            lease = self.leases.grant(caller.client, of.ino)
            self.counters.layouts += 1
            return Layout(offset, length, tiles, lease.id, lease.granted_seq)

    def commit_layout(
        self,
        fh: FileHandle,
        caller: Caller,
        *,
        new_size: int | None = None,
        mtime_ns: int | None = None,
    ) -> Attr:
        """Publish writes made through a layout: grow the size, set mtime."""
        if new_size is not None:
            _check_range(new_size, 0)
        with self._txn():
            of = self._open_file(fh, caller)
            if not of.writable:
                raise errors.BadHandle("handle not open for writing")
            row = self._inode(of.ino)
            now = self.clock()
            fields: dict[str, Any] = {"mtime_ns": mtime_ns or now, "ctime_ns": now}
            if new_size is not None and new_size > row.size:
                fields["size"] = new_size
            self.meta.update_inode(of.ino, **fields)
            return self._attr(self._inode(of.ino))

    def return_layout(self, lease_id: int, caller: Caller) -> None:
        with self._txn():
            self.lifecycle.complete(self.leases.give_back(LeaseId(lease_id), caller.client))

    def fallocate(
        self,
        fh: FileHandle,
        offset: int,
        length: int,
        caller: Caller,
        *,
        keep_size: bool = False,
        contiguous: bool = False,
        punch_hole: bool = False,
        zero_range: bool = False,
    ) -> Attr:
        """fallocate(2): preallocate, punch a hole or zero a range.

        ``contiguous`` asks for the range in one extent (or ENOSPC).
        ``punch_hole`` (with ``keep_size``, as Linux requires) frees the whole
        blocks of the range, through recall and quarantine as truncate does,
        and zeroes the partial blocks at its edges. ``zero_range`` makes the
        range read as zeros with storage behind it, growing the size unless
        ``keep_size``.
        """
        _check_range(offset, length)
        if length == 0:
            raise errors.InvalidArgument("fallocate of zero bytes")
        if punch_hole and (zero_range or contiguous or not keep_size):
            raise errors.NotSupported("punch hole goes with keep_size only")
        if zero_range and contiguous:
            raise errors.NotSupported("zero range cannot ask for one extent")
        with self._txn():
            of = self._open_file(fh, caller)
            if not of.writable:
                raise errors.BadHandle("handle not open for writing")
            row = self._inode(of.ino)
            if not stat.S_ISREG(row.mode):
                raise errors.InvalidArgument("fallocate needs a regular file")
            end = offset + length
            if punch_hole:
                bs = self.block_size
                lo, hi = align_up(offset, bs), align_down(end, bs)
                if lo < hi:
                    self.extent_map.zero(of.ino, offset, lo)
                    self._drop_extents_from(of.ino, lo, caller, hi)
                    self.extent_map.zero(of.ino, hi, end)
                else:
                    self.extent_map.zero(of.ino, offset, end)
                self._touch(of.ino)
                return self._attr(self._inode(of.ino))
            if zero_range:
                self.extent_map.allocate(of.ino, offset, end)
                self.extent_map.zero(of.ino, offset, end)
                if not keep_size and end > row.size:
                    self._set_size(row, end, caller)
                self._touch(of.ino)
                return self._attr(self._inode(of.ino))
            if contiguous:
                bs = self.block_size
                lo, hi = align_down(offset, bs), align_up(offset + length, bs)
                if self.extent_map.overlapping(of.ino, lo, hi):
                    raise errors.InvalidArgument("contiguous preallocation needs an empty range")
            self.extent_map.allocate(of.ino, offset, offset + length, contiguous=contiguous)
            row = self._inode(of.ino)
            if keep_size:
                self.meta.update_inode(of.ino, keep_prealloc=1)
            elif offset + length > row.size:
                # _set_size zeroes uncommitted layout stores between the old and new EOF.
                self._set_size(row, offset + length, caller)
            self._touch(of.ino, mtime=False)
            return self._attr(self._inode(of.ino))

    # -- the byte path (for clients that cannot map the region) --------------

    def read(self, fh: FileHandle, offset: int, length: int, caller: Caller) -> bytes:
        _check_range(offset, length)
        if length > MAX_RPC_IO:
            raise errors.InvalidArgument(f"read of {length} bytes exceeds {MAX_RPC_IO}; split it")
        with self._reading():
            of = self._open_file(fh, caller)
            if not of.readable:
                raise errors.BadHandle("handle not open for reading")
            row = self._inode(of.ino)
            end = min(row.size, offset + length)
            self.counters.read_calls += 1
            if end <= offset:
                return b""
            out = bytearray(end - offset)
            self.extent_map.copy_out(of.ino, offset, memoryview(out))
            self.counters.read_bytes += len(out)
            return bytes(out)

    def write(self, fh: FileHandle, offset: int, data: bytes, caller: Caller) -> int:
        if len(data) > MAX_RPC_IO:
            raise errors.InvalidArgument(
                f"write of {len(data)} bytes exceeds {MAX_RPC_IO}; split it"
            )
        with self._txn():
            of = self._open_file(fh, caller)
            if not of.writable:
                raise errors.BadHandle("handle not open for writing")
            if of.append:
                offset = self._inode(of.ino).size
            _check_range(offset, len(data))
            self.counters.write_calls += 1
            if not data:
                return 0
            end = offset + len(data)
            self.extent_map.allocate(of.ino, offset, end)
            row = self._inode(of.ino)
            if offset > row.size:
                # As for a growing truncate: blocks past EOF may hold stores made
                # through a write layout and never committed; the gap reads as zeros.
                self.extent_map.zero(of.ino, row.size, offset)
            self.extent_map.copy_in(of.ino, offset, memoryview(data))
            now = self.clock()
            self.meta.update_inode(of.ino, size=max(row.size, end), mtime_ns=now, ctime_ns=now)
            self.counters.write_bytes += len(data)
            return len(data)

    def persist(self, fh: FileHandle, caller: Caller) -> None:
        """fsync for byte-path clients: flush the file's extents in the region."""
        with self._reading():
            self.extent_map.persist(self._open_file(fh, caller).ino)
