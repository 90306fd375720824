"""The client side of the frame socket (server/frames.py): unary calls without gRPC.

A server on a unix socket ``PATH`` also answers the unary calls on
``PATH.frames``: the same request and reply messages, each sent as a 4-byte
little-endian length and the message (proto/daxfs.proto, "The frame socket").
A call there costs a unix socket round trip (tens of microseconds) instead of
gRPC's 0.5-2 ms. ``Connection`` (rpc.py) sends every unary call here when it
can and over gRPC when it cannot; the session stream always uses gRPC.

A connection carries one call at a time. Idle connections wait in a pool, so
concurrent callers (the mount's threads) each get their own, and the
connection count stays at the most calls ever in flight at once.

When the frame socket cannot be reached (no such file: an older server, one
started with ``--no-frames``, one restarting, or a proxy in front), ``call``
returns None and the caller makes the call over gRPC, which waits for a
restarting server as it always did; the socket is tried again a second
later. A request is only ever sent once: a pooled connection whose server
went away fails at send (EPIPE: nothing was delivered) and the call moves to a
fresh one; a connection that fails after the request went out raises
``Unavailable``, as gRPC does, since the call may have run.

A call is one send and, mostly, one receive: the deadline is the socket's
own (SO_SNDTIMEO, SO_RCVTIMEO) rather than Python's socket timeout, which
polls before every send and receive, and the reply is read whole when it
came whole (``FrameReader``).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence

from daxfs.proto import daxfs_pb2 as pb
from daxfs.shared.errors import PermissionDenied, Unavailable
from daxfs.shared.framing import FrameReader, framed

#: After the frame socket could not be reached, calls go over gRPC this long.
RETRY_AFTER_S = 1.0
#: gRPC's status code for a refused credential.
UNAUTHENTICATED = 16

_GONE = (BrokenPipeError, ConnectionResetError, ConnectionRefusedError)
#: ``struct timeval``, for SO_SNDTIMEO and SO_RCVTIMEO.
_TIMEVAL = struct.Struct("@ll")


class _Connection:
    """One connection of the pool: its socket, its reader, the deadline it has, and
    whether its server answers calls sent before another in one frame."""

    __slots__ = ("answers_before", "frames", "sock", "timeout")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = FrameReader(sock)
        self.timeout = -1.0
        self.answers_before = False

    def set_timeout(self, timeout: float) -> None:
        """Each send and receive fails (EAGAIN) after ``timeout`` seconds without progress."""
        if timeout == self.timeout:
            return
        whole = int(timeout)
        tv = _TIMEVAL.pack(whole, int((timeout - whole) * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self.timeout = timeout

    def close(self) -> None:
        self.sock.close()


class FrameChannel:
    """A pool of connections to one frame socket. Thread-safe."""

    def __init__(self, path: str, token: str | None) -> None:
        self.path = path
        self._hello = pb.FrameHello(token=token or "").SerializeToString()
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._pid = os.getpid()
        self._skip_until = 0.0

    def call(
        self,
        method: str,
        request: bytes,
        timeout: float,
        awaiting: Callable[[int, float], None] | None = None,
        before: Sequence[tuple[str, bytes]] = (),
    ) -> pb.FrameReply | None:
        """The server's reply to one call; None if the frame socket cannot be reached.

        ``awaiting``, if given, is called with the connection's socket and
        ``timeout`` once the request is sent, before the reply is read.
        ``before``: calls (method, request) the server answers first, in order,
        in the same frame (``FrameCall.before``; their answers are the reply's
        ``before``). A server that does not answer them so (an older one) is
        sent each alone first, on the same connection: the same order, the
        same answers.

        Raises ``Unavailable`` when the connection fails after the request was
        sent or the reply misses the deadline, ``PermissionDenied`` when the
        server refuses the token.
        """
        first = [pb.FrameCall(method=m, request=r) for m, r in before]
        while True:
            conn, reused = self._take(timeout)
            if conn is None:
                return None
            carried = first if conn.answers_before else []
            alone = [] if conn.answers_before else first
            message = framed(
                pb.FrameCall(method=method, request=request, before=carried).SerializeToString()
            )
            answers: list[pb.FrameReply] = []
            sent = False
            try:
                conn.set_timeout(timeout)
                for one in alone:
                    conn.sock.sendall(framed(one.SerializeToString()))
                    sent = True
                    answers.append(pb.FrameReply.FromString(_reply(conn.frames)))
                conn.sock.sendall(message)
            except _GONE:
                conn.close()
                if sent:
                    raise Unavailable(f"daxfs server at {self.path}: connection lost") from None
                if reused:
                    continue  # the server of this pooled connection is gone: a fresh one
                return None
            except (OSError, ValueError) as exc:
                conn.close()
                raise Unavailable(f"frame socket {self.path}: {exc}") from None
            break
        if awaiting is not None:
            awaiting(conn.sock.fileno(), timeout)
        try:
            reply = pb.FrameReply.FromString(_reply(conn.frames))
        except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO ran out: EAGAIN
            conn.close()
            raise Unavailable(
                f"daxfs server at {self.path}: no reply within {timeout:g} s"
            ) from None
        except (OSError, ValueError) as exc:
            conn.close()
            raise Unavailable(f"daxfs server at {self.path}: connection lost ({exc})") from None
        with self._lock:
            self._idle.append(conn)
        if answers:
            reply.before.extend(answers)
        return reply

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self, timeout: float) -> tuple[_Connection | None, bool]:
        """An idle connection (reused True) or a new one; None if the socket is unreachable."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's connections are not ours
                for old in self._idle:
                    old.close()
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop(), True
            if time.monotonic() < self._skip_until:
                return None, False
        fresh = self._connect(timeout)
        if fresh is None:
            with self._lock:
                self._skip_until = time.monotonic() + RETRY_AFTER_S
        return fresh, False

    def _connect(self, timeout: float) -> _Connection | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn = _Connection(sock)
        try:
            sock.settimeout(timeout)
            sock.connect(self.path)
            sock.sendall(framed(self._hello))
            answer = pb.FrameReply.FromString(_reply(conn.frames))
            sock.settimeout(None)  # blocking: the deadline is the kernel's from now on
            conn.answers_before = answer.answers_before
        except (OSError, ValueError):
            sock.close()
            return None
        if answer.status == UNAUTHENTICATED:
            sock.close()
            raise PermissionDenied(
                f"daxfs server at {self.path} refused the credential: {answer.message}"
            )
        if answer.status:
            sock.close()
            return None
        return conn


def _reply(frames: FrameReader) -> bytes:
    frame = frames.read()
    if frame is None:
        raise ValueError("the server closed the connection")
    return frame
