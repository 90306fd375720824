"""A failed volume: what answers every call once the volume went bad under the server.

virtiofsd makes a read-only file system a wrapper with the file system's
interface, not a flag every operation checks. A failed volume is the same idea
taken to the end: :class:`FailedVolume` stands where the
:class:`~daxfs.server.namespace.Namespace` stood and refuses every verb,
attribute and property with one error, :class:`~daxfs.shared.errors.VolumeFailed`,
whose message says what happened and what the operator should do. Nothing can
forget to check it: getattr, readdir, statfs, session calls and the sweeper all
reach the same object.

Why refuse reads too: once the region was truncated, removed, replaced or
overwritten, or the metadata can no longer be read or written, the metadata no
longer describes the bytes a client would map, so no answer is safe.

The gRPC edge makes the swap (``DaxfsServicer.fail``): when the sweeper's probe
finds the region damaged, and when the core reports ``VolumeFailed`` itself (an
SQLite I/O error or corruption, ``metadata.storage_error``). The failed core
stays open only for the operator's Stats and for closing.
"""

from __future__ import annotations

from typing import Any

from daxfs.shared.errors import VolumeFailed


def recovery_advice(region_path: str, meta_path: str) -> str:
    """What the operator does about a failed volume, whatever failed."""
    return (
        f"Stop the server, run `daxfs fsck --region {region_path} --meta {meta_path}` "
        f"(`daxfs fsck --repair --region {region_path} --meta {meta_path}` repairs what it "
        "finds), then start the server again"
    )


class FailedVolume:
    """Stands in for the namespace of a failed volume: every verb raises ``VolumeFailed``.

    It holds nothing of the core, so no call can reach the core through it.
    Special (dunder) names are ordinary ``AttributeError``: ``hasattr``,
    ``copy`` and ``repr`` keep working.
    """

    __slots__ = ("message", "reason")

    def __init__(self, reason: str, advice: str) -> None:
        #: What went wrong, as the probe or the error said it.
        self.reason = reason
        #: The refusal every call gets: what happened, that everything is refused, what to do.
        self.message = f"the volume failed ({reason}): every call is refused. {advice}"

    def refusal(self) -> VolumeFailed:
        return VolumeFailed(self.message)

    def __getattr__(self, name: str) -> Any:
        """Any name the namespace has (a verb, ``leases``, ``region``, ...): refused."""
        if name.startswith("__"):
            raise AttributeError(name)
        raise self.refusal()

    def __repr__(self) -> str:
        return f"FailedVolume({self.reason!r})"
