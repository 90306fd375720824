"""The client's gRPC connection: one channel, one stub, errors turned back into daxfs errors."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from daxfs.proto import daxfs_pb2_grpc as pb_grpc
from daxfs.shared.errors import DaxfsError, Unavailable, from_errno

log = logging.getLogger(__name__)

ERRNO_KEY = "daxfs-errno"
MAX_MESSAGE = 64 * 1024 * 1024
#: Per-call deadline: a server that stops answering gives EIO, never a hang.
DEFAULT_TIMEOUT_S = 30.0


def to_error(exc: grpc.RpcError, address: str) -> DaxfsError:
    """Rebuild the daxfs error a server sent, or describe a transport failure."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    for key, value in (exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else ():
        if key == ERRNO_KEY:
            return from_errno(int(value), details or "daxfs error")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"daxfs server at {address} is unreachable ({details})")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        from daxfs.shared.errors import PermissionDenied

        return PermissionDenied(f"daxfs server at {address} refused the token: {details}")
    return DaxfsError(f"daxfs server at {address}: {code}: {details}")


class Connection:
    """A channel to one server. Thread-safe (gRPC channels are)."""

    def __init__(self, address: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        self.stub = pb_grpc.DaxfsStub(self.channel)

    def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise to_error(exc, self.address) from None

    def close(self) -> None:
        self.channel.close()
