"""The frame socket's framing, for both of its ends (server/frames.py, client/frames.py).

A server on a unix socket ``PATH`` answers the unary calls on ``PATH.frames``
too; every message there is a 4-byte little-endian length, then the message
(proto/daxfs.proto, "The frame socket"). Bytes only: the messages themselves
belong to the edges.
"""

from __future__ import annotations

import socket
import struct

from daxfs.shared.limits import MAX_MESSAGE

#: The frame socket's path is the gRPC socket's plus this.
FRAME_SUFFIX = ".frames"
#: A frame's length prefix.
LENGTH = struct.Struct("<I")


def frame_path(socket_path: str) -> str:
    """Where a server whose gRPC socket is ``socket_path`` listens for frames."""
    return socket_path + FRAME_SUFFIX


def framed(message: bytes) -> bytes:
    """``message`` with its length prefix, ready to send."""
    return LENGTH.pack(len(message)) + message


def read_frame(sock: socket.socket) -> bytes | None:
    """One frame's message; None at a clean end of the stream.

    Raises ValueError for a frame over the limit or a stream that ends inside one.
    """
    head = _read_exactly(sock, LENGTH.size)
    if head is None:
        return None
    (size,) = LENGTH.unpack(head)
    if size > MAX_MESSAGE:
        raise ValueError(f"a frame of {size} bytes exceeds {MAX_MESSAGE}")
    body = _read_exactly(sock, size)
    if body is None:
        raise ValueError("the stream ended inside a frame")
    return body


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes; None if the stream ends before the first."""
    if size == 0:
        return b""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return None
            raise ValueError("the stream ended inside a frame")
        got += n
    return bytes(buf)
