"""The gRPC edge: decode a request, call the namespace, encode the reply, map errors.

Nothing here decides anything about files. Every daxfs error becomes the status
code in :data:`STATUS_FOR` with its message, and its errno travels in the
trailing metadata key ``daxfs-errno``; anything else is logged with its
traceback and answered INTERNAL/EIO (never the binding's UNKNOWN).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from daxfs.proto import daxfs_pb2 as pb
from daxfs.proto import daxfs_pb2_grpc as pb_grpc
from daxfs.server.leases import Recall
from daxfs.server.namespace import Attr, Caller, Namespace
from daxfs.server.sessions import SessionHub
from daxfs.shared.errors import DaxfsError
from daxfs.shared.extent import ClientId, Extent
from daxfs.shared.limits import ERRNO_KEY

log = logging.getLogger(__name__)

#: How long a call that freed extents waits for other guests to acknowledge the
#: recall before it answers (a silent guest is covered by quarantine after that).
RECALL_WAIT_S = 2.0

#: errno -> gRPC status, after grpc's doc/statuscodes.md.
STATUS_FOR: dict[int, grpc.StatusCode] = {
    errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    errno.EEXIST: grpc.StatusCode.ALREADY_EXISTS,
    errno.ENOSPC: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.EINVAL: grpc.StatusCode.INVALID_ARGUMENT,
    errno.ENAMETOOLONG: grpc.StatusCode.INVALID_ARGUMENT,
    errno.ERANGE: grpc.StatusCode.INVALID_ARGUMENT,
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


def _edge(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: DaxfsServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            reply = fn(self, request, context)
            self.ns.wait_recalls(RECALL_WAIT_S)
            return reply
        except DaxfsError as exc:
            code = exc.code
            status = STATUS_FOR.get(code, grpc.StatusCode.INTERNAL)
            log.debug("%s refused: %s (errno %d)", fn.__name__, exc, code)
            context.set_trailing_metadata(((ERRNO_KEY, str(code)),))
            context.abort(status, str(exc))
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


def _caller(msg: pb.Caller) -> Caller:
    return Caller(msg.uid, msg.gid, tuple(msg.groups), ClientId(msg.client_id))


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
    )


def extent_msg(e: Extent) -> pb.Extent:
    if e.region_offset is None:
        return pb.Extent(file_offset=e.file_offset, length=e.length, hole=True)
    return pb.Extent(file_offset=e.file_offset, length=e.length, region_offset=e.region_offset)


class DaxfsServicer(pb_grpc.DaxfsServicer):
    def __init__(self, ns: Namespace, *, region_path: str) -> None:
        self.ns = ns
        self.region_path = region_path
        self.hub = SessionHub()
        ns.notify = self.hub.deliver

    def Session(
        self, request_iterator: Iterator[pb.SessionRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.SessionEvent]:
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        client = ClientId(first.caller.client_id)
        if not client:
            context.set_trailing_metadata(((ERRNO_KEY, str(errno.EINVAL)),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message needs client_id")
        q = self.hub.attach(client)
        context.add_callback(lambda: q.put(None))
        log.debug("session attached client=%d", client)

        def read_requests() -> None:
            try:
                for msg in itertools.chain([first], request_iterator):
                    kind = msg.WhichOneof("kind")
                    if kind == "renew":
                        q.put(self.ns.renew(client))
                    elif kind == "recall_done":
                        self.ns.recall_done(client, msg.recall_done.recall_id)
            except grpc.RpcError:
                pass  # the client went away; its leases expire on their own
            except Exception:
                log.exception("session of client %d failed", client)
            finally:
                q.put(None)

        reader = threading.Thread(target=read_requests, name=f"daxfs-session-{client}", daemon=True)
        reader.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, Recall):
                    yield pb.SessionEvent(
                        recall=pb.LayoutRecall(
                            recall_id=item.id,
                            ino=item.ino,
                            offset=item.offset,
                            length=item.length,
                            reason=item.reason,
                        )
                    )
                else:
                    yield pb.SessionEvent(renewed=pb.Renewed(expires_ns=item))
        finally:
            self.hub.detach(client, q)
            log.debug("session detached client=%d", client)

    @_edge
    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        client = self.ns.hello()
        sb = self.ns.region.superblock
        log.info("hello client=%d name=%s", client, request.client_name or "?")
        return pb.HelloReply(
            client_id=client,
            region_uuid=sb.uuid_str,
            region_size=sb.region_size,
            block_size=sb.block_size,
            region_path=self.region_path,
            lease_ns=self.ns.leases.duration_ns,
            flush_mode=str(self.ns.region.flush_mode),
            protocol="1",
        )

    @_edge
    def Goodbye(self, request: pb.GoodbyeRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.goodbye(ClientId(request.caller.client_id))
        return pb.Empty()

    @_edge
    def Lookup(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> pb.Attr:
        return attr_msg(self.ns.lookup(request.parent, request.name, _caller(request.caller)))

    @_edge
    def GetAttr(self, request: pb.GetAttrRequest, context: grpc.ServicerContext) -> pb.Attr:
        caller = _caller(request.caller)
        if request.handle:
            return attr_msg(self.ns.fgetattr(request.handle, caller))
        return attr_msg(self.ns.getattr(request.path, caller))

    @_edge
    def SetAttr(self, request: pb.SetAttrRequest, context: grpc.ServicerContext) -> pb.Attr:
        r = request
        return attr_msg(
            self.ns.setattr(
                r.path or None,
                _caller(r.caller),
                fh=r.handle or None,
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
        opened = self.ns.create(
            r.path,
            r.mode,
            _caller(r.caller),
            exclusive=r.exclusive,
            truncate=r.truncate,
            readable=r.read,
            writable=r.write,
            append=r.append,
        )
        return pb.OpenReply(handle=opened.handle, attr=attr_msg(opened.attr))

    @_edge
    def Open(self, request: pb.OpenRequest, context: grpc.ServicerContext) -> pb.OpenReply:
        r = request
        opened = self.ns.open(
            r.path,
            _caller(r.caller),
            readable=r.read,
            writable=r.write,
            append=r.append,
            truncate=r.truncate,
        )
        return pb.OpenReply(handle=opened.handle, attr=attr_msg(opened.attr))

    @_edge
    def Release(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.release(request.handle, _caller(request.caller))
        return pb.Empty()

    @_edge
    def Mkdir(self, request: pb.MkdirRequest, context: grpc.ServicerContext) -> pb.Attr:
        return attr_msg(self.ns.mkdir(request.path, request.mode, _caller(request.caller)))

    @_edge
    def Unlink(self, request: pb.PathRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.unlink(request.path, _caller(request.caller))
        return pb.Empty()

    @_edge
    def Rmdir(self, request: pb.PathRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.rmdir(request.path, _caller(request.caller))
        return pb.Empty()

    @_edge
    def Rename(self, request: pb.RenameRequest, context: grpc.ServicerContext) -> pb.Empty:
        r = request
        self.ns.rename(r.old_path, r.new_path, _caller(r.caller), flags=r.flags)
        return pb.Empty()

    @_edge
    def Symlink(self, request: pb.SymlinkRequest, context: grpc.ServicerContext) -> pb.Attr:
        r = request
        return attr_msg(self.ns.symlink(r.target, r.path, _caller(r.caller)))

    @_edge
    def Readlink(self, request: pb.PathRequest, context: grpc.ServicerContext) -> pb.ReadlinkReply:
        return pb.ReadlinkReply(target=self.ns.readlink(request.path, _caller(request.caller)))

    @_edge
    def Link(self, request: pb.LinkRequest, context: grpc.ServicerContext) -> pb.Attr:
        r = request
        return attr_msg(self.ns.link(r.existing, r.new_path, _caller(r.caller)))

    @_edge
    def ReadDir(self, request: pb.PathRequest, context: grpc.ServicerContext) -> pb.ReadDirReply:
        entries = self.ns.readdir(request.path, _caller(request.caller))
        return pb.ReadDirReply(
            entries=[pb.DirEntry(name=e.name, attr=attr_msg(e.attr)) for e in entries]
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
        return pb.XattrReply(value=self.ns.getxattr(r.path, r.name, _caller(r.caller)))

    @_edge
    def SetXattr(self, request: pb.XattrRequest, context: grpc.ServicerContext) -> pb.Empty:
        r = request
        self.ns.setxattr(r.path, r.name, r.value, _caller(r.caller), flags=r.flags)
        return pb.Empty()

    @_edge
    def ListXattr(
        self, request: pb.PathRequest, context: grpc.ServicerContext
    ) -> pb.ListXattrReply:
        return pb.ListXattrReply(names=self.ns.listxattr(request.path, _caller(request.caller)))

    @_edge
    def RemoveXattr(self, request: pb.XattrRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.removexattr(request.path, request.name, _caller(request.caller))
        return pb.Empty()

    @_edge
    def Extents(self, request: pb.PathRequest, context: grpc.ServicerContext) -> pb.ExtentsReply:
        exts = self.ns.extents(request.path, _caller(request.caller))
        return pb.ExtentsReply(extents=[extent_msg(e) for e in exts])

    @_edge
    def GetLayout(self, request: pb.GetLayoutRequest, context: grpc.ServicerContext) -> pb.Layout:
        r = request
        if r.mode not in (pb.LAYOUT_MODE_READ, pb.LAYOUT_MODE_WRITE):
            from daxfs.shared.errors import InvalidArgument

            raise InvalidArgument(f"layout mode {r.mode} is not READ or WRITE")
        lay = self.ns.get_layout(
            r.handle,
            r.offset,
            r.length,
            _caller(r.caller),
            write=r.mode == pb.LAYOUT_MODE_WRITE,
            contiguous=r.contiguous,
        )
        return pb.Layout(
            offset=lay.file_offset,
            length=lay.length,
            extents=[extent_msg(e) for e in lay.extents],
            lease_id=lay.lease_id,
            expires_ns=lay.expires_ns,
        )

    @_edge
    def CommitLayout(
        self, request: pb.CommitLayoutRequest, context: grpc.ServicerContext
    ) -> pb.Attr:
        r = request
        return attr_msg(
            self.ns.commit_layout(
                r.handle,
                _caller(r.caller),
                new_size=None if r.new_size < 0 else r.new_size,
                mtime_ns=r.mtime_ns or None,
            )
        )

    @_edge
    def ReturnLayout(
        self, request: pb.ReturnLayoutRequest, context: grpc.ServicerContext
    ) -> pb.Empty:
        self.ns.return_layout(request.lease_id, _caller(request.caller))
        return pb.Empty()

    @_edge
    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext) -> pb.Attr:
        r = request
        return attr_msg(
            self.ns.fallocate(
                r.handle,
                r.offset,
                r.length,
                _caller(r.caller),
                keep_size=r.keep_size,
                contiguous=r.contiguous,
            )
        )

    @_edge
    def Read(self, request: pb.ReadRequest, context: grpc.ServicerContext) -> pb.ReadReply:
        r = request
        return pb.ReadReply(data=self.ns.read(r.handle, r.offset, r.length, _caller(r.caller)))

    @_edge
    def Write(self, request: pb.WriteRequest, context: grpc.ServicerContext) -> pb.WriteReply:
        r = request
        return pb.WriteReply(written=self.ns.write(r.handle, r.offset, r.data, _caller(r.caller)))

    @_edge
    def Persist(self, request: pb.PersistRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.ns.persist(request.handle, _caller(request.caller))
        return pb.Empty()

    @_edge
    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        c = self.ns.counters
        return pb.StatsReply(
            read_calls=c.read_calls,
            read_bytes=c.read_bytes,
            write_calls=c.write_calls,
            write_bytes=c.write_bytes,
            layouts=c.layouts,
            leases=len(self.ns.leases),
            free_bytes=self.ns.allocator.free_bytes,
            quarantined_bytes=self.ns.allocator.quarantined_bytes,
            open_files=self.ns.open_files,
            pending_recalls=self.ns.leases.pending_recalls,
            recalls_sent=self.hub.recalls_sent,
            sessions=len(self.hub),
        )
