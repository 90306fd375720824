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


#: What a :class:`FrameReader` asks for at once: a metadata call's request or
#: reply is a few hundred bytes, so one recv usually holds the whole frame.
READ_AHEAD = 64 * 1024


class FrameReader:
    """The frames of one stream socket, read with as few recv calls as it can.

    One recv of up to :data:`READ_AHEAD` bytes usually brings a whole frame,
    length and message, where :func:`read_frame` makes two; what comes after
    a frame waits in the buffer for the next read. For one reader per socket,
    in one thread at a time.
    """

    __slots__ = ("_buf", "_end", "_sock", "_start")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray(READ_AHEAD)
        self._start = 0  # the first byte not yet returned
        self._end = 0  # the end of what was received

    def read(self) -> bytes | None:
        """One frame's message; None at a clean end of the stream.

        Raises ValueError for a frame over the limit or a stream that ends
        inside one; the socket's own errors (a timeout included) as they come.
        """
        while True:
            have = self._end - self._start
            need = LENGTH.size
            if have >= LENGTH.size:
                (size,) = LENGTH.unpack_from(self._buf, self._start)
                if size > MAX_MESSAGE:
                    raise ValueError(f"a frame of {size} bytes exceeds {MAX_MESSAGE}")
                need += size
                if have >= need:
                    at = self._start + LENGTH.size
                    message = bytes(self._buf[at : self._start + need])
                    self._start += need
                    if self._start == self._end:
                        self._start = self._end = 0
                        if len(self._buf) > READ_AHEAD:
                            self._buf = bytearray(READ_AHEAD)  # a large frame's room
                    return message
            if self._start + need > len(self._buf):
                # Room for the whole frame: move what is here to the front.
                buf = bytearray(max(need, READ_AHEAD))
                buf[:have] = self._buf[self._start : self._end]
                self._buf, self._start, self._end = buf, 0, have
            n = self._sock.recv_into(memoryview(self._buf)[self._end :])
            if n == 0:
                if have == 0:
                    return None
                raise ValueError("the stream ended inside a frame")
            self._end += n


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
