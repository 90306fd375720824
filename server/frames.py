"""The frame socket: the servicer's unary calls over a plain unix stream socket.

A unary gRPC call in Python costs 0.5-0.7 ms on this class of machine, and
1.6-2.2 ms after a few milliseconds without calls (gRPC's own wake-up; a bare
echo server shows it too), against 24-130 µs for a unix socket round trip
between two processes. Every metadata operation of a mount and every fresh
open of a view pays it. So beside its gRPC socket a server on a unix address
listens on ``PATH.frames``: the same request and reply messages, each framed as
a 4-byte little-endian length and the message (proto/daxfs.proto, "The frame
socket"). The session stream stays on gRPC, and so does everything that is not
a unary call of service Daxfs (health, reflection).

Nothing here decides anything: a call reaches the very servicer method gRPC
would call, with a context that carries the connection's credential and peer,
and an ``abort`` that ends the call the way gRPC's does. The credential is
checked once, by the first frame (``FrameHello``); with ``--peer-credentials``
the connection's SO_PEERCRED identity is registered in the servicer's
``PeerTable`` exactly as the gRPC relay registers its connections, so
``DaxfsServicer._caller`` judges both sockets by the same rule.

One thread serves one connection, one call at a time; a client with several
calls in flight opens several connections (client/frames.py pools them).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from daxfs.proto import daxfs_pb2 as pb
from daxfs.server.auth import Keyring, bearer_token, token_hint
from daxfs.server.peercred import PeerTable, peer_of
from daxfs.server.service import STATUS_FOR
from daxfs.shared.errors import DaxfsError
from daxfs.shared.framing import FrameReader, framed
from daxfs.shared.limits import (
    AUTH_SCHEME,
    AUTHORIZATION_KEY,
    ERRNO_KEY,
    ERROR_KEY,
    INVALIDATED_KEY,
)

log = logging.getLogger(__name__)

#: Connections served at once; more are closed at accept (the client then
#: makes that call over gRPC).
MAX_CONNECTIONS = 1024

Handler = Callable[[Any, Any], Message]


class _Aborted(Exception):
    """What ``FrameContext.abort`` raises: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class FrameContext:
    """The part of ``grpc.ServicerContext`` the servicer's unary methods use."""

    __slots__ = ("_metadata", "_peer", "trailing")

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str) -> None:
        self._metadata = metadata
        self._peer = peer
        self.trailing: tuple[tuple[str, str | bytes], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no TLS on a unix socket

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing = tuple(metadata)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


def unary_handlers(servicer: object) -> dict[str, tuple[type[Message], Handler]]:
    """Every unary method of service Daxfs: its request type and the servicer's method."""
    service = pb.DESCRIPTOR.services_by_name["Daxfs"]
    handlers: dict[str, tuple[type[Message], Handler]] = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            continue
        request_type = getattr(pb, method.input_type.name)
        handlers[method.name] = (request_type, getattr(servicer, method.name))
    return handlers


def _reply_of(trailing: Sequence[tuple[str, str | bytes]], **fields: Any) -> pb.FrameReply:
    reply = pb.FrameReply(**fields)
    for key, value in trailing:
        if key == ERRNO_KEY:
            reply.errno = int(value)
        elif key == ERROR_KEY:
            reply.error = value.decode() if isinstance(value, bytes) else value
        elif key == INVALIDATED_KEY:
            reply.invalidated = value if isinstance(value, bytes) else value.encode()
    return reply


class FrameServer:
    """Accepts on ``listener`` and serves each connection on its own thread."""

    def __init__(
        self,
        listener: socket.socket,
        servicer: object,
        keyring: Keyring,
        peers: PeerTable | None,
    ) -> None:
        self._listener = listener
        self._handlers = unary_handlers(servicer)
        self._keyring = keyring
        self._peers = peers
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._thread = threading.Thread(target=self._accept, name="daxfs-frames", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float | None) -> None:
        """No new connections or calls; calls in progress finish (up to ``grace`` seconds)."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        with self._lock:
            connections = dict(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)  # the next read ends; a reply still goes out
        deadline = time.monotonic() + (grace or 0)
        for thread in connections.values():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                log.exception("frame socket: accept failed")
                continue
            with self._lock:
                if len(self._connections) >= MAX_CONNECTIONS:
                    log.warning(
                        "frame socket: %d connections open, closing a new one", MAX_CONNECTIONS
                    )
                    conn.close()
                    continue
                thread = threading.Thread(
                    target=self._serve, args=(conn,), name="daxfs-frame", daemon=True
                )
                self._connections[conn] = thread
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        peer_name = ""
        try:
            peer, peer_name = self._identify(conn)
            frames = FrameReader(conn)
            metadata = self._handshake(conn, frames, peer)
            if metadata is None:
                return
            while True:
                frame = frames.read()
                if frame is None:
                    return
                conn.sendall(framed(self._call(frame, metadata, peer).SerializeToString()))
        except (ValueError, DecodeError) as exc:
            log.warning("frame socket: closing a connection: %s", exc)
        except OSError as exc:
            if not self._closed.is_set() and exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                log.warning("frame socket: connection failed: %s", exc)
        finally:
            if peer_name and self._peers is not None:
                self._peers.drop(peer_name)
            with self._lock:
                self._connections.pop(conn, None)
            conn.close()

    def _identify(self, conn: socket.socket) -> tuple[str, str]:
        """The peer string the servicer will look up, and the table entry to drop after."""
        if self._peers is None:
            return "unix:frames", ""
        name = self._peers.add(peer_of(conn))
        return f"unix-abstract:{name}", name

    def _handshake(
        self, conn: socket.socket, frames: FrameReader, peer: str
    ) -> tuple[tuple[str, str], ...] | None:
        """Read the FrameHello; the call metadata its token stands for, or None if refused."""
        frame = frames.read()
        if frame is None:
            return None
        hello = pb.FrameHello.FromString(frame)
        if self._keyring.required:
            token = bearer_token(f"{AUTH_SCHEME} {hello.token}") if hello.token else None
            if self._keyring.match(token) is None:
                reason = "wrong token" if token else "missing token"
                self._keyring.refused(token_hint(token) if token else "", "frames", reason, peer)
                refusal = pb.FrameReply(
                    status=grpc.StatusCode.UNAUTHENTICATED.value[0],
                    message=f"{reason}: pass the token the server's --token-file names",
                )
                conn.sendall(framed(refusal.SerializeToString()))
                return None
        conn.sendall(framed(pb.FrameReply(answers_before=True).SerializeToString()))
        if not hello.token:
            return ()
        return ((AUTHORIZATION_KEY, f"{AUTH_SCHEME} {hello.token}"),)

    def _call(
        self, frame: bytes, metadata: tuple[tuple[str, str], ...], peer: str
    ) -> pb.FrameReply:
        call = pb.FrameCall.FromString(frame)
        if not call.before:
            return self._answer(call, metadata, peer)
        # The calls that ride with this one (a client's queued releases), first
        # and in order, each answered as if sent alone.
        answers = [
            self._answer(first, metadata, peer)
            if not first.before
            else pb.FrameReply(
                status=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                errno=errno.EINVAL,
                message=f"{first.method}: a call sent before another cannot carry calls itself",
            )
            for first in call.before
        ]
        reply = self._answer(call, metadata, peer)
        reply.before.extend(answers)
        return reply

    def _answer(
        self, call: pb.FrameCall, metadata: tuple[tuple[str, str], ...], peer: str
    ) -> pb.FrameReply:
        found = self._handlers.get(call.method)
        if found is None:
            return pb.FrameReply(
                status=grpc.StatusCode.UNIMPLEMENTED.value[0],
                errno=errno.EOPNOTSUPP,
                message=f"no unary method {call.method!r} in service Daxfs",
            )
        request_type, handler = found
        context = FrameContext(metadata, peer)
        try:
            request = request_type.FromString(call.request)
        except DecodeError as exc:
            return pb.FrameReply(
                status=grpc.StatusCode.INTERNAL.value[0],
                errno=errno.EINVAL,
                message=f"{call.method}: cannot decode the request: {exc}",
            )
        try:
            reply = handler(request, context)
        except _Aborted as exc:
            return _reply_of(context.trailing, status=exc.code.value[0], message=exc.details)
        except DaxfsError as exc:  # raised outside the servicer's error edge
            status = STATUS_FOR.get(exc.code, grpc.StatusCode.INTERNAL)
            return pb.FrameReply(status=status.value[0], errno=exc.code, message=str(exc))
        except Exception:
            log.exception("frame socket: %s failed unexpectedly", call.method)
            return pb.FrameReply(
                status=grpc.StatusCode.INTERNAL.value[0],
                errno=errno.EIO,
                message=f"{call.method}: internal error (see server log)",
            )
        return _reply_of(context.trailing, reply=reply.SerializeToString())
