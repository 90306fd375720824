"""Credentials: who may call, as whom, and what they may change.

Every call carries metadata ``authorization: Bearer <token>`` (the scheme is
case-insensitive, RFC 7235), or arrives on a TLS connection whose client
certificate the server verified (``--tls-client-ca``). The token, or else the
certificate's subject CN, names a :class:`Credential` of the server's token
file (``--token-file``); its :class:`Policy` decides which uid and gids the
call acts as and whether it may change anything. The request's ``Caller`` is
only a claim: the edge (``service._caller``) replaces what the policy does
not let the credential assert. Without a token file every caller is the open
credential "" (trusted: as safe as whoever can reach the socket).

The token file is either one token (at least 16 characters: the credential
"default", trusted) or one credential per line::

    # name      token                      policy
    fuse-host   0f1e2d3c4b5a69788796a5b4   trusted
    guest-a     a5b4c3d2e1f0a9b8c7d6e5f4   squash=1000:1000
    guest-b     9a8b7c6d5e4f3a2b1c0d9e8f   root-squash read-only
    guest-c     cert:guest-c.example       squash=1001:1001

A token of the form ``cert:CN`` is no secret: it names the client
certificate whose subject common name is CN (no whitespace), which only a
server with ``--tls-client-ca`` verifies. TLS then refuses, at the handshake,
a connection without a certificate signed by that CA (grpc-python can only
require client certificates, not merely ask for them), so such a guest never
reaches daxfs: gRPC logs the failed handshake and the client sees
UNAVAILABLE. A certificate the CA signed whose CN no credential names gets
UNAUTHENTICATED, logged as ``cert:CN`` and counted like an unknown token.
A call that carries a token is judged by the token alone.

``trusted`` may assert any uid (a FUSE daemon acting for its callers);
``squash=UID:GID`` acts as that uid and gid whatever the request says (NFS
all_squash); ``root-squash[=UID:GID]`` turns uid 0 and gid 0 into UID:GID
(default 65534, NFS root_squash) and keeps other ids; ``read-only`` (beside
one of those) refuses every change with EROFS and grants READ layouts only.

Tokens are matched in constant time per candidate (a SHA-256 digest picks the
candidate, hmac.compare_digest confirms it). A missing or unknown token is
answered UNAUTHENTICATED. Every refusal, here or by a policy, is logged with
the credential's name (an unknown token by a short hash of it) and counted.
The health check stays open so that orchestrators can probe liveness without
a secret; it reveals nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from daxfs.shared.errors import DaxfsError, InvalidArgument
from daxfs.shared.limits import AUTH_SCHEME, AUTHORIZATION_KEY

log = logging.getLogger(__name__)

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
METADATA_KEY = AUTHORIZATION_KEY
MIN_TOKEN = 16
#: nfsnobody, the NFS default for squashed ids.
NOBODY = 65534
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True, slots=True)
class Policy:
    """Which ids a credential's calls act as, and whether they may change anything."""

    squash: str = "none"
    """"none" (trusted: the request's ids), "all" (always anon) or "root" (0 becomes anon)."""
    anon_uid: int = NOBODY
    anon_gid: int = NOBODY
    read_only: bool = False

    def identity(
        self, uid: int, gid: int, groups: tuple[int, ...]
    ) -> tuple[int, int, tuple[int, ...]]:
        """The (uid, gid, groups) a request claiming these ids acts as."""
        if self.squash == "all":
            return self.anon_uid, self.anon_gid, ()
        if self.squash == "root":
            return (
                self.anon_uid if uid == 0 else uid,
                self.anon_gid if gid == 0 else gid,
                tuple(self.anon_gid if g == 0 else g for g in groups),
            )
        return uid, gid, groups

    def describe(self) -> str:
        ids = f"{self.anon_uid}:{self.anon_gid}"
        kind = {"none": "trusted", "all": f"squash={ids}", "root": f"root-squash={ids}"}
        return kind[self.squash] + (" read-only" if self.read_only else "")


TRUSTED = Policy()


@dataclass(frozen=True, slots=True)
class Credential:
    name: str
    """Shown in logs and ListSessions; "" for the open credential (no token file)."""
    token: bytes = field(repr=False)
    """The bearer token; b"" for a certificate credential."""
    policy: Policy = TRUSTED
    cert_cn: str = ""
    """The subject CN of the client certificate that presents it; "" for a token."""


#: Every caller of a server without a token file.
OPEN = Credential("", b"", TRUSTED)
#: A token field naming a client certificate by its subject CN.
CERT_PREFIX = "cert:"
#: The auth context property grpc fills with a verified client certificate's CN.
X509_CN = "x509_common_name"


def token_hint(token: bytes) -> str:
    """A name for a token that matched no credential: a short hash, never the token."""
    return "unknown:" + hashlib.sha256(token).hexdigest()[:12]


def bearer_token(value: str | bytes) -> bytes | None:
    """The token of an ``authorization`` value, or None if it is not ``Bearer <token>``.

    The scheme is case-insensitive (RFC 7235 section 2.1, RFC 6750 section 2.1).
    """
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != AUTH_SCHEME.lower().encode():
        return None
    return token.strip()


def _token_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == METADATA_KEY:
            return bearer_token(value) or b""
    return None


def cert_cn(context: grpc.ServicerContext) -> str | None:
    """The subject CN of the client certificate TLS verified for this call, or None."""
    names: list[bytes] = list(context.auth_context().get(X509_CN) or ())
    return names[0].decode("utf-8", "replace") if len(names) == 1 else None


class Keyring:
    """The server's credentials and its refusal counter. Thread-safe."""

    def __init__(self, credentials: Sequence[Credential]) -> None:
        names = [c.name for c in credentials]
        if len(set(names)) != len(names):
            raise InvalidArgument("two credentials have the same name")
        tokens = [c for c in credentials if not c.cert_cn]
        self._by_digest = {hashlib.sha256(c.token).digest(): c for c in tokens}
        if len(self._by_digest) != len(tokens):
            raise InvalidArgument("two credentials have the same token")
        self._by_cn = {c.cert_cn: c for c in credentials if c.cert_cn}
        if len(self._by_cn) != len(credentials) - len(tokens):
            raise InvalidArgument("two credentials name the same certificate")
        self.required = bool(credentials)
        #: Some credential is a client certificate (the server must verify them).
        self.certificates = bool(self._by_cn)
        self._lock = threading.Lock()
        self._refusals = 0

    @property
    def refusals(self) -> int:
        with self._lock:
            return self._refusals

    def match(self, token: bytes | None) -> Credential | None:
        """The credential ``token`` names, or None."""
        if token is None:
            return None
        found = self._by_digest.get(hashlib.sha256(token).digest())
        if found is None or not hmac.compare_digest(found.token, token):
            return None
        return found

    def match_cert(self, cn: str | None) -> Credential | None:
        """The credential of the verified client certificate with subject CN ``cn``, or None."""
        return None if cn is None else self._by_cn.get(cn)

    def identify(self, context: grpc.ServicerContext) -> Credential:
        """The credential of a call that the interceptor already let through."""
        if not self.required:
            return OPEN
        token = _token_of(context.invocation_metadata())
        found = self.match(token) if token is not None else self.match_cert(cert_cn(context))
        if found is None:  # the interceptor refuses these; never act on one
            raise PermissionError("call without a valid credential reached the service")
        return found

    def refused(self, who: str, what: str, reason: str, peer: str = "") -> None:
        """Log and count one refusal of credential ``who``."""
        with self._lock:
            self._refusals += 1
        log.warning("refused %s credential=%s peer=%s: %s", what, who or '""', peer, reason)


def parse_keyring(text: str, source: str = "token file") -> Keyring:
    """The credentials of a token file's text (see the module docstring)."""
    lines = [
        (n, line.split())
        for n, raw in enumerate(text.splitlines(), 1)
        if (line := raw.split("#", 1)[0].strip())
    ]
    if len(lines) == 1 and len(lines[0][1]) == 1:
        token = lines[0][1][0]
        if len(token) < MIN_TOKEN:
            raise InvalidArgument(f"{source} must hold at least {MIN_TOKEN} characters")
        return Keyring([Credential("default", token.encode(), TRUSTED)])
    if not lines:
        raise InvalidArgument(f"{source} holds no token")
    creds = []
    for n, words in lines:
        where = f"{source} line {n}"
        if len(words) < 3:
            raise InvalidArgument(f"{where}: expected NAME TOKEN POLICY")
        name, token, *policy = words
        if not _NAME.fullmatch(name):
            raise InvalidArgument(f"{where}: bad credential name {name!r}")
        if token.startswith(CERT_PREFIX):
            cn = token[len(CERT_PREFIX) :]
            if not cn:
                raise InvalidArgument(f"{where}: cert: needs the certificate's subject CN")
            creds.append(Credential(name, b"", _policy(policy, where), cert_cn=cn))
            continue
        if len(token) < MIN_TOKEN:
            raise InvalidArgument(f"{where}: the token must hold at least {MIN_TOKEN} characters")
        creds.append(Credential(name, token.encode(), _policy(policy, where)))
    return Keyring(creds)


def _policy(words: list[str], where: str) -> Policy:
    read_only = "read-only" in words
    rest = [w for w in words if w != "read-only"]
    if len(rest) != 1:
        raise InvalidArgument(
            f"{where}: say exactly one of trusted, squash=UID:GID, root-squash[=UID:GID]"
            " (and optionally read-only)"
        )
    kind, _, ids = rest[0].partition("=")
    if kind == "trusted" and not ids:
        return Policy(read_only=read_only)
    if kind in ("squash", "root-squash"):
        if ids:
            m = re.fullmatch(r"(\d+):(\d+)", ids)
            if m is None:
                raise InvalidArgument(f"{where}: {kind} takes UID:GID, not {ids!r}")
            uid, gid = int(m.group(1)), int(m.group(2))
        elif kind == "squash":
            raise InvalidArgument(f"{where}: squash needs the ids: squash=UID:GID")
        else:
            uid, gid = NOBODY, NOBODY
        return Policy("all" if kind == "squash" else "root", uid, gid, read_only)
    raise InvalidArgument(f"{where}: unknown policy {rest[0]!r}")


def read_keyring(path: str) -> Keyring:
    """The credentials in the token file ``path``."""
    try:
        return parse_keyring(Path(path).read_text(encoding="utf-8"), f"token file {path}")
    except DaxfsError as exc:
        raise ValueError(str(exc)) from None


class TokenAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses, before any handler runs, a call whose token names no credential.

    A call without a token, on a server with certificate credentials, is
    judged inside its handler: only there does gRPC show the connection's
    verified certificate (the auth context).
    """

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method in OPEN_METHODS:
            return handler
        token = _token_of(handler_call_details.invocation_metadata)
        if token is None and self._keyring.certificates:
            return _checked(handler, lambda context: self._check_cert(method, context))
        if self._keyring.match(token) is not None:
            return handler
        reason = "missing token" if not token else "wrong token"
        self._keyring.refused(token_hint(token) if token else "", method, reason)
        return _deny_like(handler, reason)

    def _check_cert(self, method: str, context: grpc.ServicerContext) -> None:
        """Abort UNAUTHENTICATED unless the connection's certificate names a credential."""
        cn = cert_cn(context)
        if self._keyring.match_cert(cn) is not None:
            return
        reason = "missing token or client certificate" if cn is None else "unknown certificate"
        who = "" if cn is None else CERT_PREFIX + cn
        self._keyring.refused(who, method, reason, context.peer())
        context.abort(grpc.StatusCode.UNAUTHENTICATED, _refusal(reason))


def _refusal(reason: str) -> str:
    return (
        f"{reason}: pass the server's token (--token-file or DAXFS_TOKEN_FILE) or a client "
        "certificate it knows (--tls-cert and --tls-key, or DAXFS_TLS_CERT and DAXFS_TLS_KEY)"
    )


def _checked(handler: Any, check: Callable[[grpc.ServicerContext], None]) -> Any:
    """``handler`` with ``check(context)`` run first (it aborts to refuse)."""
    if handler.request_streaming and handler.response_streaming:
        stream_stream = handler.stream_stream

        def checked_ss(requests: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            yield from stream_stream(requests, context)

        new: Any = grpc.stream_stream_rpc_method_handler
        behaviour: Any = checked_ss
    elif handler.request_streaming:
        stream_unary = handler.stream_unary

        def checked_su(requests: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return stream_unary(requests, context)

        new, behaviour = grpc.stream_unary_rpc_method_handler, checked_su
    elif handler.response_streaming:
        unary_stream = handler.unary_stream

        def checked_us(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            yield from unary_stream(request, context)

        new, behaviour = grpc.unary_stream_rpc_method_handler, checked_us
    else:
        unary_unary = handler.unary_unary

        def checked_uu(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return unary_unary(request, context)

        new, behaviour = grpc.unary_unary_rpc_method_handler, checked_uu
    return new(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _deny_like(handler: Any, reason: str) -> Any:
    """A handler of the same shape as ``handler`` that aborts UNAUTHENTICATED."""
    message = _refusal(reason)

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
