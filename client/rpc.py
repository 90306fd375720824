"""The client's gRPC connection: one channel, one stub, errors turned back into daxfs errors."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import grpc
from google.protobuf.message import Message

from daxfs.proto import daxfs_pb2 as pb
from daxfs.proto import daxfs_pb2_grpc as pb_grpc
from daxfs.shared.attr import Attr
from daxfs.shared.errors import (
    DaxfsError,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    from_errno,
)
from daxfs.shared.extent import InodeId
from daxfs.shared.limits import (
    AUTH_SCHEME,
    AUTHORIZATION_KEY,
    ERRNO_KEY,
    ERROR_KEY,
    INVALIDATED_KEY,
    MAX_MESSAGE,
)

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
        #: Given the INVALIDATED_KEY trailer of a successful call, before it returns
        #: (set by a client that caches metadata).
        self.on_invalidated: Callable[[bytes], None] | None = None
        #: Calls made, by method name (the mount reports them in its iostats).
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    def call(
        self, rpc: Rpc[Req, Rep], request: Req, *, timeout: float | None = None, wait: bool = True
    ) -> Rep:
        """One unary call. ``wait``: a server that is restarting (socket not there
        yet, connect backoff) is waited for up to the deadline instead of failing
        at once; the first call of a client (Hello) does not wait, so a wrong
        address fails fast."""
        with self._calls_lock:
            self.calls[rpc.name] += 1
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

    def close(self) -> None:
        self.channel.close()
