"""The client library: files of a daxfs server, loaded and stored straight in the shared region.

``connect(address)`` says Hello, maps the region the server names (MAP_SHARED)
and returns a :class:`Client`. ``Client.open`` gives a :class:`DaxFile` whose
reads and writes are memory copies between the caller's buffer and the file's
extents; the server only answers layout calls, and a cached layout costs no
RPC. ``DaxFile.array`` gives a numpy array whose memory *is* the file's
extents: each extent is mapped MAP_FIXED into one reserved address range, so
the array is contiguous however many extents the file has (``daxfile.py`` and
``views.py``; this module holds the client: session, leases, namespace verbs).

Visibility and durability: a store is visible to every other guest at once
(same memory). ``persist`` makes it durable (libpmem on pmem, msync
otherwise). ``flush`` publishes a new size and mtime to the server
(CommitLayout); ``fsync`` does both.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from daxfs.client import rpc
from daxfs.client.daxfile import DaxFile as DaxFile
from daxfs.client.daxfile import OpenMode as OpenMode
from daxfs.client.daxfile import publish_inode
from daxfs.client.fence import Fence
from daxfs.client.inodes import Inode, Inodes
from daxfs.client.layout_cache import LayoutCache
from daxfs.client.lease_state import LeaseState
from daxfs.client.meta_cache import (
    Answer,
    CacheListener,
    MetaCache,
    XattrAnswer,
    after_all,
    key_of,
)
from daxfs.client.release_queue import ReleaseQueue
from daxfs.client.rpc import Connection
from daxfs.client.session import Session
from daxfs.proto import daxfs_pb2 as pb
from daxfs.shared import errors
from daxfs.shared.attr import Attr, StatFs
from daxfs.shared.extent import Extent, FileHandle, InodeId
from daxfs.shared.flush import FlushMode
from daxfs.shared.permissions import Identity
from daxfs.shared.region import Region

log = logging.getLogger(__name__)

#: What ``Client.stat`` and the namespace verbs return: the shared attribute value.
Stat = Attr


@dataclass(frozen=True, slots=True)
class ServerStats:
    """The server's counters (``Client.stats``); the wire's StatsReply, field for field."""

    read_calls: int
    """Read RPCs served."""
    read_bytes: int
    write_calls: int
    """Write RPCs served."""
    write_bytes: int
    layouts: int
    """Layouts granted (by GetLayout, and with an Open that asked for one)."""
    leases: int
    """Live leases."""
    free_bytes: int
    quarantined_bytes: int
    """Freed bytes waiting for the recalls of their last holders."""
    open_files: int
    pending_recalls: int
    """Recalls waiting for acknowledgements."""
    recalls_sent: int
    sessions: int
    """Session streams attached."""
    sessions_open: int
    """Sessions open, attached or not."""
    recall_waits_timed_out: int
    auth_refusals: int


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One live session of the server (``Client.sessions``)."""

    client_id: int
    name: str
    credential: str
    """The server's name for the credential that opened it ("" on a server without any)."""
    attached: bool
    """True while its session stream is open."""
    idle_ns: int
    """Since it last renewed or called, on the server's clock."""
    unacknowledged_recalls: int


#: Calls of the byte path of an open file (see Client.call).
_BYTE_PATH = (rpc.GET_LAYOUT, rpc.COMMIT_LAYOUT)


class Client:
    """A session with one server and one mapping of its region. Thread-safe."""

    def __init__(
        self,
        address: str,
        *,
        region_path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        groups: tuple[int, ...] | None = None,
        timeout: float = 30.0,
        name: str | None = None,
        session: bool = True,
        token: str | None = None,
        token_file: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        cache_metadata: bool = False,
    ) -> None:
        self.address = address
        self.conn = Connection(
            address,
            timeout=timeout,
            token=token,
            token_file=token_file,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
        self._name = name or f"{socket.gethostname()}:{os.getpid()}"
        #: Metadata answers kept until the server takes them back (client/meta_cache.py);
        #: only with a session stream, which carries the invalidations.
        self.caches_metadata = cache_metadata and session
        self.meta_cache = MetaCache()
        #: Other caches of the same answers (the FUSE edge's kernel): told what to drop.
        self.cache_listeners: list[CacheListener] = []
        try:
            hello = self.conn.call(rpc.HELLO, self._hello_request(), wait=False)
        except BaseException:
            self.conn.close()
            raise
        self.client_id = int(hello.client_id)
        self.server_instance = int(hello.server_instance)
        self.block_size = int(hello.block_size)
        self.lease_ns = int(hello.lease_ns)
        self.region_uuid = str(hello.region_uuid)
        self.caller = pb.Caller(
            uid=os.getuid() if uid is None else uid,
            gid=os.getgid() if gid is None else gid,
            groups=list(os.getgroups() if groups is None else groups),
            client_id=self.client_id,
        )
        path = region_path or hello.region_path
        try:
            self.region = Region(path)
        except errors.FormatError as exc:
            # The file is there but is no sound region: another path will not help.
            self._goodbye()
            raise errors.FormatError(
                f"the region at {path} is not usable: {exc}. If this is the path the server "
                "serves, its volume needs `daxfs fsck --repair` (the server's log names the "
                "exact command); otherwise pass region_path= where this guest sees the region"
            ) from None
        except (OSError, errors.DaxfsError) as exc:
            self._goodbye()
            raise errors.NotFound(
                f"cannot map the region at {path} ({exc}); pass region_path= "
                "(or --region) where this guest sees it"
            ) from None
        if self.region.superblock.uuid_str != self.region_uuid:
            self.region.close()
            self._goodbye()
            raise errors.FormatError(
                f"{path} is region {self.region.superblock.uuid_str}, but the server serves "
                f"{self.region_uuid}; pass the right region path"
            )
        self.layouts = LayoutCache()
        self.fence = Fence()
        #: What this client knows of each file it has open, shared by its open
        #: files of it (client/inodes.py): one size model, the recalls seen per file.
        self.inodes = Inodes()
        #: The protocol core (client/lease_state.py): the deadline (guarded by the
        #: session stream) and the highest recall seq seen per file in this session
        #: (a layout granted at a lower seq was overtaken by that recall and is
        #: discarded; guarded by the fence's exclusive lock (written) / shared
        #: lock (read with inserts)).
        self.lease_state = LeaseState(self.lease_ns, time.monotonic_ns)
        #: Moves when the server ends our session (restart, eviction): files
        #: opened before then are void (ESTALE).
        self.session_epoch = 0
        #: The lease id per file, for return-on-close. Guarded by _lock.
        self._lock = threading.Lock()
        self._lease_ids: dict[InodeId, int] = {}
        self._closed = False
        #: Releases of closed files, sent after close() returns (client/release_queue.py).
        self.releases = ReleaseQueue()
        #: Called before a call waits on the network (the FUSE daemon hands its
        #: /dev/fuse descriptor to another serving thread).
        self.before_blocking: Callable[[], None] | None = None
        self._recover_lock = threading.Lock()
        #: Sessions of ours the server ended (a call naming one is recovered).
        self._past_sessions: set[int] = set()
        self.session: Session | None = None
        if session:
            self.session = Session(
                self.conn.stub,
                self.conn.metadata,
                self.caller,
                self.lease_ns,
                on_recall=self._on_recall,
                on_deadline=self._on_deadline,
                on_lost=self._session_lost,
                state=self.lease_state,
                on_invalidate=self._on_invalidate,
                on_attached=self._on_attached,
            )
            if self.caches_metadata:
                self.conn.on_invalidated = self._own_invalidated
        old = os.umask(0)
        os.umask(old)
        self.umask = old

    # -- session -------------------------------------------------------------

    def _hello_request(self) -> pb.HelloRequest:
        return pb.HelloRequest(client_name=self._name, cache_metadata=self.caches_metadata)

    def _goodbye(self) -> None:
        try:
            self.conn.call(rpc.GOODBYE, pb.GoodbyeRequest(caller=self.caller), timeout=5)
        except errors.DaxfsError as exc:
            log.debug("goodbye failed: %s", exc)
        finally:
            self.conn.close()

    # -- recalls and fencing -------------------------------------------------

    def _on_recall(self, recall: pb.LayoutRecall) -> None:
        ino = InodeId(recall.ino)
        with self.fence.io.exclusive():  # no copy from the range is in flight after this
            self.lease_state.recall_seen(ino, int(recall.seq))
            self.layouts.invalidate(ino)
            self.fence.fence(ino, recall.offset, recall.length)
            self.inodes.recalled(ino)
        log.debug(
            "recall %d: ino=%d [%d, +%d)", recall.recall_id, ino, recall.offset, recall.length
        )

    def _on_deadline(self) -> None:
        # Views first, at once: the exclusive lock waits for copies in flight, and
        # a view must not stay live past the lease while a copy finishes. Then
        # again under the lock, for a view registered meanwhile by array().
        self.fence.fence(None)
        self.meta_cache.close()
        with self.fence.io.exclusive():
            self.layouts.clear()
            self.fence.fence(None)

    # -- the metadata cache ----------------------------------------------------

    def _on_attached(self, up: bool) -> None:
        """The session stream is attached (its first Renewed came) or ended."""
        if up and self.caches_metadata:
            self.meta_cache.open()
        else:
            self.meta_cache.close()
            for listener in self.cache_listeners:
                listener.invalidate_all()

    def _on_invalidate(self, inv: pb.Invalidate, done: Callable[[], None]) -> None:
        """Another guest's change: dropped here at once, acknowledged (``done``) once
        every listener dropped it too (the kernel's, from its own thread)."""
        self.meta_cache.invalidate(inv.inos, inv.paths)
        listeners = list(self.cache_listeners)
        if not listeners:
            done()
            return
        one = after_all(len(listeners), done)
        for listener in listeners:
            listener.invalidate(inv.inos, inv.paths, one)

    def _own_invalidated(self, blob: bytes) -> None:
        stale = json.loads(blob)
        if stale.get("all"):
            self.meta_cache.clear()
            for listener in self.cache_listeners:
                listener.invalidate_all()
        else:
            inos = stale.get("inos", ())
            self.meta_cache.invalidate(inos, stale.get("paths", ()))
            for listener in self.cache_listeners:
                listener.invalidate_own(inos)

    def cache_ttl(self) -> float:
        """How long an answer of the metadata cache may be trusted from now (seconds).

        The rest of the lease, on this client's clock: past it the server no
        longer waits for this client before changes return. 0 when nothing
        may be cached (caching off, or the session stream is down).
        """
        if not self.caches_metadata or not self.meta_cache.is_open:
            return 0.0
        if self.session is None:
            return 0.0
        return max(0.0, (self.session.deadline_ns - time.monotonic_ns()) / 1e9)

    def _who(self, caller: Identity | None) -> pb.Caller:
        """The wire caller of a call made for ``caller`` (None: this process)."""
        if caller is None:
            return self.caller
        return pb.Caller(
            uid=caller.uid, gid=caller.gid, groups=list(caller.groups), client_id=self.client_id
        )

    def _mode(self, mode: int, caller: Identity | None) -> int:
        """Creation mode bits: this process's umask applies to its own calls only.

        For a call made for another process (the FUSE mount) the kernel has
        already applied that process's umask.
        """
        return mode & 0o7777 & ~self.umask if caller is None else mode & 0o7777

    def attr(self, path: str, caller: Identity | None = None) -> Attr:
        """The attributes of ``path``, from the metadata cache when it holds them.

        The size of a file this client has open is the size it sees
        (client/inodes.py), its own writes not yet published included.
        """
        who = self._who(caller)
        before = self.inodes.recalls_total
        if not self.caches_metadata:
            a = rpc.attr_of(self.call(rpc.GET_ATTR, pb.GetAttrRequest(caller=who, path=path)))
            return self.inodes.seen(a, recalls_before=before)
        key = key_of(path, who)
        if self.lease_valid():
            hit = self.meta_cache.get(key)
            if hit is not None:
                if hit.attr is None:
                    raise errors.NotFound(str(hit.error))
                return self.inodes.seen(hit.attr)
        epoch = self.meta_cache.epoch
        try:
            a = rpc.attr_of(self.call(rpc.GET_ATTR, pb.GetAttrRequest(caller=who, path=path)))
        except errors.NotFound as exc:
            self.meta_cache.put(key, Answer(None, exc), epoch)
            raise
        self.meta_cache.put(key, Answer(a, None), epoch)
        return self.inodes.seen(a, recalls_before=before)

    def fattr(self, handle: FileHandle, caller: Identity | None = None) -> Attr:
        """The attributes of an open file, by its server handle (fstat; size as :meth:`attr`)."""
        before = self.inodes.recalls_total
        req = pb.GetAttrRequest(caller=self._who(caller), handle=handle)
        return self.inodes.seen(rpc.attr_of(self.call(rpc.GET_ATTR, req)), recalls_before=before)

    def _session_lost(self, stale_id: int) -> pb.Caller | None:
        """The server no longer knows session ``stale_id``: everything we held is void.

        Fence every view and drop every layout first (the server may reuse the
        blocks once our lease has run out), then open a new session. Files
        opened before fail with ESTALE from now on; new opens work. Returns the
        new caller, or None if the server cannot be reached (retried later).
        The session stream and any call may find out first; the first recovers.
        """
        with self._recover_lock:
            if stale_id != self.client_id:
                return self.caller  # recovered already
            self._past_sessions.add(stale_id)
            return self._new_session()

    def _new_session(self) -> pb.Caller | None:
        sent = time.monotonic_ns()  # Hello counts as the new session's first renewal
        self.meta_cache.close()
        with self.fence.io.exclusive():
            self.layouts.clear()
            self.fence.fence(None)
            self.lease_state.forget_recalls()
            self.session_epoch += 1
            self.inodes.new_session()
        with self._lock:
            self._lease_ids.clear()
        try:
            hello = self.conn.call(rpc.HELLO, self._hello_request())
        except errors.DaxfsError as exc:
            log.warning("cannot open a new session: %s", exc)
            return None
        if str(hello.region_uuid) != self.region_uuid:
            log.error(
                "the server now serves region %s, not %s", hello.region_uuid, self.region_uuid
            )
            return None
        self.client_id = int(hello.client_id)
        self.server_instance = int(hello.server_instance)
        self.caller = pb.Caller(
            uid=self.caller.uid,
            gid=self.caller.gid,
            groups=list(self.caller.groups),
            client_id=self.client_id,
        )
        log.info("new session %d with server instance %d", self.client_id, self.server_instance)
        if self.session is not None:
            self.session.adopt(self.caller, sent)
        return self.caller

    def wait_released(self) -> None:
        """Return once the files closed so far have been released on the server.

        ``close()`` returns before its Release is answered (client/release_queue.py);
        this client's own next call waits for it anyway. Call this before
        another client or an operator looks at what the close gives back (the
        lease, an unlinked file's blocks).
        """
        self.releases.drain()

    def lease_valid(self) -> bool:
        """True while our lease holds on our own clock (always, without a session stream)."""
        return self.session is None or self.session.lease_valid()

    def _closed_file(self, inode: Inode) -> int | None:
        """Return-on-close: the id of the lease the last handle of a file gives back with it.

        None while other handles are open or a view maps the file. The caller
        sends it with the Release (``return_lease_id``): extents the file frees
        later then go straight back to the free list instead of waiting for
        this client's recall acknowledgement.
        """
        ino = inode.ino
        with self._lock:
            if not self.inodes.close(inode):
                return None
            if self.fence.live_views(ino):
                return None
            lease_id = self._lease_ids.pop(ino, None)
        self.layouts.invalidate(ino)
        return lease_id

    def _got_lease(self, ino: InodeId, lease_id: int) -> None:
        """A grant named the file's lease: each grant gives it a new, larger id.

        Replies of concurrent grants may arrive in any order; the largest id
        is the lease's current one (an older one no longer returns it).
        """
        with self._lock:
            self._lease_ids[ino] = max(self._lease_ids.get(ino, 0), lease_id)

    @property
    def recalls(self) -> int:
        """Layout recalls received from the server."""
        return 0 if self.session is None else self.session.recalls

    @property
    def fenced(self) -> bool:
        """True while the lease is lapsed: copies raise StaleHandle, views read zeros."""
        return self.session is not None and self.session.fenced

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.releases.close()
        if self.session is not None:
            self.session.close()
        self._goodbye()
        self.region.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def flush_mode(self) -> FlushMode:
        return self.region.flush_mode

    def call(self, method: rpc.Rpc[rpc.Req, rpc.Rep], request: rpc.Req) -> rpc.Rep:
        """One RPC; if the server forgot our session, recover it and retry what can be.

        Calls that name a handle or a lease cannot be retried (those died with
        the session): they raise StaleHandle after the recovery. Releases queued
        by earlier closes are answered first: this client sees them in order.
        Not before a layout call: one may be made under the fence's shared lock
        (a copy that lost its layout asks again), which a release that recalls
        this client's own lease would then wait for; and a layout call names an
        open file, which no queued release can concern (the open that made it
        waited for them).
        """
        if self.before_blocking is not None:
            self.before_blocking()
        if method not in _BYTE_PATH:
            self.releases.drain()
        try:
            return self.conn.call(method, request)
        except errors.UnknownSession:
            caller = getattr(request, "caller", None)
            stale = caller.client_id if caller is not None else 0
            mine = stale == self.client_id or stale in self._past_sessions
            if not mine or method is rpc.GOODBYE or self._session_lost(stale) is None:
                raise
            if getattr(request, "handle", 0) or getattr(request, "lease_id", 0):
                raise errors.StaleHandle(
                    f"{method.name}: the server ended the session this handle belonged to; reopen"
                ) from None
            assert caller is not None
            caller.client_id = self.client_id
            return self.conn.call(method, request)

    # -- namespace -----------------------------------------------------------
    #
    # Every verb acts for this process, or for ``caller`` when given (the FUSE
    # mount passes the identity of the process whose system call it serves).

    def stat(self, path: str, *, caller: Identity | None = None) -> Attr:
        return self.attr(path, caller)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except errors.NotFound:
            return False
        return True

    def listdir(self, path: str = "/", *, caller: Identity | None = None) -> list[str]:
        return [name for name, _ in self.scandir(path, caller=caller)]

    def scandir(self, path: str = "/", *, caller: Identity | None = None) -> list[tuple[str, Attr]]:
        """The entries of a directory with their attributes (one round trip).

        With metadata caching the entries' attributes are kept as a stat of
        each would keep them (the server grants them with the listing).
        """
        who = self._who(caller)
        epoch = self.meta_cache.epoch
        reply = self.call(rpc.READ_DIR, pb.PathRequest(caller=who, path=path))
        entries = [(e.name, rpc.attr_of(e.attr)) for e in reply.entries]
        if self.caches_metadata:
            base = path.rstrip("/")
            self.meta_cache.put_many(
                (
                    (key_of(f"{base}/{e.name}", who), Answer(a, None, frozenset(e.xattr_names)))
                    for e, (_, a) in zip(reply.entries, entries, strict=True)
                ),
                epoch,
            )
        return [(name, self.inodes.seen(a)) for name, a in entries]

    def mkdir(self, path: str, mode: int = 0o777, *, caller: Identity | None = None) -> Attr:
        req = pb.MkdirRequest(caller=self._who(caller), path=path, mode=self._mode(mode, caller))
        return rpc.attr_of(self.call(rpc.MKDIR, req))

    def mknod(self, path: str, mode: int, rdev: int = 0, *, caller: Identity | None = None) -> Attr:
        """A FIFO, socket or device inode (``mode`` carries the type bits)."""
        perm = self._mode(mode, caller)
        req = pb.MknodRequest(
            caller=self._who(caller), path=path, mode=(mode & ~0o7777) | perm, rdev=rdev
        )
        return rpc.attr_of(self.call(rpc.MKNOD, req))

    def unlink(self, path: str, *, caller: Identity | None = None) -> None:
        self.call(rpc.UNLINK, pb.PathRequest(caller=self._who(caller), path=path))

    remove = unlink

    def rmdir(self, path: str, *, caller: Identity | None = None) -> None:
        self.call(rpc.RMDIR, pb.PathRequest(caller=self._who(caller), path=path))

    def rename(self, old: str, new: str, *, flags: int = 0, caller: Identity | None = None) -> None:
        """rename(2), or renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE in ``flags``."""
        req = pb.RenameRequest(caller=self._who(caller), old_path=old, new_path=new, flags=flags)
        self.call(rpc.RENAME, req)

    def symlink(self, target: str, path: str, *, caller: Identity | None = None) -> Attr:
        req = pb.SymlinkRequest(caller=self._who(caller), target=target, path=path)
        return rpc.attr_of(self.call(rpc.SYMLINK, req))

    def readlink(self, path: str, *, caller: Identity | None = None) -> str:
        reply = self.call(rpc.READLINK, pb.PathRequest(caller=self._who(caller), path=path))
        return str(reply.target)

    def link(self, existing: str, new: str, *, caller: Identity | None = None) -> Attr:
        req = pb.LinkRequest(caller=self._who(caller), existing=existing, new_path=new)
        return self.inodes.seen(rpc.attr_of(self.call(rpc.LINK, req)))

    def setattr(
        self,
        path: str | None = None,
        *,
        handle: FileHandle | None = None,
        caller: Identity | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        atime_now: bool = False,
        mtime_now: bool = False,
    ) -> Attr:
        """chmod, chown, truncate and utimens in one call, by path or by server handle.

        Only what is given changes. By path, a size or time change of a file
        this client has open publishes first what it wrote and the server does
        not know yet (a truncate up would zero those writes, and a later
        CommitLayout would overwrite explicit times with now); by a server
        handle it does not (:meth:`DaxFile.setattr` does). Returns the
        attributes with the size as this client sees it.
        """
        who = self._who(caller)
        changes_data = (
            size is not None
            or atime_ns is not None
            or mtime_ns is not None
            or atime_now
            or mtime_now
        )
        if path and changes_data and self.inodes.has_writers():
            target = rpc.attr_of(self.call(rpc.GET_ATTR, pb.GetAttrRequest(caller=who, path=path)))
            inode = self.inodes.get(target.ino)
            if inode is not None:
                publish_inode(self, inode)
        req = pb.SetAttrRequest(caller=who, handle=handle or 0, path=path or "")
        if mode is not None:
            req.mode = mode & 0o7777
        if uid is not None:
            req.uid = uid
        if gid is not None:
            req.gid = gid
        if size is not None:
            req.size = size
        if atime_ns is not None:
            req.atime_ns = atime_ns
        if mtime_ns is not None:
            req.mtime_ns = mtime_ns
        req.atime_now, req.mtime_now = atime_now, mtime_now
        attr = rpc.attr_of(self.call(rpc.SET_ATTR, req))
        inode = self.inodes.get(attr.ino)
        if inode is not None:
            inode.saw(attr)
        if size is not None:
            self.layouts.invalidate(attr.ino)
            if inode is not None:
                inode.truncated(attr.size)
        return self.inodes.seen(attr)

    def chmod(self, path: str, mode: int, *, caller: Identity | None = None) -> Attr:
        return self.setattr(path, mode=mode, caller=caller)

    def truncate(self, path: str, size: int, *, caller: Identity | None = None) -> Attr:
        return self.setattr(path, size=size, caller=caller)

    def statfs(self, *, caller: Identity | None = None) -> StatFs:
        reply = self.call(rpc.STAT_FS, pb.StatFsRequest(caller=self._who(caller)))
        return StatFs(
            reply.block_size, reply.blocks, reply.blocks_free, reply.files, reply.name_max
        )

    def getxattr(self, path: str, name: str, *, caller: Identity | None = None) -> bytes:
        """One extended attribute; with metadata caching, from the cache when it
        holds the answer (a value, or ENODATA), kept beside the file's attributes."""
        who = self._who(caller)
        req = pb.XattrRequest(caller=who, path=path, name=name)
        if not self.caches_metadata:
            return bytes(self.call(rpc.GET_XATTR, req).value)
        key = key_of(path, who)
        if self.lease_valid():
            hit = self.meta_cache.get_xattr(key, name)
            if hit is not None:
                if hit.value is None:
                    raise errors.NoData(str(hit.error))
                return hit.value
        epoch = self.meta_cache.epoch
        self.attr(path, caller)  # what the answer is kept beside (a hit, mostly)
        try:
            value = bytes(self.call(rpc.GET_XATTR, req).value)
        except errors.NoData as exc:
            self.meta_cache.put_xattr(key, name, XattrAnswer(None, exc), epoch)
            raise
        self.meta_cache.put_xattr(key, name, XattrAnswer(value, None), epoch)
        return value

    def setxattr(
        self,
        path: str,
        name: str,
        value: bytes,
        flags: int = 0,
        *,
        caller: Identity | None = None,
    ) -> None:
        """Set an extended attribute; ``flags`` as setxattr(2): XATTR_CREATE or XATTR_REPLACE."""
        req = pb.XattrRequest(
            caller=self._who(caller), path=path, name=name, value=value, flags=flags
        )
        self.call(rpc.SET_XATTR, req)

    def listxattr(self, path: str, *, caller: Identity | None = None) -> list[str]:
        reply = self.call(rpc.LIST_XATTR, pb.PathRequest(caller=self._who(caller), path=path))
        return list(reply.names)

    def removexattr(self, path: str, name: str, *, caller: Identity | None = None) -> None:
        req = pb.XattrRequest(caller=self._who(caller), path=path, name=name)
        self.call(rpc.REMOVE_XATTR, req)

    def sessions(self) -> list[SessionInfo]:
        """The server's live sessions (root only), for operators."""
        reply = self.call(rpc.LIST_SESSIONS, pb.ListSessionsRequest(caller=self.caller))
        return [
            SessionInfo(
                s.client_id, s.name, s.credential, s.attached, s.idle_ns, s.unacknowledged_recalls
            )
            for s in reply.sessions
        ]

    def evict(self, client_id: int) -> None:
        """Declare a session gone (root only): for a guest frozen or lost for good."""
        self.call(rpc.EVICT, pb.EvictRequest(caller=self.caller, client_id=client_id))

    def stats(self) -> ServerStats:
        """Server counters (Read/Write RPCs served, layouts granted, free bytes...)."""
        reply = self.call(rpc.STATS, pb.StatsRequest())
        return ServerStats(**{f.name: int(getattr(reply, f.name)) for f in fields(ServerStats)})

    def extents(self, path: str, *, caller: Identity | None = None) -> list[Extent]:
        """The whole extent map of a file (no holes), like FIEMAP."""
        reply = self.call(rpc.EXTENTS, pb.PathRequest(caller=self._who(caller), path=path))
        return [Extent(e.file_offset, e.length, e.region_offset) for e in reply.extents]

    def layout(self, path: str, offset: int = 0, length: int | None = None) -> list[Extent]:
        """Extents holding bytes [offset, offset+length) of a file; holes: region_offset None."""
        with self.open(path, "rb") as f:
            if length is None:
                length = max(f.size - offset, 0)
            return f.layout(offset, length)

    # -- files ---------------------------------------------------------------

    def open(self, path: str, mode: str = "rb") -> DaxFile:
        """open() with Python's mode strings ("rb", "r+b", "wb", "ab", "xb", ...)."""
        return self.open_file(path, OpenMode.parse(mode))

    def open_file(
        self, path: str, how: OpenMode, *, mode: int = 0o666, caller: Identity | None = None
    ) -> DaxFile:
        """Open (and with ``how.create`` create, with permission bits ``mode``) a file."""
        who = self._who(caller)
        # The handle belongs to the session the request goes out in, even if the
        # reply arrives in the next one (then the file is stale from the start).
        session_epoch = self.session_epoch
        if how.create:
            req = pb.CreateRequest(
                caller=who,
                path=path,
                mode=self._mode(mode, caller),
                exclusive=how.exclusive,
                truncate=how.truncate,
                read=how.read,
                write=how.write,
                append=how.append,
            )
            reply = self.call(rpc.CREATE, req)
        else:
            req2 = pb.OpenRequest(
                caller=who,
                path=path,
                read=how.read,
                write=how.write,
                append=how.append,
                truncate=how.truncate,
                # A reader gets the whole file's layout with the open: a view or
                # the first read then costs no round trip of its own.
                layout=how.read and not (how.write or how.truncate),
            )
            reply = self.call(rpc.OPEN, req2)
        attr = rpc.attr_of(reply.attr)
        if attr.is_dir:
            self.call(rpc.RELEASE, pb.ReleaseRequest(caller=who, handle=reply.handle))
            raise errors.IsADirectory(f"{path} is a directory")
        # Close-to-open: whatever we cached of this file may be stale now.
        self.layouts.invalidate(attr.ino)
        layout = reply.layout if reply.HasField("layout") else None
        return DaxFile(self, path, how, FileHandle(reply.handle), attr, layout, session_epoch)


def connect(address: str, *, region_path: str | None = None, **kwargs: Any) -> Client:
    """Connect to a daxfs server at ``unix:/path`` or ``host:port`` and map its region."""
    return Client(address, region_path=region_path, **kwargs)
