"""Token authentication: a gRPC server interceptor.

Every call must carry metadata ``authorization: Bearer <token>`` where the
token is the content of the file given to the server (``--token-file``). The
comparison is constant-time (hmac.compare_digest). A missing or wrong token is
answered UNAUTHENTICATED and logged. The health check stays open so that
orchestrators can probe liveness without the secret; it reveals nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from daxfs.shared.limits import AUTH_SCHEME, AUTHORIZATION_KEY

log = logging.getLogger(__name__)

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
METADATA_KEY = AUTHORIZATION_KEY


def credential_of(context: grpc.ServicerContext) -> str:
    """The name of the credential a call came with, to bind sessions to it.

    A bearer token is named by a short hash of it (never the token itself: the
    name appears in logs and in ListSessions); a call without one is "". The
    interceptor has already refused wrong tokens, so the name is trustworthy.
    """
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY:
            token = bearer_token(value) or b""
            return "bearer:" + hashlib.sha256(token).hexdigest()[:12]
    return ""


def read_token(path: str) -> str:
    """The token in ``path`` (surrounding whitespace ignored); refuses an empty one."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise ValueError(f"token file {path} must hold at least 16 characters")
    return token


def bearer(token: str) -> str:
    return f"{AUTH_SCHEME} {token}"


def bearer_token(value: str | bytes) -> bytes | None:
    """The token of an ``authorization`` value, or None if it is not ``Bearer <token>``.

    The scheme is case-insensitive (RFC 7235 section 2.1, RFC 6750 section 2.1).
    """
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip()


class TokenAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method in OPEN_METHODS:
            return handler
        got = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == METADATA_KEY:
                got = value if isinstance(value, str) else value.decode("latin-1")
        token = bearer_token(got)
        if token is not None and hmac.compare_digest(token, self._expected):
            return handler
        log.warning("refused %s: %s token", method, "wrong" if got else "missing")
        return _deny_like(handler, "missing token" if not got else "wrong token")


def _deny_like(handler: Any, reason: str) -> Any:
    """A handler of the same shape as ``handler`` that aborts UNAUTHENTICATED."""
    message = f"{reason}: pass the server's token (--token-file or DAXFS_TOKEN_FILE)"

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
