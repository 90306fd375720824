"""The client's layout cache: what it knows of each file's extents, and until when.

A cached tile (a mapped extent or a hole) answers a load or store with no RPC
while the session's lease holds (the copy path checks the lease on the
client's own clock; a lapse or a recall clears the cache). Holes are only as fresh as the layout
that reported them: another guest may fill one later, which is why every
``open`` starts from a fresh layout (close-to-open consistency).

Thread safety: guarded by ``self._lock``; callers may share one cache across
threads (the FUSE mount does).
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Callable
from operator import attrgetter

from daxfs.shared.extent import Extent, InodeId

_FILE_OFFSET = attrgetter("file_offset")

#: A piece of a file range as the copy paths use it: (region offset, or None
#: for a hole; length), in file order.
RegionRange = tuple[int | None, int]


class _FileTiles:
    __slots__ = ("tiles",)

    def __init__(self) -> None:
        self.tiles: list[Extent] = []  # sorted, non-overlapping; gaps are unknown


class LayoutCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[InodeId, _FileTiles] = {}
        #: Called after every change (under the cache's lock): a copy taken of
        #: it elsewhere (the mount's compiled data path) must be dropped.
        self.on_change: Callable[[], None] | None = None

    def lookup(self, ino: InodeId, start: int, end: int) -> list[Extent] | None:
        """Tiles covering ``[start, end)`` clipped to it, or None if any part is unknown."""
        ranges = self.ranges(ino, start, end)
        if ranges is None:
            return None
        out: list[Extent] = []
        pos = start
        for region, length in ranges:
            out.append(Extent(pos, length, region))
            pos += length
        return out

    def ranges(
        self, ino: InodeId, start: int, end: int, *, mapped: bool = False
    ) -> list[RegionRange] | None:
        """:meth:`lookup` as region ranges: ``(region offset or None for a hole,
        length)`` in file order from ``start``; None if any part is unknown, or
        with ``mapped`` (a write's question) if any part is a hole.

        The copy paths' form (a 4 KiB READ or WRITE through the mount asks
        once per request): it makes no Extent, whose frozen construction costs
        more than the rest of the lookup.
        """
        with self._lock:
            f = self._files.get(ino)
            if f is None:
                return None
            if start >= end:
                return []
            tiles = f.tiles
            first = bisect_right(tiles, start, key=_FILE_OFFSET) - 1
            if first < 0:
                return None  # the first known tile starts after ``start``
            out: list[RegionRange] = []
            pos = start
            for i in range(first, len(tiles)):
                t = tiles[i]
                t_start = t.file_offset
                t_end = t_start + t.length
                if t_end <= pos:
                    continue  # the tile before ``start`` ends before it
                if t_start > pos:
                    return None  # a gap: unknown
                hi = t_end if t_end < end else end
                r = t.region_offset
                if r is None:
                    if mapped:
                        return None
                    out.append((None, hi - pos))
                else:
                    out.append((r + pos - t_start, hi - pos))
                pos = hi
                if pos >= end:
                    return out
            return None

    def insert(self, ino: InodeId, tiles: list[Extent], start: int, end: int) -> None:
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
            if self.on_change is not None:
                self.on_change()

    def mapped(self, ino: InodeId) -> list[tuple[int, int, int]]:
        """The mapped tiles known for a file, as (file offset, length, region
        offset) in file order; holes and unknown parts are left out."""
        with self._lock:
            f = self._files.get(ino)
            if f is None:
                return []
            return [
                (t.file_offset, t.length, t.region_offset)
                for t in f.tiles
                if t.region_offset is not None
            ]

    def allocated_end(self, ino: InodeId) -> int:
        """End of the last mapped tile known for a file (0 if none)."""
        with self._lock:
            f = self._files.get(ino)
            if f is None:
                return 0
            ends = [t.file_end for t in f.tiles if not t.hole]
            return max(ends, default=0)

    def invalidate(self, ino: InodeId) -> None:
        with self._lock:
            self._files.pop(ino, None)
            if self.on_change is not None:
                self.on_change()

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            if self.on_change is not None:
                self.on_change()
