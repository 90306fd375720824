"""The server address forms every program accepts: ``unix:/path``, ``host:port``, a bare path."""

from __future__ import annotations

from daxfs.shared.errors import QuietError


def normalize_address(addr: str) -> str:
    """``unix:/path``, ``host:port``, or a bare socket path (made ``unix:/path``)."""
    if addr.startswith("/"):
        return "unix:" + addr
    if addr.startswith("unix:") or ":" in addr:
        return addr
    raise QuietError(f"bad address {addr!r}: use unix:/path/to.sock or host:port")


def unix_path(address: str) -> str | None:
    """The socket path of a ``unix:`` address, or None for TCP."""
    for prefix in ("unix://", "unix:"):
        if address.startswith(prefix):
            return address[len(prefix) :]
    return None
