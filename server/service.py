"""The gRPC edge: decode a request, call the namespace, encode the reply, map errors.

Nothing here decides anything about files. Every daxfs error becomes the status
code in :data:`STATUS_FOR` with its message, and its errno travels in the
trailing metadata key ``daxfs-errno``; anything else is logged with its
traceback and answered INTERNAL/EIO (never the binding's UNKNOWN).

Calls reach the core through ``DaxfsServicer.ns``. When the volume fails (the
sweeper's probe finds the region damaged, or the core reports
``VolumeFailed``), ``fail`` puts a ``FailedVolume`` there (failed.py): from
then on every call is refused with the same error, and health says NOT_SERVING.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import HealthServicer

from daxfs.proto import daxfs_pb2 as pb
from daxfs.proto import daxfs_pb2_grpc as pb_grpc
from daxfs.server.auth import Keyring
from daxfs.server.cache_grants import Invalidation
from daxfs.server.failed import FailedVolume, recovery_advice
from daxfs.server.leases import RecallNotice
from daxfs.server.namespace import Caller, Namespace, OwnInvalidation
from daxfs.server.peercred import PeerTable
from daxfs.server.sessions import SessionHub, StreamEnd
from daxfs.shared.attr import Attr
from daxfs.shared.errors import (
    BY_NAME,
    DaxfsError,
    InvalidArgument,
    NotPermitted,
    ReadOnly,
    StaleHandle,
    TooManySessions,
    VolumeFailed,
)
from daxfs.shared.extent import ClientId, Extent, FileHandle, Layout, align_up
from daxfs.shared.limits import ERRNO_KEY, ERROR_KEY, INVALIDATED_KEY

log = logging.getLogger(__name__)

#: Largest own-invalidation trailer sent as it is; past it the client drops its
#: whole cache ({"all": true}): gRPC refuses metadata past 8 KiB (deep paths).
MAX_INVALIDATED_TRAILER = 2048
#: The service's full name, as health checks and reflection know it.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Daxfs"].full_name


#: errno -> gRPC status, after grpc's doc/statuscodes.md.
STATUS_FOR: dict[int, grpc.StatusCode] = {
    errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    errno.EEXIST: grpc.StatusCode.ALREADY_EXISTS,
    errno.ENOSPC: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.EUSERS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.EINVAL: grpc.StatusCode.INVALID_ARGUMENT,
    errno.ENAMETOOLONG: grpc.StatusCode.INVALID_ARGUMENT,
    errno.ERANGE: grpc.StatusCode.INVALID_ARGUMENT,
    errno.E2BIG: grpc.StatusCode.INVALID_ARGUMENT,
    errno.EFBIG: grpc.StatusCode.OUT_OF_RANGE,
    errno.ENOTDIR: grpc.StatusCode.FAILED_PRECONDITION,
    errno.EISDIR: grpc.StatusCode.FAILED_PRECONDITION,
    errno.ENOTEMPTY: grpc.StatusCode.FAILED_PRECONDITION,
    errno.EBADF: grpc.StatusCode.FAILED_PRECONDITION,
    errno.ESTALE: grpc.StatusCode.FAILED_PRECONDITION,
    errno.EBUSY: grpc.StatusCode.FAILED_PRECONDITION,
    errno.EROFS: grpc.StatusCode.FAILED_PRECONDITION,
    errno.ENODATA: grpc.StatusCode.NOT_FOUND,
    errno.EACCES: grpc.StatusCode.PERMISSION_DENIED,
    errno.EPERM: grpc.StatusCode.PERMISSION_DENIED,
    errno.EOPNOTSUPP: grpc.StatusCode.UNIMPLEMENTED,
    errno.EIO: grpc.StatusCode.DATA_LOSS,
}

F = TypeVar("F", bound=Callable[..., Any])


def _abort(context: grpc.ServicerContext, exc: DaxfsError) -> None:
    code = exc.code
    name = type(exc).__name__
    if name in BY_NAME:
        context.set_trailing_metadata(((ERRNO_KEY, str(code)), (ERROR_KEY, name)))
    else:
        context.set_trailing_metadata(((ERRNO_KEY, str(code)),))
    context.abort(STATUS_FOR.get(code, grpc.StatusCode.INTERNAL), str(exc))


def _invalidated(own: OwnInvalidation) -> bytes:
    """The own-invalidation trailer (``client/session.py`` reads it): JSON of the
    inodes, the paths and the inodes whose xattrs the caller keeps; everything
    (``{"all": true}``) when it would not fit in gRPC's metadata."""
    stale: dict[str, Any] = {"inos": sorted(set(own.inos)), "paths": sorted(set(own.paths))}
    if own.xattrs_kept:
        stale["xattrs_kept"] = sorted(set(own.xattrs_kept))
    blob = json.dumps(stale)
    if len(blob) > MAX_INVALIDATED_TRAILER:  # gRPC caps metadata at 8 KiB
        blob = '{"all": true}'
    return blob.encode()


def _edge(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: DaxfsServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            # Bookkeeping of the serving thread, not a verb: on the core even
            # once the volume failed (the verb itself reaches self.ns and is
            # refused), so a reply is never lost to a failure that came after it.
            self.core.start_call()
            reply = fn(self, request, context)
            own = self.core.take_own_invalidation()
            if own is not None:
                context.set_trailing_metadata(((INVALIDATED_KEY, _invalidated(own)),))
            return reply
        except VolumeFailed as exc:
            # Found by this call (the metadata failed under it), or refused by
            # the FailedVolume: either way every later call is refused too.
            _abort(context, self.fail(str(exc)))
        except DaxfsError as exc:
            log.debug("%s refused: %s (errno %d)", fn.__name__, exc, exc.code)
            _abort(context, exc)
        except (ValueError, OverflowError, TypeError, UnicodeError) as exc:
            # Malformed input the decoder let through (e.g. a lone surrogate).
            context.set_trailing_metadata(((ERRNO_KEY, str(errno.EINVAL)),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {exc}")
        except Exception:
            log.exception("%s failed unexpectedly", fn.__name__)
            context.set_trailing_metadata(((ERRNO_KEY, str(errno.EIO)),))
            context.abort(
                grpc.StatusCode.INTERNAL, f"{fn.__name__}: internal error (see server log)"
            )

    return wrapper  # type: ignore[return-value]


def attr_msg(a: Attr) -> pb.Attr:
    return pb.Attr(
        ino=a.ino,
        generation=a.generation,
        mode=a.mode,
        nlink=a.nlink,
        uid=a.uid,
        gid=a.gid,
        size=a.size,
        allocated=a.allocated,
        atime_ns=a.atime_ns,
        mtime_ns=a.mtime_ns,
        ctime_ns=a.ctime_ns,
        blksize=a.blksize,
        rdev=a.rdev,
    )


def extent_msg(e: Extent) -> pb.Extent:
    if e.region_offset is None:
        return pb.Extent(file_offset=e.file_offset, length=e.length, hole=True)
    return pb.Extent(file_offset=e.file_offset, length=e.length, region_offset=e.region_offset)


def layout_msg(lay: Layout) -> pb.Layout:
    return pb.Layout(
        offset=lay.file_offset,
        length=lay.length,
        extents=[extent_msg(e) for e in lay.extents],
        lease_id=lay.lease_id,
        recall_seq=lay.recall_seq,
    )


def recall_event(notice: RecallNotice) -> pb.SessionEvent:
    r = notice.recall
    return pb.SessionEvent(
        recall=pb.LayoutRecall(
            recall_id=r.id,
            ino=r.ino,
            offset=r.offset,
            length=r.length,
            reason=r.reason,
            seq=notice.seq,
        )
    )


class DaxfsServicer(pb_grpc.DaxfsServicer):
    """The gRPC edge. ``max_streams`` bounds the worker threads session streams may hold."""

    def __init__(
        self,
        ns: Namespace,
        *,
        region_path: str,
        max_streams: int = 1024,
        keyring: Keyring | None = None,
        peers: PeerTable | None = None,
    ) -> None:
        #: The core itself, for what outlives a failure: Stats and closing streams.
        self.core = ns
        #: What every call reaches: the core, or once the volume failed the
        #: FailedVolume that refuses everything (``fail``).
        self.ns: Namespace | FailedVolume = ns
        self._failing = threading.Lock()
        #: The health service of this server (``create_server`` registers it):
        #: SERVING once the volume is open, NOT_SERVING once it failed.
        self.health = HealthServicer()
        self.keyring = keyring or Keyring([])
        #: Identities of unix socket peers (--peer-credentials), by gRPC peer address.
        self.peers = peers
        self.region_path = region_path
        self.hub = SessionHub()
        self._streams = threading.BoundedSemaphore(max_streams)
        self.max_streams = max_streams
        ns.connect(self.hub)

    @property
    def failed(self) -> bool:
        """Whether the volume failed (every call is refused)."""
        return isinstance(self.ns, FailedVolume)

    def fail(self, reason: str, advice: str | None = None) -> VolumeFailed:
        """The volume went bad: from now on every call reaches a ``FailedVolume``.

        Health says NOT_SERVING, and one error line in the log says why and
        what to do. A second failure keeps the first reason. Returns the
        refusal the calls get.
        """
        with self._failing:
            failed = self.ns
            if not isinstance(failed, FailedVolume):
                region, meta = self.core.region.path, self.core.meta.path
                failed = FailedVolume(reason, advice or recovery_advice(region, meta))
                self.ns = failed
                log.error("%s", failed.message)
                for name in ("", SERVICE_NAME):
                    self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            return failed.refusal()

    def _caller(
        self, msg: pb.Caller, context: grpc.ServicerContext, *, change: str | None = None
    ) -> Caller:
        """Who asks, as the call's credential allows; its session must be live and its own.

        The request's ids are a claim: a non-root unix socket peer acts as
        itself (with --peer-credentials), and the credential's policy replaces
        the ids it may not assert. ``change`` names what the call would change,
        refused (EROFS) for a read-only credential.
        """
        cred = self.keyring.identify(context)
        policy = cred.policy
        if change is not None and policy.read_only:
            raise self._refused(
                cred.name,
                context,
                ReadOnly(f"credential {cred.name} is read-only: {change} refused"),
            )
        # (An empty repeated field converts to a tuple slowly: most calls have none.)
        claimed = (msg.uid, msg.gid, tuple(msg.groups) if msg.groups else ())
        if self.peers is not None:
            peer = self.peers.lookup(context.peer())
            if peer is None:  # only the relay reaches gRPC's socket: fail closed
                raise self._refused(cred.name, context, NotPermitted("unknown socket peer"))
            if peer.uid != 0:
                claimed = (peer.uid, peer.gid, peer.groups)
        uid, gid, groups = policy.identity(*claimed)
        caller = Caller(uid, gid, groups, ClientId(msg.client_id), cred.name)
        try:
            self.ns.check_session(caller)
        except NotPermitted as exc:
            raise self._refused(cred.name, context, exc) from None
        return caller

    def _refused(self, who: str, context: grpc.ServicerContext, exc: DaxfsError) -> DaxfsError:
        self.keyring.refused(who, "call", str(exc), context.peer())
        return exc

    def Session(
        self, request_iterator: Iterator[pb.SessionRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.SessionEvent]:
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        except grpc.RpcError:
            return
        try:
            caller = self._caller(first.caller, context)
            if not caller.client:
                raise StaleHandle("the first message of a session stream needs client_id")
        except DaxfsError as exc:
            _abort(context, exc)
            return
        client = caller.client
        # Streams hold a worker thread each: the pool has max_streams threads more
        # than the request workers (daemon.create_server), and this semaphore
        # keeps streams from taking the rest.
        if not self._streams.acquire(blocking=False):
            _abort(
                context,
                TooManySessions(
                    f"{self.max_streams} session streams are open; the server refuses more"
                ),
            )
            return
        try:
            yield from self._stream(client, first, request_iterator, context)
        finally:
            self._streams.release()

    def _stream(
        self,
        client: ClientId,
        first: pb.SessionRequest,
        request_iterator: Iterator[pb.SessionRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[pb.SessionEvent]:
        q = self.hub.attach(client)
        context.add_callback(lambda: q.put(StreamEnd(None)))
        try:
            resend = self.ns.attach(client)
        except DaxfsError as exc:
            self.hub.detach(client, q)
            _abort(context, exc)
            return
        log.debug("session attached client=%d resend=%d", client, len(resend))

        def read_requests() -> None:
            try:
                for msg in itertools.chain([first], request_iterator):
                    kind = msg.WhichOneof("kind")
                    if kind == "renew":
                        self.ns.renew(client)
                        q.put(msg.renew)
                    elif kind == "recall_done":
                        self.ns.recall_done(client, msg.recall_done.recall_id)
                    elif kind == "invalidate_done":
                        self.ns.invalidation_done(client, msg.invalidate_done.id)
            except VolumeFailed as exc:
                q.put(StreamEnd(self.fail(str(exc))))
                return
            except DaxfsError as exc:
                q.put(StreamEnd(exc))  # e.g. evicted meanwhile: ESTALE
                return
            except grpc.RpcError:
                pass  # the client went away
            except Exception:
                log.exception("session of client %d failed", client)
            q.put(StreamEnd(None))

        reader = threading.Thread(target=read_requests, name=f"daxfs-session-{client}", daemon=True)
        reader.start()
        try:
            for notice in resend:
                yield recall_event(notice)
            while True:
                item = q.get()
                if isinstance(item, StreamEnd):
                    if item.error is not None:
                        _abort(context, item.error)
                    return
                if isinstance(item, RecallNotice):
                    yield recall_event(item)
                elif isinstance(item, Invalidation):
                    yield pb.SessionEvent(
                        invalidate=pb.Invalidate(id=item.id, inos=item.inos, paths=item.paths)
                    )
                else:
                    lease_ns = self.core.leases.duration_ns  # fixed at start
                    yield pb.SessionEvent(
                        renewed=pb.Renewed(
                            expires_ns=time.time_ns() + lease_ns, seq=item.seq, lease_ns=lease_ns
                        )
                    )
        finally:
            if self.hub.detach(client, q):
                self.core.detach(client)
            log.debug("session detached client=%d", client)

    @_edge
    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        session = self.ns.hello(
            self.keyring.identify(context).name,
            request.client_name or "?",
            cache=request.cache_metadata,
        )
        sb = self.ns.region.superblock
        return pb.HelloReply(
            client_id=session.id,
            region_uuid=sb.uuid_str,
            region_size=sb.region_size,
            block_size=sb.block_size,
            region_path=self.region_path,
            lease_ns=self.ns.leases.duration_ns,
            flush_mode=str(self.ns.region.flush_mode),
            protocol="2",
            server_instance=self.ns.instance,
        )

    @_edge
    def Goodbye(self, request: pb.GoodbyeRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.goodbye(self._caller(request.caller, context))
        return pb.Empty()

    @_edge
    def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.ServicerContext
    ) -> pb.ListSessionsReply:
        caller = self._caller(request.caller, context)
        if caller.uid != 0:
            from daxfs.shared.errors import NotPermitted

            raise NotPermitted("only root may list sessions")
        now = self.ns.leases.now()
        lease_ns = self.ns.leases.duration_ns
        return pb.ListSessionsReply(
            sessions=[
                pb.SessionInfo(
                    client_id=s.id,
                    name=s.name,
                    credential=s.credential,
                    attached=bool(s.attached),
                    idle_ns=max(now - (s.deadline_ns - lease_ns), 0),
                    unacknowledged_recalls=len(s.outstanding),
                )
                for s in self.ns.sessions()
            ]
        )

    @_edge
    def Evict(self, request: pb.EvictRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.evict(
            ClientId(request.client_id), self._caller(request.caller, context, change="Evict")
        )
        return pb.Empty()

    @_edge
    def Lookup(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> pb.Attr:
        return attr_msg(
            self.ns.lookup(request.parent, request.name, self._caller(request.caller, context))
        )

    @_edge
    def GetAttr(self, request: pb.GetAttrRequest, context: grpc.ServicerContext) -> pb.Attr:
        caller = self._caller(request.caller, context)
        if request.handle:
            return attr_msg(self.ns.fgetattr(FileHandle(request.handle), caller))
        return attr_msg(self.ns.getattr(request.path, caller))

    @_edge
    def SetAttr(self, request: pb.SetAttrRequest, context: grpc.ServicerContext) -> pb.Attr:
        r = request
        return attr_msg(
            self.ns.setattr(
                r.path or None,
                self._caller(r.caller, context, change="SetAttr"),
                fh=FileHandle(r.handle) if r.handle else None,
                mode=r.mode if r.HasField("mode") else None,
                uid=r.uid if r.HasField("uid") else None,
                gid=r.gid if r.HasField("gid") else None,
                size=r.size if r.HasField("size") else None,
                atime_ns=r.atime_ns if r.HasField("atime_ns") else None,
                mtime_ns=r.mtime_ns if r.HasField("mtime_ns") else None,
                atime_now=r.atime_now,
                mtime_now=r.mtime_now,
            )
        )

    @_edge
    def Create(self, request: pb.CreateRequest, context: grpc.ServicerContext) -> pb.OpenReply:
        r = request
        if not (r.read or r.write):
            raise InvalidArgument(
                "Create needs read or write: a handle open for neither serves nothing"
            )
        opened = self.ns.create(
            r.path,
            r.mode,
            self._caller(r.caller, context, change="Create"),
            exclusive=r.exclusive,
            truncate=r.truncate,
            readable=r.read,
            writable=r.write,
            append=r.append,
        )
        reply = pb.OpenReply(handle=opened.handle, attr=attr_msg(opened.attr))
        if opened.xattr_names is not None:
            reply.xattr_names.names.extend(opened.xattr_names)
            reply.xattr_names.SetInParent()  # sent even when empty: "none" is the news
        return reply

    @_edge
    def Open(self, request: pb.OpenRequest, context: grpc.ServicerContext) -> pb.OpenReply:
        r = request
        if not (r.read or r.write):
            raise InvalidArgument(
                "Open needs read or write: a handle open for neither serves nothing"
            )
        caller = self._caller(
            r.caller, context, change="Open for writing" if r.write or r.truncate else None
        )
        opened = self.ns.open(
            r.path,
            caller,
            readable=r.read,
            writable=r.write,
            append=r.append,
            truncate=r.truncate,
        )
        reply = pb.OpenReply(handle=opened.handle, attr=attr_msg(opened.attr))
        attr = opened.attr
        if r.layout and r.read and not (r.write or r.truncate or attr.is_dir) and attr.size > 0:
            # OPEN + LAYOUTGET: the two core calls a client would make, back to back.
            # Nothing makes them atomic, and nothing needs to: whatever comes between
            # (a truncate, a recall) is covered by the grant's recall_seq as for any
            # GetLayout.
            try:
                lay = self.ns.get_layout(
                    opened.handle,
                    0,
                    align_up(attr.size, self.ns.block_size),
                    caller,
                    write=False,
                )
            except DaxfsError as exc:
                log.debug("Open of %s: no layout with it (%s)", r.path, exc)
            else:
                reply.layout.CopyFrom(layout_msg(lay))
        return reply

    @_edge
    def Release(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.Empty:
        caller = self._caller(request.caller, context)
        if request.return_lease_id:
            # LAYOUTRETURN + CLOSE: the lease first, so a release that frees
            # blocks (an unlinked file, trimmed preallocation) needs no recall.
            try:
                self.ns.return_layout(request.return_lease_id, caller)
            except StaleHandle as exc:
                log.debug("Release: lease %d not returned (%s)", request.return_lease_id, exc)
        self.ns.release(FileHandle(request.handle), caller)
        return pb.Empty()

    @_edge
    def Mkdir(self, request: pb.MkdirRequest, context: grpc.ServicerContext) -> pb.Attr:
        return attr_msg(
            self.ns.mkdir(
                request.path, request.mode, self._caller(request.caller, context, change="Mkdir")
            )
        )

    @_edge
    def Mknod(self, request: pb.MknodRequest, context: grpc.ServicerContext) -> pb.Attr:
        r = request
        return attr_msg(
            self.ns.mknod(
                r.path, r.mode, self._caller(r.caller, context, change="Mknod"), rdev=r.rdev
            )
        )

    @_edge
    def Unlink(self, request: pb.PathRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.unlink(request.path, self._caller(request.caller, context, change="Unlink"))
        return pb.Empty()

    @_edge
    def Rmdir(self, request: pb.PathRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.rmdir(request.path, self._caller(request.caller, context, change="Rmdir"))
        return pb.Empty()

    @_edge
    def Rename(self, request: pb.RenameRequest, context: grpc.ServicerContext) -> pb.Empty:
        r = request
        self.ns.rename(
            r.old_path, r.new_path, self._caller(r.caller, context, change="Rename"), flags=r.flags
        )
        return pb.Empty()

    @_edge
    def Symlink(self, request: pb.SymlinkRequest, context: grpc.ServicerContext) -> pb.Attr:
        r = request
        return attr_msg(
            self.ns.symlink(r.target, r.path, self._caller(r.caller, context, change="Symlink"))
        )

    @_edge
    def Readlink(self, request: pb.PathRequest, context: grpc.ServicerContext) -> pb.ReadlinkReply:
        return pb.ReadlinkReply(
            target=self.ns.readlink(request.path, self._caller(request.caller, context))
        )

    @_edge
    def Link(self, request: pb.LinkRequest, context: grpc.ServicerContext) -> pb.Attr:
        r = request
        return attr_msg(
            self.ns.link(r.existing, r.new_path, self._caller(r.caller, context, change="Link"))
        )

    @_edge
    def ReadDir(self, request: pb.PathRequest, context: grpc.ServicerContext) -> pb.ReadDirReply:
        entries = self.ns.readdir(request.path, self._caller(request.caller, context))
        return pb.ReadDirReply(
            entries=[
                pb.DirEntry(name=e.name, attr=attr_msg(e.attr), xattr_names=e.xattr_names)
                for e in entries
            ]
        )

    @_edge
    def StatFs(self, request: pb.StatFsRequest, context: grpc.ServicerContext) -> pb.StatFsReply:
        s = self.ns.statfs()
        return pb.StatFsReply(
            block_size=s.block_size,
            blocks=s.blocks,
            blocks_free=s.blocks_free,
            files=s.files,
            name_max=s.name_max,
        )

    @_edge
    def GetXattr(self, request: pb.XattrRequest, context: grpc.ServicerContext) -> pb.XattrReply:
        r = request
        return pb.XattrReply(
            value=self.ns.getxattr(r.path, r.name, self._caller(r.caller, context))
        )

    @_edge
    def SetXattr(self, request: pb.XattrRequest, context: grpc.ServicerContext) -> pb.Empty:
        r = request
        self.ns.setxattr(
            r.path,
            r.name,
            r.value,
            self._caller(r.caller, context, change="SetXattr"),
            flags=r.flags,
        )
        return pb.Empty()

    @_edge
    def ListXattr(
        self, request: pb.PathRequest, context: grpc.ServicerContext
    ) -> pb.ListXattrReply:
        return pb.ListXattrReply(
            names=self.ns.listxattr(request.path, self._caller(request.caller, context))
        )

    @_edge
    def RemoveXattr(self, request: pb.XattrRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.removexattr(
            request.path, request.name, self._caller(request.caller, context, change="RemoveXattr")
        )
        return pb.Empty()

    @_edge
    def Extents(self, request: pb.PathRequest, context: grpc.ServicerContext) -> pb.ExtentsReply:
        exts = self.ns.extents(request.path, self._caller(request.caller, context))
        return pb.ExtentsReply(extents=[extent_msg(e) for e in exts])

    @_edge
    def GetLayout(self, request: pb.GetLayoutRequest, context: grpc.ServicerContext) -> pb.Layout:
        r = request
        if r.mode not in (pb.LAYOUT_MODE_READ, pb.LAYOUT_MODE_WRITE):
            raise InvalidArgument(f"layout mode {r.mode} is not READ or WRITE")
        lay = self.ns.get_layout(
            FileHandle(r.handle),
            r.offset,
            r.length,
            self._caller(
                r.caller,
                context,
                change="a WRITE layout" if r.mode == pb.LAYOUT_MODE_WRITE else None,
            ),
            write=r.mode == pb.LAYOUT_MODE_WRITE,
            contiguous=r.contiguous,
        )
        return layout_msg(lay)

    @_edge
    def CommitLayout(
        self, request: pb.CommitLayoutRequest, context: grpc.ServicerContext
    ) -> pb.Attr:
        r = request
        return attr_msg(
            self.ns.commit_layout(
                FileHandle(r.handle),
                self._caller(r.caller, context, change="CommitLayout"),
                new_size=None if r.new_size < 0 else r.new_size,
                mtime_ns=r.mtime_ns or None,
            )
        )

    @_edge
    def ReturnLayout(
        self, request: pb.ReturnLayoutRequest, context: grpc.ServicerContext
    ) -> pb.Empty:
        self.ns.return_layout(request.lease_id, self._caller(request.caller, context))
        return pb.Empty()

    @_edge
    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext) -> pb.Attr:
        r = request
        return attr_msg(
            self.ns.fallocate(
                FileHandle(r.handle),
                r.offset,
                r.length,
                self._caller(r.caller, context, change="Allocate"),
                keep_size=r.keep_size,
                contiguous=r.contiguous,
                punch_hole=r.punch_hole,
                zero_range=r.zero_range,
            )
        )

    @_edge
    def Read(self, request: pb.ReadRequest, context: grpc.ServicerContext) -> pb.ReadReply:
        r = request
        return pb.ReadReply(
            data=self.ns.read(
                FileHandle(r.handle), r.offset, r.length, self._caller(r.caller, context)
            )
        )

    @_edge
    def Write(self, request: pb.WriteRequest, context: grpc.ServicerContext) -> pb.WriteReply:
        r = request
        return pb.WriteReply(
            written=self.ns.write(
                FileHandle(r.handle),
                r.offset,
                r.data,
                self._caller(r.caller, context, change="Write"),
            )
        )

    @_edge
    def Persist(self, request: pb.PersistRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.persist(FileHandle(request.handle), self._caller(request.caller, context))
        return pb.Empty()

    @_edge
    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        ns = self.core  # answers after a failure too: the operator asks why
        c = ns.counters
        return pb.StatsReply(
            read_calls=c.read_calls,
            read_bytes=c.read_bytes,
            write_calls=c.write_calls,
            write_bytes=c.write_bytes,
            layouts=c.layouts,
            leases=len(ns.leases),
            free_bytes=ns.allocator.free_bytes,
            quarantined_bytes=ns.allocator.quarantined_bytes,
            open_files=ns.open_files,
            pending_recalls=ns.leases.pending_recalls,
            recalls_sent=self.hub.recalls_sent,
            sessions=len(self.hub),
            sessions_open=len(ns.sessions()),
            recall_waits_timed_out=c.recall_waits_timed_out,
            auth_refusals=self.keyring.refusals,
        )
