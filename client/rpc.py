"""The client's wire: one channel, one typed method per call, errors turned back into daxfs errors.

The only module of the client core, with ``session.py`` (the session stream),
that knows the generated code. :class:`Server` offers one method per unary
RPC: plain values in (paths, :data:`FileHandle`, an :class:`Identity` to act
for), daxfs.shared values out (:class:`Attr`, :class:`StatFs`,
:class:`Layout`, ...), so mypy checks every call. :class:`Connection` is the
channel under it, and the ``Rpc`` table names each call with its wire types.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Generic, TypeVar

import grpc
from google.protobuf.message import Message

from daxfs.client.frames import FrameChannel
from daxfs.client.release_queue import ReleaseQueue
from daxfs.proto import daxfs_pb2 as pb
from daxfs.proto import daxfs_pb2_grpc as pb_grpc
from daxfs.shared.address import unix_path
from daxfs.shared.attr import Attr, SetAttr, StatFs
from daxfs.shared.errors import (
    DaxfsError,
    InvalidArgument,
    PermissionDenied,
    StaleHandle,
    Unavailable,
    UnknownSession,
    from_errno,
)
from daxfs.shared.extent import ClientId, Extent, FileHandle, InodeId, Layout, LeaseId
from daxfs.shared.framing import frame_path
from daxfs.shared.limits import (
    AUTH_SCHEME,
    AUTHORIZATION_KEY,
    ERRNO_KEY,
    ERROR_KEY,
    INVALIDATED_KEY,
    MAX_MESSAGE,
)
from daxfs.shared.permissions import Identity

log = logging.getLogger(__name__)

#: Per-call deadline: a server that stops answering gives EIO, never a hang.
DEFAULT_TIMEOUT_S = 30.0


Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)


@dataclass(frozen=True, slots=True)
class Rpc(Generic[Req, Rep]):
    """One unary call of the Daxfs service: its name, the request it takes, the reply it gives.

    ``Connection.call(rpc.GET_ATTR, request)`` is typed end to end: mypy checks
    the request type at every call site and knows the reply's.
    tests/test_repository.py checks this table against the service descriptor.
    """

    name: str
    request: type[Req]
    reply: type[Rep]


# fmt: off
HELLO = Rpc("Hello", pb.HelloRequest, pb.HelloReply)
GOODBYE = Rpc("Goodbye", pb.GoodbyeRequest, pb.Empty)
LIST_SESSIONS = Rpc("ListSessions", pb.ListSessionsRequest, pb.ListSessionsReply)
EVICT = Rpc("Evict", pb.EvictRequest, pb.Empty)
LOOKUP = Rpc("Lookup", pb.LookupRequest, pb.Attr)
GET_ATTR = Rpc("GetAttr", pb.GetAttrRequest, pb.Attr)
SET_ATTR = Rpc("SetAttr", pb.SetAttrRequest, pb.Attr)
CREATE = Rpc("Create", pb.CreateRequest, pb.OpenReply)
OPEN = Rpc("Open", pb.OpenRequest, pb.OpenReply)
RELEASE = Rpc("Release", pb.ReleaseRequest, pb.Empty)
MKDIR = Rpc("Mkdir", pb.MkdirRequest, pb.Attr)
MKNOD = Rpc("Mknod", pb.MknodRequest, pb.Attr)
UNLINK = Rpc("Unlink", pb.PathRequest, pb.Empty)
RMDIR = Rpc("Rmdir", pb.PathRequest, pb.Empty)
RENAME = Rpc("Rename", pb.RenameRequest, pb.Empty)
SYMLINK = Rpc("Symlink", pb.SymlinkRequest, pb.Attr)
READLINK = Rpc("Readlink", pb.PathRequest, pb.ReadlinkReply)
LINK = Rpc("Link", pb.LinkRequest, pb.Attr)
READ_DIR = Rpc("ReadDir", pb.PathRequest, pb.ReadDirReply)
STAT_FS = Rpc("StatFs", pb.StatFsRequest, pb.StatFsReply)
GET_XATTR = Rpc("GetXattr", pb.XattrRequest, pb.XattrReply)
SET_XATTR = Rpc("SetXattr", pb.XattrRequest, pb.Empty)
LIST_XATTR = Rpc("ListXattr", pb.PathRequest, pb.ListXattrReply)
REMOVE_XATTR = Rpc("RemoveXattr", pb.XattrRequest, pb.Empty)
EXTENTS = Rpc("Extents", pb.PathRequest, pb.ExtentsReply)
GET_LAYOUT = Rpc("GetLayout", pb.GetLayoutRequest, pb.Layout)
COMMIT_LAYOUT = Rpc("CommitLayout", pb.CommitLayoutRequest, pb.Attr)
RETURN_LAYOUT = Rpc("ReturnLayout", pb.ReturnLayoutRequest, pb.Empty)
ALLOCATE = Rpc("Allocate", pb.AllocateRequest, pb.Attr)
READ = Rpc("Read", pb.ReadRequest, pb.ReadReply)
WRITE = Rpc("Write", pb.WriteRequest, pb.WriteReply)
PERSIST = Rpc("Persist", pb.PersistRequest, pb.Empty)
STATS = Rpc("Stats", pb.StatsRequest, pb.StatsReply)
# fmt: on

#: Every unary call, by name (the session stream is not one: client/session.py).
UNARY: dict[str, Rpc[Message, Message]] = {
    r.name: r  # type: ignore[misc]
    for r in (
        HELLO,
        GOODBYE,
        LIST_SESSIONS,
        EVICT,
        LOOKUP,
        GET_ATTR,
        SET_ATTR,
        CREATE,
        OPEN,
        RELEASE,
        MKDIR,
        MKNOD,
        UNLINK,
        RMDIR,
        RENAME,
        SYMLINK,
        READLINK,
        LINK,
        READ_DIR,
        STAT_FS,
        GET_XATTR,
        SET_XATTR,
        LIST_XATTR,
        REMOVE_XATTR,
        EXTENTS,
        GET_LAYOUT,
        COMMIT_LAYOUT,
        RETURN_LAYOUT,
        ALLOCATE,
        READ,
        WRITE,
        PERSIST,
        STATS,
    )
}


def attr_of(a: pb.Attr) -> Attr:
    """The wire's attributes as the value type every part of daxfs uses."""
    return Attr(
        InodeId(a.ino),
        a.generation,
        a.mode,
        a.nlink,
        a.uid,
        a.gid,
        a.size,
        a.allocated,
        a.atime_ns,
        a.mtime_ns,
        a.ctime_ns,
        a.blksize,
        a.rdev,
    )


def to_error(exc: grpc.RpcError, address: str) -> DaxfsError:
    """Rebuild the daxfs error a server sent, or describe a transport failure."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    trailing = dict(exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else {}
    if ERRNO_KEY in trailing:
        return from_errno(
            int(trailing[ERRNO_KEY]), details or "daxfs error", trailing.get(ERROR_KEY)
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"daxfs server at {address} is unreachable ({details})")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return PermissionDenied(f"daxfs server at {address} refused the credential: {details}")
    return DaxfsError(f"daxfs server at {address}: {code}: {details}")


def resolve_token(token: str | None, token_file: str | None) -> str | None:
    """The token to send: given, else read from ``token_file`` or $DAXFS_TOKEN_FILE."""
    if token:
        return token
    path = token_file or os.environ.get("DAXFS_TOKEN_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise PermissionDenied(f"cannot read the token file {path}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class Carried:
    """A queued call (a release) that may ride with this client's next call on the
    frame socket (``FrameCall.before``)."""

    #: The method's name in service Daxfs.
    method: str
    #: Its request, serialized.
    request: bytes
    #: Sends it alone (the queue's worker; a carrier that goes over gRPC sends it so first).
    send: Callable[[], None]
    #: Given its answer when it rode with another call: raises what ``send`` would.
    answered: Callable[[pb.FrameReply], None]


class Connection:
    """A channel to one server. Thread-safe (gRPC channels are).

    ``token`` (or ``token_file``, or $DAXFS_TOKEN_FILE) is sent with every
    call; ``tls_ca`` (or $DAXFS_TLS_CA), a PEM file of trusted roots, makes a
    TCP channel use TLS. ``tls_cert`` and ``tls_key`` (or $DAXFS_TLS_CERT and
    $DAXFS_TLS_KEY), PEM files, are this client's certificate and key for a
    server that requires client certificates (``--tls-client-ca``).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        token_file: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        frames: bool | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        secret = resolve_token(token, token_file)
        self.metadata: tuple[tuple[str, str], ...] = (
            ((AUTHORIZATION_KEY, f"{AUTH_SCHEME} {secret}"),) if secret else ()
        )
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # gRPC shares subchannels between channels of a process by default: a
            # new client would inherit another's connect backoff to a server that
            # just restarted and fail at once with the old "no such file" error.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        ca = tls_ca or os.environ.get("DAXFS_TLS_CA")
        cert = tls_cert or os.environ.get("DAXFS_TLS_CERT")
        key = tls_key or os.environ.get("DAXFS_TLS_KEY")
        if bool(cert) != bool(key):
            raise InvalidArgument("a client certificate needs both tls_cert and tls_key")
        if ca and not address.startswith("unix:"):
            roots = Path(ca).read_bytes()
            creds = grpc.ssl_channel_credentials(
                root_certificates=roots,
                private_key=Path(key).read_bytes() if key else None,
                certificate_chain=Path(cert).read_bytes() if cert else None,
            )
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.DaxfsStub(self.channel)
        #: The server's frame socket (client/frames.py), for a unix address
        #: unless ``frames`` is False or $DAXFS_FRAMES is 0.
        self.frames: FrameChannel | None = None
        if frames is None:
            frames = os.environ.get("DAXFS_FRAMES", "1") != "0"
        path = unix_path(address)
        if frames and path is not None:
            self.frames = FrameChannel(frame_path(path), secret)
        #: Round trips on the frame socket (the other calls went over gRPC).
        self.framed_calls = 0
        #: Calls that rode with another (``before``): counted in ``calls``, not round trips.
        self.carried_calls = 0
        #: Given the INVALIDATED_KEY trailer of a successful call, before it returns
        #: (set by a client that caches metadata).
        self.on_invalidated: Callable[[bytes], None] | None = None
        #: Calls made, by method name (the mount reports them in its iostats).
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        #: Called before a call waits on gRPC (the FUSE daemon hands its
        #: /dev/fuse descriptor to another serving thread).
        self.before_blocking: Callable[[], None] | None = None
        #: Called with the socket and the deadline (seconds) once a call's frame is
        #: sent, before its reply is read: the FUSE daemon hands its /dev/fuse
        #: descriptor over only if a request comes before the reply
        #: (``KernelSession.await_reply``).
        self.awaiting_reply: Callable[[int, float], None] | None = None

    def call(
        self,
        rpc: Rpc[Req, Rep],
        request: Req,
        *,
        timeout: float | None = None,
        wait: bool = True,
        before: Sequence[Carried] = (),
    ) -> Rep:
        """One unary call. ``wait``: a server that is restarting (socket not there
        yet, connect backoff) is waited for up to the deadline instead of failing
        at once; the first call of a client (Hello) does not wait, so a wrong
        address fails fast. ``before``: queued calls (releases) sent first, in
        order, in the same frame on the frame socket, each alone before this
        one over gRPC; their answers are dealt with as the release queue's
        worker would (``ReleaseQueue.send_quietly``), before this call's."""
        with self._calls_lock:
            self.calls[rpc.name] += 1
            for carried in before:
                self.calls[carried.method] += 1
            self.carried_calls += len(before)
        if self.frames is not None:
            framed = self.frames.call(
                rpc.name,
                request.SerializeToString(),
                timeout or self.timeout,
                self.awaiting_reply,
                [(c.method, c.request) for c in before],
            )
            if framed is not None:
                with self._calls_lock:
                    self.framed_calls += 1
                for carried, answer in zip(before, framed.before, strict=False):
                    ReleaseQueue.send_quietly(functools.partial(carried.answered, answer))
                return self._framed_reply(rpc, framed)
        for carried in before:
            ReleaseQueue.send_quietly(carried.send)
        if self.before_blocking is not None:
            self.before_blocking()
        try:
            hook = self.on_invalidated
            if hook is None:
                reply: Rep = getattr(self.stub, rpc.name)(
                    request,
                    timeout=timeout or self.timeout,
                    metadata=self.metadata,
                    wait_for_ready=wait,
                )
                return reply
            reply, call = getattr(self.stub, rpc.name).with_call(
                request,
                timeout=timeout or self.timeout,
                metadata=self.metadata,
                wait_for_ready=wait,
            )
            for key, value in call.trailing_metadata() or ():
                if key == INVALIDATED_KEY:
                    hook(value)
            return reply
        except grpc.RpcError as exc:
            raise to_error(exc, self.address) from None

    def _framed_reply(self, rpc: Rpc[Req, Rep], framed: pb.FrameReply) -> Rep:
        """The reply of a call answered over the frame socket, or its error raised."""
        if framed.status == 0:
            if framed.invalidated and self.on_invalidated is not None:
                self.on_invalidated(framed.invalidated)
            return rpc.reply.FromString(framed.reply)
        if framed.errno:
            raise from_errno(framed.errno, framed.message or "daxfs error", framed.error or None)
        if framed.status == grpc.StatusCode.UNAUTHENTICATED.value[0]:
            raise PermissionDenied(
                f"daxfs server at {self.address} refused the credential: {framed.message}"
            )
        raise DaxfsError(
            f"daxfs server at {self.address}: status {framed.status}: {framed.message}"
        )

    def close(self) -> None:
        if self.frames is not None:
            self.frames.close()
        self.channel.close()


# -- the values the calls return ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """What the server says when a session opens (``HelloReply``)."""

    client_id: ClientId
    """The session's id, named in every call of it."""
    server_instance: int
    """Moves when the server restarts."""
    block_size: int
    """Bytes of one allocation block."""
    lease_ns: int
    """How long a lease lasts unrenewed, in ns (on this client's clock)."""
    region_uuid: str
    region_path: str
    """Where the server maps the region (a guest may see it elsewhere)."""


@dataclass(frozen=True, slots=True)
class Opened:
    """A file opened (or created) on the server (``OpenReply``)."""

    handle: FileHandle
    attr: Attr
    layout: Layout | None
    """The whole file's READ layout, when the open asked for one and got it."""
    xattr_names: frozenset[str] | None = None
    """A create's, for a caching client: the file's extended attribute names."""


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One entry of a directory listing, with its attributes (``ReadDir``)."""

    name: str
    attr: Attr
    xattr_names: frozenset[str]
    """The names of its extended attributes, when the server sends them."""


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


def extents_of(wire: Iterable[pb.Extent]) -> tuple[Extent, ...]:
    """The wire's extents (holes flagged) as the shared value, holes with no region offset."""
    return tuple(Extent(e.file_offset, e.length, None if e.hole else e.region_offset) for e in wire)


def layout_of(msg: pb.Layout) -> Layout:
    return Layout(
        msg.offset, msg.length, extents_of(msg.extents), LeaseId(msg.lease_id), msg.recall_seq
    )


# -- one typed method per call ------------------------------------------------------


class Server:
    """The server as this client calls it: one typed method per unary RPC. Thread-safe.

    Every call names the session (``client_id``) and acts for an identity:
    ``who``, or this process's own (``identity``) when None. If the server
    answers that it does not know the session, ``recover`` (set by the
    client's session) is asked to open a new one, and a call that named no
    handle or lease is sent again under it; one that did raises StaleHandle
    (handles and leases die with their session).
    """

    def __init__(self, conn: Connection, identity: Identity) -> None:
        self.conn = conn
        #: This process's ids, for calls that name no other.
        self.identity = identity
        #: The wire caller of this process's own calls, naming the session (0
        #: until Hello); replaced whole by :meth:`adopt`, so a reader sees one
        #: session or the other. Tests and the bench build raw requests with it.
        self.caller = self._wire_caller(identity, ClientId(0))
        #: Given the id of a session the server no longer knows; True once a new
        #: session replaced it (then the call is retried). None: never recover.
        self.recover: Callable[[int], bool] | None = None
        #: Releases of closed files, sent after close() returns and answered
        #: before this client's next call (client/release_queue.py).
        self.releases: ReleaseQueue[Carried] = ReleaseQueue()
        #: Wire callers of other identities (the mount's callers), by identity
        #: and session: a request copies the one it names. Replaced whole when full.
        self._callers: dict[tuple[Identity, int], pb.Caller] = {}

    @property
    def client_id(self) -> ClientId:
        """The session calls go out in."""
        return ClientId(self.caller.client_id)

    @staticmethod
    def _wire_caller(who: Identity, client_id: ClientId) -> pb.Caller:
        return pb.Caller(uid=who.uid, gid=who.gid, groups=list(who.groups), client_id=client_id)

    def _who(self, who: Identity | None) -> pb.Caller:
        caller = self.caller
        if who is None:
            return caller
        key = (who, caller.client_id)
        wire = self._callers.get(key)
        if wire is None:
            wire = self._wire_caller(who, ClientId(caller.client_id))
            callers = self._callers if len(self._callers) < 256 else {}
            callers[key] = wire
            self._callers = callers
        return wire

    def adopt(self, client_id: ClientId) -> None:
        """Calls from now on go out in session ``client_id``."""
        self.caller = self._wire_caller(self.identity, client_id)

    def call(self, method: Rpc[Req, Rep], request: Req, *, timeout: float | None = None) -> Rep:
        """One RPC; if the server forgot our session, recover it and retry what can be.

        Calls that name a handle or a lease cannot be retried (those died with
        the session): they raise StaleHandle after the recovery. Releases queued
        by earlier closes are answered first: this client sees them in order
        (on the frame socket they ride with this call: ``ReleaseQueue.take``).
        Not before a layout call: one may be made under the fence's shared lock
        (a copy that lost its layout asks again), which a release that recalls
        this client's own lease would then wait for; and a layout call names an
        open file, which no queued release can concern (the open that made it
        waited for them).
        """
        carried: list[Carried] = []
        if method not in _BYTE_PATH:
            taken = self.releases.take() if self.releases_ride else None
            if taken is None:
                self.releases.drain()
            else:
                carried = taken
        try:
            try:
                return self.conn.call(method, request, timeout=timeout, before=carried)
            finally:
                self.releases.carried(len(carried))  # answered, or lost with the call
        except UnknownSession:
            caller = getattr(request, "caller", None)
            stale = caller.client_id if caller is not None else 0
            recover = self.recover
            if method is GOODBYE or recover is None or not recover(stale):
                raise
            if getattr(request, "handle", 0) or getattr(request, "lease_id", 0):
                raise StaleHandle(
                    f"{method.name}: the server ended the session this handle belonged to; reopen"
                ) from None
            assert caller is not None
            caller.client_id = self.client_id
            return self.conn.call(method, request, timeout=timeout)

    @property
    def releases_ride(self) -> bool:
        """Queued releases ride with this client's next call (the frame socket)
        instead of being answered before it is sent (``ReleaseQueue.take``)."""
        return self.conn.frames is not None

    # -- sessions --------------------------------------------------------------

    def hello(self, name: str, *, cache_metadata: bool, wait: bool = True) -> Hello:
        """Open a session (not yet adopted: see :meth:`adopt`). ``wait``: see Connection.call."""
        request = pb.HelloRequest(client_name=name, cache_metadata=cache_metadata)
        r = self.conn.call(HELLO, request, wait=wait)
        return Hello(
            ClientId(r.client_id),
            int(r.server_instance),
            int(r.block_size),
            int(r.lease_ns),
            str(r.region_uuid),
            str(r.region_path),
        )

    def goodbye(self, *, timeout: float | None = None) -> None:
        """End the session (no recovery: a forgotten session is ended already)."""
        self.conn.call(GOODBYE, pb.GoodbyeRequest(caller=self.caller), timeout=timeout)

    def list_sessions(self) -> list[SessionInfo]:
        reply = self.call(LIST_SESSIONS, pb.ListSessionsRequest(caller=self.caller))
        return [
            SessionInfo(
                s.client_id, s.name, s.credential, s.attached, s.idle_ns, s.unacknowledged_recalls
            )
            for s in reply.sessions
        ]

    def evict(self, client_id: int) -> None:
        self.call(EVICT, pb.EvictRequest(caller=self.caller, client_id=client_id))

    def stats(self) -> ServerStats:
        reply = self.call(STATS, pb.StatsRequest())
        return ServerStats(**{f.name: int(getattr(reply, f.name)) for f in fields(ServerStats)})

    # -- the namespace ---------------------------------------------------------

    def lookup(self, parent: str, name: str, *, who: Identity | None = None) -> Attr:
        req = pb.LookupRequest(caller=self._who(who), parent=parent, name=name)
        return attr_of(self.call(LOOKUP, req))

    def get_attr(
        self, path: str = "", *, handle: FileHandle | None = None, who: Identity | None = None
    ) -> Attr:
        """By path, or by an open file's handle."""
        req = pb.GetAttrRequest(caller=self._who(who), path=path, handle=handle or 0)
        return attr_of(self.call(GET_ATTR, req))

    def set_attr(
        self,
        changes: SetAttr,
        path: str = "",
        *,
        handle: FileHandle | None = None,
        who: Identity | None = None,
    ) -> Attr:
        """Change what ``changes`` gives, by path or by an open file's handle."""
        c = changes
        req = pb.SetAttrRequest(
            caller=self._who(who),
            handle=handle or 0,
            path=path,
            atime_now=c.atime_now,
            mtime_now=c.mtime_now,
        )
        # Optional fields: only what is given is set (presence is the change).
        if c.mode is not None:
            req.mode = c.mode & 0o7777
        if c.uid is not None:
            req.uid = c.uid
        if c.gid is not None:
            req.gid = c.gid
        if c.size is not None:
            req.size = c.size
        if c.atime_ns is not None:
            req.atime_ns = c.atime_ns
        if c.mtime_ns is not None:
            req.mtime_ns = c.mtime_ns
        return attr_of(self.call(SET_ATTR, req))

    def create(
        self,
        path: str,
        mode: int,
        *,
        exclusive: bool,
        truncate: bool,
        read: bool,
        write: bool,
        append: bool,
        who: Identity | None = None,
    ) -> Opened:
        req = pb.CreateRequest(
            caller=self._who(who),
            path=path,
            mode=mode,
            exclusive=exclusive,
            truncate=truncate,
            read=read,
            write=write,
            append=append,
        )
        return _opened(self.call(CREATE, req))

    def open(
        self,
        path: str,
        *,
        read: bool,
        write: bool,
        append: bool,
        truncate: bool,
        layout: bool,
        who: Identity | None = None,
    ) -> Opened:
        """``layout``: ask for the whole file's READ layout with the open."""
        req = pb.OpenRequest(
            caller=self._who(who),
            path=path,
            read=read,
            write=write,
            append=append,
            truncate=truncate,
            layout=layout,
        )
        return _opened(self.call(OPEN, req))

    def release(
        self,
        handle: FileHandle,
        *,
        return_lease_id: int = 0,
        who: Identity | None = None,
    ) -> None:
        req = pb.ReleaseRequest(
            caller=self._who(who), handle=handle, return_lease_id=return_lease_id
        )
        self.call(RELEASE, req)

    def release_later(self, handle: FileHandle, *, return_lease_id: int = 0) -> None:
        """Release ``handle`` after the caller returns (:attr:`releases`), in the
        session it belongs to now: a release that goes out after a new session
        replaced it is refused (the old session is unknown) and dropped."""
        request = pb.ReleaseRequest(
            caller=self.caller, handle=handle, return_lease_id=return_lease_id
        )

        def send() -> None:
            self.conn.call(RELEASE, request)

        def answered(reply: pb.FrameReply) -> None:
            self.conn._framed_reply(RELEASE, reply)

        carry = Carried(RELEASE.name, request.SerializeToString(), send, answered)
        self.releases.defer(send, carry)

    def mkdir(self, path: str, mode: int, *, who: Identity | None = None) -> Attr:
        return attr_of(
            self.call(MKDIR, pb.MkdirRequest(caller=self._who(who), path=path, mode=mode))
        )

    def mknod(self, path: str, mode: int, rdev: int, *, who: Identity | None = None) -> Attr:
        req = pb.MknodRequest(caller=self._who(who), path=path, mode=mode, rdev=rdev)
        return attr_of(self.call(MKNOD, req))

    def unlink(self, path: str, *, who: Identity | None = None) -> None:
        self.call(UNLINK, pb.PathRequest(caller=self._who(who), path=path))

    def rmdir(self, path: str, *, who: Identity | None = None) -> None:
        self.call(RMDIR, pb.PathRequest(caller=self._who(who), path=path))

    def rename(self, old: str, new: str, *, flags: int = 0, who: Identity | None = None) -> None:
        req = pb.RenameRequest(caller=self._who(who), old_path=old, new_path=new, flags=flags)
        self.call(RENAME, req)

    def symlink(self, target: str, path: str, *, who: Identity | None = None) -> Attr:
        req = pb.SymlinkRequest(caller=self._who(who), target=target, path=path)
        return attr_of(self.call(SYMLINK, req))

    def readlink(self, path: str, *, who: Identity | None = None) -> str:
        return str(self.call(READLINK, pb.PathRequest(caller=self._who(who), path=path)).target)

    def link(self, existing: str, new: str, *, who: Identity | None = None) -> Attr:
        req = pb.LinkRequest(caller=self._who(who), existing=existing, new_path=new)
        return attr_of(self.call(LINK, req))

    def read_dir(self, path: str, *, who: Identity | None = None) -> list[DirEntry]:
        reply = self.call(READ_DIR, pb.PathRequest(caller=self._who(who), path=path))
        return [DirEntry(e.name, attr_of(e.attr), frozenset(e.xattr_names)) for e in reply.entries]

    def stat_fs(self, *, who: Identity | None = None) -> StatFs:
        r = self.call(STAT_FS, pb.StatFsRequest(caller=self._who(who)))
        return StatFs(r.block_size, r.blocks, r.blocks_free, r.files, r.name_max)

    def get_xattr(self, path: str, name: str, *, who: Identity | None = None) -> bytes:
        req = pb.XattrRequest(caller=self._who(who), path=path, name=name)
        return bytes(self.call(GET_XATTR, req).value)

    def set_xattr(
        self, path: str, name: str, value: bytes, flags: int = 0, *, who: Identity | None = None
    ) -> None:
        req = pb.XattrRequest(caller=self._who(who), path=path, name=name, value=value, flags=flags)
        self.call(SET_XATTR, req)

    def list_xattr(self, path: str, *, who: Identity | None = None) -> list[str]:
        return list(self.call(LIST_XATTR, pb.PathRequest(caller=self._who(who), path=path)).names)

    def remove_xattr(self, path: str, name: str, *, who: Identity | None = None) -> None:
        self.call(REMOVE_XATTR, pb.XattrRequest(caller=self._who(who), path=path, name=name))

    def extents(self, path: str, *, who: Identity | None = None) -> list[Extent]:
        """The whole extent map of a file (no holes)."""
        reply = self.call(EXTENTS, pb.PathRequest(caller=self._who(who), path=path))
        return [Extent(e.file_offset, e.length, e.region_offset) for e in reply.extents]

    # -- layouts and the byte path -------------------------------------------

    def get_layout(
        self,
        handle: FileHandle,
        offset: int,
        length: int,
        *,
        write: bool,
        contiguous: bool = False,
    ) -> Layout:
        req = pb.GetLayoutRequest(
            caller=self.caller,
            handle=handle,
            offset=offset,
            length=length,
            mode=pb.LAYOUT_MODE_WRITE if write else pb.LAYOUT_MODE_READ,
            contiguous=contiguous,
        )
        return layout_of(self.call(GET_LAYOUT, req))

    def commit_layout(self, handle: FileHandle, new_size: int | None) -> Attr:
        """Publish writes: a larger size (None keeps it) and the mtime."""
        req = pb.CommitLayoutRequest(
            caller=self.caller, handle=handle, new_size=-1 if new_size is None else new_size
        )
        return attr_of(self.call(COMMIT_LAYOUT, req))

    def return_layout(self, lease_id: int) -> None:
        self.call(RETURN_LAYOUT, pb.ReturnLayoutRequest(caller=self.caller, lease_id=lease_id))

    def allocate(
        self,
        handle: FileHandle,
        offset: int,
        length: int,
        *,
        keep_size: bool = False,
        contiguous: bool = False,
        punch_hole: bool = False,
        zero_range: bool = False,
    ) -> Attr:
        req = pb.AllocateRequest(
            caller=self.caller,
            handle=handle,
            offset=offset,
            length=length,
            keep_size=keep_size,
            contiguous=contiguous,
            punch_hole=punch_hole,
            zero_range=zero_range,
        )
        return attr_of(self.call(ALLOCATE, req))

    def read(self, handle: FileHandle, offset: int, length: int) -> bytes:
        """Bytes through the server (the copy path; the library reads the region itself)."""
        req = pb.ReadRequest(caller=self.caller, handle=handle, offset=offset, length=length)
        return bytes(self.call(READ, req).data)

    def write(self, handle: FileHandle, offset: int, data: bytes) -> int:
        """Store through the server; returns the bytes written."""
        req = pb.WriteRequest(caller=self.caller, handle=handle, offset=offset, data=data)
        return int(self.call(WRITE, req).written)

    def persist(self, handle: FileHandle) -> None:
        self.call(PERSIST, pb.PersistRequest(caller=self.caller, handle=handle))


#: Calls of the byte path of an open file (see Server.call).
_BYTE_PATH = (GET_LAYOUT, COMMIT_LAYOUT)


def _opened(reply: pb.OpenReply) -> Opened:
    layout = layout_of(reply.layout) if reply.HasField("layout") else None
    names = frozenset(reply.xattr_names.names) if reply.HasField("xattr_names") else None
    return Opened(FileHandle(reply.handle), attr_of(reply.attr), layout, names)
