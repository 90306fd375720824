"""The client's layout cache: what it knows of each file's extents, and until when.

A cached tile (a mapped extent or a hole) answers a load or store with no RPC
until the lease that brought it expires. Holes are only as fresh as the layout
that reported them: another guest may fill one later, which is why every
``open`` starts from a fresh layout (close-to-open consistency).

Thread safety: guarded by ``self._lock``; callers may share one cache across
threads (the FUSE mount does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from daxfs.shared.extent import Extent, InodeId


class _FileTiles:
    __slots__ = ("expires_ns", "tiles")

    def __init__(self) -> None:
        self.tiles: list[Extent] = []  # sorted, non-overlapping; gaps are unknown
        self.expires_ns = 0


class LayoutCache:
    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._files: dict[InodeId, _FileTiles] = {}

    def lookup(self, ino: InodeId, start: int, end: int) -> list[Extent] | None:
        """Tiles covering ``[start, end)`` clipped to it, or None if any part is unknown."""
        with self._lock:
            f = self._files.get(ino)
            if f is None:
                return None
            if f.expires_ns <= self._clock():
                del self._files[ino]
                return None
            out: list[Extent] = []
            pos = start
            for tile in f.tiles:
                if tile.file_end <= pos:
                    continue
                if tile.file_offset > pos:
                    return None
                part = tile.clip(pos, end)
                if part is None:
                    break
                out.append(part)
                pos = part.file_end
                if pos >= end:
                    return out
            return out if pos >= end else None

    def insert(
        self, ino: InodeId, tiles: list[Extent], start: int, end: int, expires_ns: int
    ) -> None:
        """Record a layout for ``[start, end)``; it replaces what was known there."""
        with self._lock:
            f = self._files.setdefault(ino, _FileTiles())
            kept: list[Extent] = []
            for tile in f.tiles:
                left = tile.clip(tile.file_offset, start)
                right = tile.clip(end, tile.file_end)
                if left is not None:
                    kept.append(left)
                if right is not None:
                    kept.append(right)
            kept.extend(tiles)
            kept.sort(key=lambda t: t.file_offset)
            f.tiles = kept
            f.expires_ns = expires_ns if not f.expires_ns else min(f.expires_ns, expires_ns)

    def allocated_end(self, ino: InodeId) -> int:
        """End of the last mapped tile known for a file (0 if none)."""
        with self._lock:
            f = self._files.get(ino)
            if f is None:
                return 0
            ends = [t.file_end for t in f.tiles if not t.hole]
            return max(ends, default=0)

    def extend(self, expires_ns: int) -> None:
        """The session renewed every lease: cached layouts stay valid until ``expires_ns``."""
        with self._lock:
            for f in self._files.values():
                f.expires_ns = max(f.expires_ns, expires_ns)

    def invalidate(self, ino: InodeId) -> None:
        with self._lock:
            self._files.pop(ino, None)

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
