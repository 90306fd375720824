"""The client library: files of a daxfs server, loaded and stored straight in the shared region.

``connect(address)`` says Hello, maps the region the server names (MAP_SHARED)
and returns a :class:`Client`. ``Client.open`` gives a :class:`DaxFile` whose
reads and writes are memory copies between the caller's buffer and the file's
extents; the server only answers layout calls, and a cached layout costs no
RPC. ``DaxFile.array`` gives a numpy array whose memory *is* the file's
extents: each extent is mapped MAP_FIXED into one reserved address range, so
the array is contiguous however many extents the file has (``daxfile.py`` and
``views.py``; this module holds the client: its wiring and the namespace verbs;
what the session holds and what its events do is ``session.py``; the wire is
``rpc.py``).

Visibility and durability: a store is visible to every other guest at once
(same memory). ``persist`` makes it durable (libpmem on pmem, msync
otherwise). ``flush`` publishes a new size and mtime to the server
(CommitLayout); ``fsync`` does both.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from typing import Any

from daxfs.client import rpc
from daxfs.client.daxfile import DaxFile as DaxFile
from daxfs.client.daxfile import OpenMode as OpenMode
from daxfs.client.daxfile import publish_inode
from daxfs.client.meta_cache import Answer, Listing, Pending, XattrAnswer, key_of
from daxfs.client.rpc import Connection, ServerStats, SessionInfo
from daxfs.client.session import SessionState
from daxfs.shared import errors
from daxfs.shared.attr import Attr, SetAttr, StatFs
from daxfs.shared.extent import ClientId, Extent, FileHandle, InodeId
from daxfs.shared.flush import FlushMode
from daxfs.shared.limits import RENAME_EXCHANGE
from daxfs.shared.permissions import Identity
from daxfs.shared.region import Region

log = logging.getLogger(__name__)

#: What ``Client.stat`` and the namespace verbs return: the shared attribute value.
Stat = Attr


__all__ = ["Client", "DaxFile", "OpenMode", "ServerStats", "SessionInfo", "Stat", "connect"]


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
        self._caches_metadata = cache_metadata and session
        #: The server, one typed method per call (client/rpc.py), acting for this
        #: process unless a call names another identity.
        self.server = rpc.Server(
            self.conn,
            Identity(
                os.getuid() if uid is None else uid,
                os.getgid() if gid is None else gid,
                tuple(os.getgroups() if groups is None else groups),
            ),
        )
        try:
            hello = self._hello(wait=False)
        except BaseException:
            self.conn.close()
            raise
        self.server.adopt(hello.client_id)
        self.block_size = hello.block_size
        self.lease_ns = hello.lease_ns
        self.region_uuid = hello.region_uuid
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
        #: What the client holds under its session and what each session event
        #: does to it (client/session.py), with the session stream unless ``session`` is False.
        self.state = SessionState(
            self.server,
            hello,
            say_hello=self._hello,
            stream=session,
            cache_metadata=self._caches_metadata,
        )
        self.session = self.state.stream
        self.caches_metadata = self.state.caches_metadata
        self.meta_cache = self.state.meta_cache
        self.cache_listeners = self.state.cache_listeners
        self.layouts = self.state.layouts
        self.fence = self.state.fence
        self.inodes = self.state.inodes
        self.lease_state = self.state.lease_state
        #: Releases of closed files, sent after close() returns (client/release_queue.py).
        self.releases = self.server.releases
        self._closed = False
        old = os.umask(0)
        os.umask(old)
        self.umask = old

    # -- session -------------------------------------------------------------

    @property
    def client_id(self) -> ClientId:
        """The server's id of this client's current session."""
        return self.server.client_id

    @property
    def session_epoch(self) -> int:
        """Moves when the server ends our session (restart, eviction): files
        opened before then are void (ESTALE)."""
        return self.state.epoch

    @property
    def server_instance(self) -> int:
        return self.state.server_instance

    def _hello(self, *, wait: bool = True) -> rpc.Hello:
        return self.server.hello(self._name, cache_metadata=self._caches_metadata, wait=wait)

    def _goodbye(self) -> None:
        try:
            self.server.goodbye(timeout=5)
        except errors.DaxfsError as exc:
            log.debug("goodbye failed: %s", exc)
        finally:
            self.conn.close()

    def cache_ttl(self) -> float:
        """How long an answer of the metadata cache may be trusted from now (seconds):
        the rest of the lease; 0 when nothing may be cached (SessionState.cache_ttl)."""
        return self.state.cache_ttl()

    def _who(self, caller: Identity | None) -> Identity:
        """Whom a call made for ``caller`` acts for (None: this process)."""
        return self.server.identity if caller is None else caller

    def _change(self, path: str, caller: Identity | None, *others: str) -> Pending | None:
        """Before a change whose reply the server grants (MetaCache.change).

        Over gRPC the releases queued by earlier closes go first (the call
        would wait for them anyway): a trailer of theirs moving the cache
        meanwhile would cost this reply its keeping. On the frame socket they
        ride with the call instead (``ReleaseQueue.take``), and their trailers
        are this client's own moves, which :meth:`MetaCache.changed` looks
        through when they name nothing the reply depends on.
        """
        if not self.caches_metadata:
            return None
        if not self.server.releases_ride:
            self.releases.drain()
        return self.meta_cache.change(key_of(path, self._who(caller)), *others)

    def _changed(
        self,
        pending: Pending | None,
        attr: Attr | None,
        *,
        added: tuple[str, ...] = (),
        removed: tuple[str, ...] = (),
        made_dir: bool = False,
        xattr_names: frozenset[str] | None = None,
    ) -> None:
        if pending is not None:
            self.meta_cache.changed(
                pending,
                attr,
                added=added,
                removed=removed,
                made_dir=made_dir,
                xattr_names=xattr_names,
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
        before = self.inodes.recalls_total
        if not self.caches_metadata:
            a = self.server.get_attr(path, who=caller)
            return self.inodes.seen(a, recalls_before=before)
        key = key_of(path, self._who(caller))
        if self.lease_valid():
            hit = self.meta_cache.get(key)
            if hit is not None:
                if hit.attr is None:
                    raise errors.NotFound(str(hit.error))
                return self.inodes.seen(hit.attr)
        epoch = self.meta_cache.epoch
        try:
            a = self.server.get_attr(path, who=caller)
        except errors.NotFound as exc:
            self.meta_cache.put(key, Answer(None, exc), epoch)
            raise
        self.meta_cache.put(key, Answer(a, None), epoch)
        return self.inodes.seen(a, recalls_before=before)

    def fattr(self, handle: FileHandle, caller: Identity | None = None) -> Attr:
        """The attributes of an open file, by its server handle (fstat; size as :meth:`attr`)."""
        before = self.inodes.recalls_total
        a = self.server.get_attr(handle=handle, who=caller)
        return self.inodes.seen(a, recalls_before=before)

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
        return self.state.lease_valid()

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
        self.state.close()
        self._goodbye()
        self.region.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def flush_mode(self) -> FlushMode:
        return self.region.flush_mode

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
        epoch = self.meta_cache.epoch
        entries = self.server.read_dir(path, who=caller)
        if self.caches_metadata:
            who = self._who(caller)
            held = self.meta_cache.get(key_of(path, who))
            if held is not None and held.attr is not None:  # the whole listing (Names)
                names = frozenset(e.name for e in entries)
                listing = replace(Listing.empty(held.attr), names=names)
                self.meta_cache.put_listing(key_of(path, who), listing, epoch)
            base = path.rstrip("/")
            self.meta_cache.put_many(
                (
                    (key_of(f"{base}/{e.name}", who), Answer(e.attr, None, e.xattr_names))
                    for e in entries
                ),
                epoch,
            )
        return [(e.name, self.inodes.seen(e.attr)) for e in entries]

    def mkdir(self, path: str, mode: int = 0o777, *, caller: Identity | None = None) -> Attr:
        pending = self._change(path, caller)
        attr = self.server.mkdir(path, self._mode(mode, caller), who=caller)
        self._changed(pending, attr, added=(path,), made_dir=True)
        return attr

    def mknod(self, path: str, mode: int, rdev: int = 0, *, caller: Identity | None = None) -> Attr:
        """A FIFO, socket or device inode (``mode`` carries the type bits)."""
        perm = self._mode(mode, caller)
        pending = self._change(path, caller)
        attr = self.server.mknod(path, (mode & ~0o7777) | perm, rdev, who=caller)
        self._changed(pending, attr, added=(path,))
        return attr

    def unlink(self, path: str, *, caller: Identity | None = None) -> None:
        pending = self._change(path, caller)
        self.server.unlink(path, who=caller)
        self._changed(pending, None, removed=(path,))

    remove = unlink

    def rmdir(self, path: str, *, caller: Identity | None = None) -> None:
        pending = self._change(path, caller)
        self.server.rmdir(path, who=caller)
        self._changed(pending, None, removed=(path,))

    def rename(self, old: str, new: str, *, flags: int = 0, caller: Identity | None = None) -> None:
        """rename(2), or renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE in ``flags``."""
        pending = self._change(new, caller, old)
        self.server.rename(old, new, flags=flags, who=caller)
        if flags & RENAME_EXCHANGE:
            self._changed(pending, None)  # the same names, each naming the other's inode
        else:
            self._changed(pending, None, removed=(old,), added=(new,))

    def symlink(self, target: str, path: str, *, caller: Identity | None = None) -> Attr:
        pending = self._change(path, caller)
        attr = self.server.symlink(target, path, who=caller)
        self._changed(pending, attr, added=(path,))
        return attr

    def readlink(self, path: str, *, caller: Identity | None = None) -> str:
        return self.server.readlink(path, who=caller)

    def link(self, existing: str, new: str, *, caller: Identity | None = None) -> Attr:
        pending = self._change(new, caller)
        attr = self.server.link(existing, new, who=caller)
        self._changed(pending, attr, added=(new,))
        return self.inodes.seen(attr)

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
        """chmod, chown, truncate and utimens in one call, by path or by server handle:
        :meth:`set_attr` with the keywords as a :class:`SetAttr`. Only what is given changes.
        """
        changes = SetAttr(mode, uid, gid, size, atime_ns, mtime_ns, atime_now, mtime_now)
        return self.set_attr(changes, path, handle=handle, caller=caller)

    def set_attr(
        self,
        changes: SetAttr,
        path: str | None = None,
        *,
        handle: FileHandle | None = None,
        caller: Identity | None = None,
    ) -> Attr:
        """Change what ``changes`` gives, by path or by server handle.

        By path, a size or time change of a file this client has open
        publishes first what it wrote and the server does not know yet (a
        truncate up would zero those writes, and a later CommitLayout would
        overwrite explicit times with now); by a server handle it does not
        (:meth:`DaxFile.set_attr` does). Returns the attributes with the size
        as this client sees it.
        """
        if path and changes.touches_data and self.inodes.has_writers():
            # Which inode the path names: the cache knows it for a file this
            # client created or looked up, even after its own writes moved
            # the attributes (tar's futimens after its write); else ask.
            ino = None
            if self.caches_metadata and self.lease_valid():
                ino = self.meta_cache.inode_at(key_of(path, self._who(caller)))
            if ino is None:
                ino = self.server.get_attr(path, who=caller).ino
            inode = self.inodes.get(InodeId(ino))
            if inode is not None:
                publish_inode(self, inode)
        pending = self._change(path, caller) if path and not handle else None
        attr = self.server.set_attr(changes, path or "", handle=handle, who=caller)
        self._changed(pending, attr)
        inode = self.inodes.get(attr.ino)
        if inode is not None:
            inode.saw(attr)
        if changes.size is not None:
            self.layouts.invalidate(attr.ino)
            if inode is not None:
                inode.truncated(attr.size)
        return self.inodes.seen(attr)

    def chmod(self, path: str, mode: int, *, caller: Identity | None = None) -> Attr:
        return self.setattr(path, mode=mode, caller=caller)

    def truncate(self, path: str, size: int, *, caller: Identity | None = None) -> Attr:
        return self.setattr(path, size=size, caller=caller)

    def statfs(self, *, caller: Identity | None = None) -> StatFs:
        return self.server.stat_fs(who=caller)

    def getxattr(self, path: str, name: str, *, caller: Identity | None = None) -> bytes:
        """One extended attribute; with metadata caching, from the cache when it
        holds the answer (a value, or ENODATA), kept beside the file's attributes."""
        if not self.caches_metadata:
            return self.server.get_xattr(path, name, who=caller)
        key = key_of(path, self._who(caller))
        if self.lease_valid():
            hit = self.meta_cache.get_xattr(key, name)
            if hit is not None:
                if hit.value is None:
                    raise errors.NoData(str(hit.error))
                return hit.value
        epoch = self.meta_cache.epoch
        self.attr(path, caller)  # what the answer is kept beside (a hit, mostly)
        try:
            value = self.server.get_xattr(path, name, who=caller)
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
        self.server.set_xattr(path, name, value, flags, who=caller)

    def listxattr(self, path: str, *, caller: Identity | None = None) -> list[str]:
        return self.server.list_xattr(path, who=caller)

    def removexattr(self, path: str, name: str, *, caller: Identity | None = None) -> None:
        self.server.remove_xattr(path, name, who=caller)

    def sessions(self) -> list[SessionInfo]:
        """The server's live sessions (root only), for operators."""
        return self.server.list_sessions()

    def evict(self, client_id: int) -> None:
        """Declare a session gone (root only): for a guest frozen or lost for good."""
        self.server.evict(client_id)

    def stats(self) -> ServerStats:
        """Server counters (Read/Write RPCs served, layouts granted, free bytes...)."""
        return self.server.stats()

    def extents(self, path: str, *, caller: Identity | None = None) -> list[Extent]:
        """The whole extent map of a file (no holes), like FIEMAP."""
        return self.server.extents(path, who=caller)

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
        # The handle belongs to the session the request goes out in, even if the
        # reply arrives in the next one (then the file is stale from the start).
        session_epoch = self.session_epoch
        if how.create:
            pending = self._change(path, caller)
            opened = self.server.create(
                path,
                self._mode(mode, caller),
                exclusive=how.exclusive,
                truncate=how.truncate,
                read=how.read,
                write=how.write,
                append=how.append,
                who=caller,
            )
            self._changed(pending, opened.attr, added=(path,), xattr_names=opened.xattr_names)
        else:
            opened = self.server.open(
                path,
                read=how.read,
                write=how.write,
                append=how.append,
                truncate=how.truncate,
                # A reader gets the whole file's layout with the open: a view or
                # the first read then costs no round trip of its own.
                layout=how.read and not (how.write or how.truncate),
                who=caller,
            )
        attr = opened.attr
        if attr.is_dir:
            self.server.release(opened.handle, who=caller)
            raise errors.IsADirectory(f"{path} is a directory")
        # Close-to-open: whatever we cached of this file may be stale now.
        self.layouts.invalidate(attr.ino)
        return DaxFile(self, path, how, opened.handle, attr, opened.layout, session_epoch)


def connect(address: str, *, region_path: str | None = None, **kwargs: Any) -> Client:
    """Connect to a daxfs server at ``unix:/path`` or ``host:port`` and map its region."""
    return Client(address, region_path=region_path, **kwargs)
