"""The client library: files of a daxfs server, loaded and stored straight in the shared region.

``connect(address)`` says Hello, maps the region the server names (MAP_SHARED)
and returns a :class:`Client`. ``Client.open`` gives a :class:`DaxFile` whose
reads and writes are memory copies between the caller's buffer and the file's
extents; the server only answers layout calls, and a cached layout costs no
RPC. ``DaxFile.array`` gives a numpy array whose memory *is* the file's
extents: each extent is mapped MAP_FIXED into one reserved address range, so
the array is contiguous however many extents the file has.

Visibility and durability: a store is visible to every other guest at once
(same memory). ``persist`` makes it durable (libpmem on pmem, msync
otherwise). ``flush`` publishes a new size and mtime to the server
(CommitLayout); ``fsync`` does both.
"""

from __future__ import annotations

import io
import json
import logging
import math
import mmap
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from daxfs.client import rpc
from daxfs.client.fence import Fence
from daxfs.client.layout_cache import LayoutCache
from daxfs.client.lease_state import LeaseState
from daxfs.client.meta_cache import Answer, MetaCache, key_of
from daxfs.client.rpc import Connection
from daxfs.client.session import Session
from daxfs.proto import daxfs_pb2 as pb
from daxfs.shared import errors, growth
from daxfs.shared.attr import Attr, StatFs
from daxfs.shared.extent import MAX_FILE_SIZE, Extent, InodeId, align_up
from daxfs.shared.flush import FlushMode
from daxfs.shared.format import MIB
from daxfs.shared.hugepages import HUGE_PAGE
from daxfs.shared.mman import map_fixed
from daxfs.shared.permissions import Identity
from daxfs.shared.region import Region

log = logging.getLogger(__name__)

#: Largest piece a write copies between two looks at the lease deadline; it
#: bounds what a client frozen mid-copy can still store (server/leases.py).
COPY_PIECE = 4 * MIB
#: Layout grants discarded in a row (each overtaken by a recall) before giving up.
STALE_GRANT_RETRIES = 8
#: What a hole reads as, for :meth:`DaxFile.segments` (longer holes get their own zeros).
_ZEROS = bytes(MIB)


#: What ``Client.stat`` and the namespace verbs return: the shared attribute value.
Stat = Attr


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


def _tiles(msg: pb.Layout) -> list[Extent]:
    return [
        Extent(e.file_offset, e.length, None if e.hole else e.region_offset) for e in msg.extents
    ]


@dataclass(frozen=True, slots=True)
class OpenMode:
    read: bool
    write: bool
    create: bool
    truncate: bool
    exclusive: bool
    append: bool

    @classmethod
    def parse(cls, mode: str) -> OpenMode:
        """Python's binary open() modes: rb, r+b, wb, w+b, ab, a+b, xb, x+b."""
        chars = set(mode)
        if (
            "b" not in chars
            or len(mode) != len(chars)
            or not chars <= set("rwaxb+")
            or len(chars & set("rwax")) != 1
        ):
            raise errors.InvalidArgument(
                f"invalid mode {mode!r}: use a binary mode such as 'rb', 'r+b', 'wb', 'ab'"
            )
        plus = "+" in chars
        kind = (chars & set("rwax")).pop()
        return cls(
            read=kind == "r" or plus,
            write=kind != "r" or plus,
            create=kind in "wax",
            truncate=kind == "w",
            exclusive=kind == "x",
            append=kind == "a",
        )


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
        #: Recalls seen per file; an open file refreshes its size when this moves.
        self.epochs: dict[InodeId, int] = {}
        #: The protocol core (client/lease_state.py): the deadline (guarded by the
        #: session stream) and the highest recall seq seen per file in this session
        #: (a layout granted at a lower seq was overtaken by that recall and is
        #: discarded; guarded by the fence's exclusive lock (written) / shared
        #: lock (read with inserts)).
        self.lease_state = LeaseState(self.lease_ns, time.monotonic_ns)
        #: Moves when the server ends our session (restart, eviction): files
        #: opened before then are void (ESTALE).
        self.session_epoch = 0
        #: Open DaxFiles and the lease id per file, for return-on-close. Guarded by _lock.
        self._lock = threading.Lock()
        self._open_counts: dict[InodeId, int] = {}
        self._lease_ids: dict[InodeId, int] = {}
        self._closed = False
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
            self.epochs[ino] = self.epochs.get(ino, 0) + 1
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

    def _on_invalidate(self, inv: pb.Invalidate) -> None:
        self.meta_cache.invalidate(inv.inos, inv.paths)

    def _own_invalidated(self, blob: bytes) -> None:
        stale = json.loads(blob)
        if stale.get("all"):
            self.meta_cache.clear()
        else:
            self.meta_cache.invalidate(stale.get("inos", ()), stale.get("paths", ()))

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
        """The attributes of ``path``, from the metadata cache when it holds them."""
        who = self._who(caller)
        if not self.caches_metadata:
            return rpc.attr_of(self.call(rpc.GET_ATTR, pb.GetAttrRequest(caller=who, path=path)))
        key = key_of(path, who)
        if self.lease_valid():
            hit = self.meta_cache.get(key)
            if hit is not None:
                if hit.attr is None:
                    raise errors.NotFound(str(hit.error))
                return hit.attr
        epoch = self.meta_cache.epoch
        try:
            a = rpc.attr_of(self.call(rpc.GET_ATTR, pb.GetAttrRequest(caller=who, path=path)))
        except errors.NotFound as exc:
            self.meta_cache.put(key, Answer(None, exc), epoch)
            raise
        self.meta_cache.put(key, Answer(a, None), epoch)
        return a

    def fattr(self, handle: int, caller: Identity | None = None) -> Attr:
        """The attributes of an open file, by its server handle (fstat)."""
        req = pb.GetAttrRequest(caller=self._who(caller), handle=handle)
        return rpc.attr_of(self.call(rpc.GET_ATTR, req))

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

    def lease_valid(self) -> bool:
        """True while our lease holds on our own clock (always, without a session stream)."""
        return self.session is None or self.session.lease_valid()

    def _opened(self, ino: InodeId) -> None:
        with self._lock:
            self._open_counts[ino] = self._open_counts.get(ino, 0) + 1

    def _closed_file(self, ino: InodeId) -> None:
        """Return-on-close: the last handle of a file gives its lease back unless a view maps it.

        Extents the file frees later then go straight back to the free list
        instead of waiting for this client's recall acknowledgement.
        """
        with self._lock:
            left = self._open_counts.get(ino, 1) - 1
            if left:
                self._open_counts[ino] = left
                return
            self._open_counts.pop(ino, None)
            if self.fence.live_views(ino):
                return
            lease_id = self._lease_ids.pop(ino, None)
        self.layouts.invalidate(ino)
        if lease_id is not None:
            try:
                self.call(
                    rpc.RETURN_LAYOUT, pb.ReturnLayoutRequest(caller=self.caller, lease_id=lease_id)
                )
            except errors.StaleHandle:
                pass  # expired or recalled meanwhile: nothing to return

    def _got_lease(self, ino: InodeId, lease_id: int) -> None:
        with self._lock:
            self._lease_ids[ino] = lease_id

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
        the session): they raise StaleHandle after the recovery.
        """
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
        reply = self.call(rpc.READ_DIR, pb.PathRequest(caller=self._who(caller), path=path))
        return [(e.name, rpc.attr_of(e.attr)) for e in reply.entries]

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
        return rpc.attr_of(self.call(rpc.LINK, req))

    def setattr(
        self,
        path: str | None = None,
        *,
        handle: int = 0,
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

        Only what is given changes. A size change of a file this client has
        open goes through :meth:`DaxFile.truncate` instead (it knows the
        writes not yet published).
        """
        req = pb.SetAttrRequest(caller=self._who(caller), handle=handle, path=path or "")
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
        if size is not None:
            self.layouts.invalidate(attr.ino)
        return attr

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
        req = pb.XattrRequest(caller=self._who(caller), path=path, name=name)
        return bytes(self.call(rpc.GET_XATTR, req).value)

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

    def stats(self) -> pb.StatsReply:
        """Server counters (Read/Write RPCs served, layouts granted, free bytes...)."""
        reply: pb.StatsReply = self.call(rpc.STATS, pb.StatsRequest())
        return reply

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
            )
            reply = self.call(rpc.OPEN, req2)
        attr = rpc.attr_of(reply.attr)
        if attr.is_dir:
            self.call(rpc.RELEASE, pb.ReleaseRequest(caller=who, handle=reply.handle))
            raise errors.IsADirectory(f"{path} is a directory")
        # Close-to-open: whatever we cached of this file may be stale now.
        self.layouts.invalidate(attr.ino)
        return DaxFile(self, path, how, int(reply.handle), attr)


class DaxFile(io.RawIOBase):
    """An open daxfs file. Not thread-safe; open one per thread."""

    def __init__(self, client: Client, path: str, mode: OpenMode, handle: int, attr: Attr) -> None:
        super().__init__()
        self.client = client
        self.path = path
        self.mode_info = mode
        self.handle = handle
        self.ino = attr.ino
        #: The file's attributes when it was opened.
        self.attr = attr
        self._size = attr.size
        self._committed_size = self._size
        self._pos = 0
        self._dirty = False
        self._lock = threading.Lock()
        self._u8 = client.region.u8
        self._bs = client.block_size
        self._epoch = client.epochs.get(self.ino, 0)
        self._session_epoch = client.session_epoch
        client._opened(self.ino)

    # -- io.RawIOBase --------------------------------------------------------

    def readable(self) -> bool:
        return self.mode_info.read

    def writable(self) -> bool:
        return self.mode_info.write

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        """The file size as this handle sees it (including its own uncommitted growth)."""
        return self._size

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise errors.InvalidArgument(f"bad whence {whence}")
        if pos < 0:
            raise errors.InvalidArgument(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        if size is None or size < 0:
            size = max(self._size - self._pos, 0)
        data = self.pread(size, self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        dst = np.frombuffer(buffer, dtype=np.uint8)
        n = self.preadinto(dst, self._pos)
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        self._check_open()
        if self.mode_info.append:
            self._pos = self._size
        n = self.pwrite(data, self._pos)
        self._pos += n
        return n

    # -- positional I/O ------------------------------------------------------

    def _check_lease(self) -> None:
        """Refuse copies while fenced; after a recall of this file, learn its size again."""
        client = self.client
        if self.session_lost:
            raise errors.StaleHandle(
                f"{self.path}: the server ended the session this file was opened in "
                "(it restarted, or presumed this client gone); reopen it"
            )
        if not client.lease_valid():
            raise errors.StaleHandle("the client's lease lapsed; its layouts are fenced")
        epoch = client.epochs.get(self.ino, 0)
        if epoch != self._epoch:
            self._epoch = epoch
            attr = client.call(
                rpc.GET_ATTR, pb.GetAttrRequest(caller=client.caller, handle=self.handle)
            )
            self._size = self._committed_size = int(attr.size)

    def _layout(self, start: int, end: int, *, write: bool) -> list[Extent]:
        """Tiles for [start, end), from the cache or one GetLayout."""
        cached = self.client.layouts.lookup(self.ino, start, end)
        if cached is not None and (not write or not any(t.hole for t in cached)):
            return cached
        ask_start, ask_end = start, end
        if write:
            alloc_end = self.client.layouts.allocated_end(self.ino)
            if end > alloc_end:
                # Growing: ask for a chunk so appending writers need few layouts.
                ask_end = align_up(end, self._bs) + growth.chunk(
                    end, self._bs, self.client.region.superblock.data_size
                )
                ask_end = min(ask_end, max(end, MAX_FILE_SIZE))
        else:
            # Reads: one layout for the whole file, so later reads cost no RPC.
            ask_start, ask_end = 0, max(end, align_up(self._size, self._bs))
        try:
            tiles = self._fetch_layout(ask_start, ask_end, write)
        except errors.NoSpace:
            if (ask_start, ask_end) == (start, end):
                raise
            # The growth chunk was only a hint: retry with exactly what is needed.
            tiles = self._fetch_layout(start, end, write)
        return [p for t in tiles if (p := t.clip(start, end)) is not None]

    def _fetch_layout(self, start: int, end: int, write: bool) -> list[Extent]:
        """One GetLayout for [start, end), cached and its lease noted.

        A grant that a recall of this file overtook (its recall_seq is below one
        we have seen) may name freed blocks: it is discarded and asked again.
        Check and insert happen under the fence's shared lock, so a recall
        (which takes it exclusively) is either seen here or comes after the
        insert and invalidates it.
        """
        for _attempt in range(STALE_GRANT_RETRIES):
            reply = self._get_layout(start, end, write)
            tiles = _tiles(reply)
            with self.client.fence.io.shared():
                if self.session_lost:
                    # The reply outlived its session (a reply held past a restart or
                    # an eviction): its blocks may be another file's by now.
                    raise errors.StaleHandle(
                        f"{self.path}: the session this file was opened in ended; reopen it"
                    )
                if not self.client.lease_state.grant_usable(self.ino, int(reply.recall_seq)):
                    log.debug("layout of ino %d overtaken by a recall: asking again", self.ino)
                    continue
                self.client._got_lease(self.ino, reply.lease_id)
                self.client.layouts.insert(self.ino, tiles, start, end)
            return tiles
        raise errors.StaleHandle(f"{self.path}: every layout granted was recalled at once")

    def _get_layout(self, start: int, end: int, write: bool) -> pb.Layout:
        reply: pb.Layout = self.client.call(
            rpc.GET_LAYOUT,
            pb.GetLayoutRequest(
                caller=self.client.caller,
                handle=self.handle,
                offset=start,
                length=end - start,
                mode=pb.LAYOUT_MODE_WRITE if write else pb.LAYOUT_MODE_READ,
            ),
        )
        return reply

    def layout(self, offset: int, length: int) -> list[Extent]:
        """Extents of [offset, offset+length); holes have region_offset None. Takes a layout."""
        if offset < 0 or length < 0:
            raise errors.InvalidArgument("negative offset or length")
        if length == 0:
            return []
        if not self.mode_info.read:
            reply = self.client.call(
                rpc.GET_LAYOUT,
                pb.GetLayoutRequest(
                    caller=self.client.caller,
                    handle=self.handle,
                    offset=offset,
                    length=length,
                    mode=pb.LAYOUT_MODE_WRITE,
                ),
            )
            return _tiles(reply)
        return self._layout(offset, offset + length, write=False)

    def preadinto(self, dst: npt.NDArray[np.uint8], offset: int) -> int:
        """Copy bytes at ``offset`` into ``dst`` (stops at EOF); returns the count."""
        self._check_open()
        if not self.mode_info.read:
            raise errors.BadHandle("file not open for reading")
        if offset < 0:
            raise errors.InvalidArgument(f"negative offset {offset}")
        self._check_lease()
        end = min(self._size, offset + len(dst))
        if end <= offset:
            return 0
        tiles = self._layout(offset, end, write=False)
        with self.client.fence.io.shared():
            if self.client.layouts.lookup(self.ino, offset, end) is None:
                return self.preadinto(dst, offset)  # recalled meanwhile: start over
            for tile in tiles:
                a, b = tile.file_offset - offset, tile.file_end - offset
                if tile.region_offset is None:
                    dst[a:b] = 0
                else:
                    r = tile.region_offset
                    dst[a:b] = self._u8[r : r + tile.length]
        self._validate_copy()
        return end - offset

    @contextmanager
    def segments(self, offset: int, size: int) -> Iterator[list[memoryview]]:
        """The bytes of [offset, offset + size) (cut at EOF) as views of the region, in order.

        For a caller that copies them once and cannot take the copy back: the
        FUSE kernel backend hands them to one writev on /dev/fuse, and the
        kernel copies them straight into the reader's buffer. preadinto
        validates the lease *after* its copy and discards the bytes if it
        lapsed; here the lease is checked *before*, under the fence's shared
        lock, which is held until the block ends so a recall of these extents
        waits for the copy. The residual risk and its bound are in the README
        (the layout safety invariant, "one-copy reads"). Holes are zeros. The
        views are valid only inside the block.
        """
        self._check_open()
        if not self.mode_info.read:
            raise errors.BadHandle("file not open for reading")
        if offset < 0:
            raise errors.InvalidArgument(f"negative offset {offset}")
        while True:
            self._check_lease()
            end = min(self._size, offset + size)
            if end <= offset:
                yield []
                return
            tiles = self._layout(offset, end, write=False)
            with self.client.fence.io.shared():
                if self.client.layouts.lookup(self.ino, offset, end) is None:
                    continue  # recalled meanwhile: start over
                if not self.client.lease_valid():
                    raise errors.StaleHandle("the client's lease lapsed; its layouts are fenced")
                region = self._u8.data
                yield [
                    region[t.region_offset : t.region_offset + t.length]
                    if t.region_offset is not None
                    else memoryview(_ZEROS if t.length <= len(_ZEROS) else bytes(t.length))[
                        : t.length
                    ]
                    for t in tiles
                ]
                return

    def pread(self, size: int, offset: int) -> bytes:
        self._check_open()
        if size < 0:
            raise errors.InvalidArgument(f"negative size {size}")
        if not self.mode_info.read:
            raise errors.BadHandle("file not open for reading")
        if offset < 0:
            raise errors.InvalidArgument(f"negative offset {offset}")
        self._check_lease()
        end = min(self._size, offset + size)
        if end <= offset:
            return b""
        tiles = self._layout(offset, end, write=False)
        if len(tiles) == 1 and tiles[0].region_offset is not None:
            r = tiles[0].region_offset
            with self.client.fence.io.shared():
                if self.client.layouts.lookup(self.ino, offset, end) is not None:
                    data = self._u8[r : r + tiles[0].length].tobytes()  # one copy
                    self._validate_copy()
                    return data
        out = np.empty(end - offset, dtype=np.uint8)
        # The size may shrink meanwhile (a recall): only what was copied is data.
        n = self.preadinto(out, offset)
        return out[:n].tobytes()

    def pwrite(self, data: Any, offset: int) -> int:
        """Store ``data`` at ``offset``; the new size is published by flush/fsync/close."""
        self._check_open()
        if not self.mode_info.write:
            raise errors.BadHandle("file not open for writing")
        if offset < 0:
            raise errors.InvalidArgument(f"negative offset {offset}")
        src = np.frombuffer(data, dtype=np.uint8)
        if offset + len(src) > MAX_FILE_SIZE:
            # As write(2) at the file size limit: the part that fits, else EFBIG.
            if offset >= MAX_FILE_SIZE:
                raise errors.FileTooBig(f"offset {offset} is at or past the largest file size")
            src = src[: MAX_FILE_SIZE - offset]
        n = len(src)
        if n == 0:
            return 0
        end = offset + n
        self._check_lease()
        tiles = self._layout(offset, end, write=True)
        with self.client.fence.io.shared():
            if self.client.layouts.lookup(self.ino, offset, end) is None:
                return self.pwrite(data, offset)  # recalled meanwhile: start over
            for tile in tiles:
                if tile.region_offset is None:
                    raise errors.StaleHandle("server returned a hole for a WRITE layout")
                # In pieces, each after a look at the clock: a client frozen past
                # its lease mid-copy (with its stream down) finishes one piece at
                # most into blocks that may have been reused (leases.py).
                for lo in range(0, tile.length, COPY_PIECE):
                    if not self.client.lease_valid():
                        raise errors.StaleHandle("the client's lease lapsed during the write")
                    hi = min(lo + COPY_PIECE, tile.length)
                    r = tile.region_offset + lo
                    f = tile.file_offset - offset + lo
                    self._u8[r : r + hi - lo] = src[f : f + hi - lo]
        self._dirty = True
        if end > self._size:
            self._size = end
        return n

    def _validate_copy(self) -> None:
        """After a read: if our lease may have lapsed during the copy, its bytes may be foreign."""
        if not self.client.lease_valid():
            raise errors.StaleHandle(
                "the client's lease lapsed during the read (was it frozen?); read again"
            )

    def adopt_size(
        self, size: int, epoch: int | None = None, *, published: int | None = None
    ) -> None:
        """Take ``size`` as the file size: another handle of this client grew or truncated the file.

        Reads then stop at ``size``; a later flush publishes no growth this
        handle saw before a truncation (the FUSE mount shares one size among
        the handles of an inode).

        ``epoch`` is the count of this file's recalls (``Client.epochs``) that
        ``size`` already reflects: the handle then does not ask the server for
        the size again after those recalls, which would drop growth the caller
        knows of and the server does not yet. ``published``: the server's size
        went down to this meanwhile (a truncate through another handle), so a
        later flush publishes whatever lies past it.
        """
        self._check_open()
        if size < 0:
            raise errors.InvalidArgument(f"negative size {size}")
        if epoch is not None:
            self._epoch = epoch
        self._size = size
        self._committed_size = min(self._committed_size, size)
        if published is not None:
            self._committed_size = min(self._committed_size, published)

    def truncate(self, size: int | None = None) -> int:
        self._check_open()
        if not self.mode_info.write:
            raise errors.BadHandle("file not open for writing")
        if size is None:
            size = self._pos
        self._commit()
        attr = self.client.call(
            rpc.SET_ATTR,
            pb.SetAttrRequest(caller=self.client.caller, handle=self.handle, size=size),
        )
        self.client.layouts.invalidate(self.ino)
        self._size = self._committed_size = int(attr.size)
        return self._size

    def allocate(
        self,
        offset: int,
        length: int,
        *,
        keep_size: bool = False,
        contiguous: bool = False,
        punch_hole: bool = False,
        zero_range: bool = False,
    ) -> None:
        """fallocate: back [offset, offset+length) with storage; ``contiguous`` as one extent.

        The way to write a file of known size with one layout: ``allocate(0,
        size)`` takes a WRITE layout of the range along with the storage, so
        the writes (or one :meth:`array` of the whole file) that follow make no
        layout call. The allocation is kept at
        close (not trimmed like the speculative growth of appends, see
        ``daxfs.shared.growth``).

        ``punch_hole`` (with ``keep_size``) frees the range's blocks;
        ``zero_range`` makes it read as zeros (see AllocateRequest).
        """
        self._check_open()
        # Growth this handle wrote first: a growing fallocate zeroes past the server's size.
        self._commit()
        attr = self.client.call(
            rpc.ALLOCATE,
            pb.AllocateRequest(
                caller=self.client.caller,
                handle=self.handle,
                offset=offset,
                length=length,
                keep_size=keep_size,
                contiguous=contiguous,
                punch_hole=punch_hole,
                zero_range=zero_range,
            ),
        )
        self.client.layouts.invalidate(self.ino)
        self._size = max(self._size, int(attr.size))
        self._committed_size = int(attr.size)
        if self.mode_info.write and length > 0 and not punch_hole:
            # The one layout: writes into the range, or an array() of it, need no other.
            self._fetch_layout(offset, offset + length, write=True)

    # -- visibility and durability ------------------------------------------

    @property
    def session_lost(self) -> bool:
        """True once the session this file was opened in ended (server restart, eviction)."""
        return self._session_epoch != self.client.session_epoch

    def _commit(self) -> None:
        if not self.mode_info.write or not (self._dirty or self._size != self._committed_size):
            return
        if self.session_lost:
            self._dirty = False
            self._size = self._committed_size
            raise errors.StaleHandle(
                f"{self.path}: the session ended before this file's new size was published; "
                "writes past its old end are lost"
            )
        self.client.call(
            rpc.COMMIT_LAYOUT,
            pb.CommitLayoutRequest(
                caller=self.client.caller,
                handle=self.handle,
                new_size=self._size if self._size > self._committed_size else -1,
            ),
        )
        self._committed_size = max(self._committed_size, self._size)
        self._dirty = False

    def flush(self) -> None:
        """Publish size and mtime to the server (CommitLayout). Bytes are visible already."""
        if self.closed:
            return
        self._commit()

    def persist(self, offset: int = 0, length: int | None = None) -> FlushMode:
        """Make bytes [offset, offset+length) durable; returns the flush path used."""
        self._check_open()
        if length is None:
            length = max(self._size - offset, 0)
        if offset < 0 or length < 0:
            raise errors.InvalidArgument("negative offset or length")
        region = self.client.region
        if length:
            for tile in (
                self._layout(offset, offset + length, write=False)
                if self.mode_info.read
                else self.layout(offset, length)
            ):
                if tile.region_offset is not None:
                    region.persist(tile.region_offset, tile.length)
        region.flusher.drain()
        return region.flush_mode

    def fsync(self) -> None:
        """persist() every byte, then publish size and mtime."""
        self.persist(0, self._size)
        self._commit()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._commit()
        finally:
            try:
                # Lease first, then the handle: a release that frees blocks
                # (unlinked file, trimmed preallocation) then needs no recall.
                self.client._closed_file(self.ino)
                if not self.session_lost:  # else the server forgot the handle already
                    try:
                        self.client.call(
                            rpc.RELEASE,
                            pb.ReleaseRequest(caller=self.client.caller, handle=self.handle),
                        )
                    except errors.StaleHandle:
                        pass  # the server restarted and forgot the handle: nothing to release
            finally:
                super().close()
                self._u8 = None  # type: ignore[assignment]

    def __enter__(self) -> DaxFile:
        return self

    # -- zero-copy view ------------------------------------------------------

    def array(
        self, dtype: npt.DTypeLike = np.uint8, shape: int | tuple[int, ...] | None = None
    ) -> npt.NDArray[Any]:
        """A numpy array whose memory is the file's extents in the region (zero copy).

        ``shape`` None gives a 1-D array over the whole file. A writable file
        grows to fit a larger shape (like ``np.memmap`` mode 'r+'); a read-only
        one refuses. Stores are visible to other guests at once; call
        :meth:`persist` for durability. The array stays valid after the file is
        closed; a truncate or unlink elsewhere may make its bytes read as zeros.
        """
        self._check_open()
        dt = np.dtype(dtype)
        if dt.itemsize == 0:
            raise errors.InvalidArgument("dtype with no size")
        if shape is None:
            if self._size % dt.itemsize:
                raise errors.InvalidArgument(
                    f"file size {self._size} is not a multiple of {dt} ({dt.itemsize} bytes)"
                )
            shape_t: tuple[int, ...] = (self._size // dt.itemsize,)
        else:
            shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
        if any(s < 0 for s in shape_t):
            raise errors.InvalidArgument(f"negative dimension in {shape_t}")
        nbytes = math.prod(shape_t) * dt.itemsize
        writable = self.mode_info.write
        if nbytes > self._size and not writable:
            raise errors.InvalidArgument(
                f"shape {shape_t} needs {nbytes} bytes but the file has {self._size} "
                "and is open read-only"
            )
        if nbytes == 0:
            return np.empty(shape_t, dtype=dt)
        span = align_up(nbytes, max(self._bs, mmap.PAGESIZE))
        self._check_lease()
        for _attempt in range(STALE_GRANT_RETRIES):
            if writable:
                tiles = self._layout(0, span, write=True)
                if nbytes > self._size:
                    self._size = nbytes
                    self._commit()
            else:
                tiles = self._layout(0, span, write=False)
            # Mapped and registered under the fence's shared lock, with the layout
            # still cached: a recall either fences this view or came before it
            # (then map afresh), so a recalled range never stays mapped,
            # populated or not.
            with self.client.fence.io.shared():
                if self.client.layouts.lookup(self.ino, 0, span) is None:
                    continue  # recalled meanwhile: ask again
                view, base = _map_tiles(self.client.region, tiles, span, writable)
                self.client.fence.register(self.ino, view, base, span)
                break
        else:
            raise errors.StaleHandle(f"{self.path}: every layout granted was recalled at once")
        start = base - _address(view)
        arr = np.frombuffer(view, dtype=dt, count=nbytes // dt.itemsize, offset=start)
        arr = arr.reshape(shape_t)
        if not writable:
            arr.flags.writeable = False
        return arr


def _address(buf: mmap.mmap) -> int:
    probe = np.frombuffer(buf, dtype=np.uint8)
    return int(probe.ctypes.data)


def _map_tiles(
    region: Region, tiles: list[Extent], span: int, writable: bool
) -> tuple[mmap.mmap, int]:
    """Reserve address space for ``span`` bytes and map each tile there with MAP_FIXED.

    Returns the reservation and the address of file offset 0 in it. The
    reservation is an anonymous Python mmap; when the last array viewing it
    is collected, its munmap removes the whole range, fixed mappings included.
    Holes stay anonymous zero pages. Each tile's page tables are filled in
    the mapping call, so a fresh view takes no page fault on first touch:
    read population unless a read fault would leave stores to fault (see
    ``Region.read_fault_maps_writable``). On a 2 MiB-block region, file
    offset 0 sits on a 2 MiB boundary (the reservation is 2 MiB longer to
    allow it): with every extent 2 MiB aligned in the region, the kernel can
    map each 2 MiB with one huge page-table entry.
    """
    huge = region.block_size >= HUGE_PAGE
    slack = HUGE_PAGE if huge else 0
    reserve = mmap.mmap(-1, span + slack, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = align_up(_address(reserve), HUGE_PAGE) if huge else _address(reserve)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    populate = "write" if writable and not region.read_fault_maps_writable else "read"
    for tile in tiles:
        if tile.region_offset is None:
            continue
        addr = base + tile.file_offset
        err = map_fixed(
            addr,
            tile.length,
            prot,
            mmap.MAP_SHARED,
            region.fd,
            tile.region_offset,
            populate=populate,
            huge=huge,
        )
        if err:
            reserve.close()
            raise errors.DaxfsError(f"mmap of an extent failed: {os.strerror(err)}")
    return reserve, base


def connect(address: str, *, region_path: str | None = None, **kwargs: Any) -> Client:
    """Connect to a daxfs server at ``unix:/path`` or ``host:port`` and map its region."""
    return Client(address, region_path=region_path, **kwargs)
