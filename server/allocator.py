"""The extent allocator: free space of the region's data area, kept in memory and in SQLite.

Policy, and why:
- Everything is in whole blocks, so every extent can be mmap()ed on its own and a
  file's extents can be stitched into one contiguous view with MAP_FIXED.
- A growing file first extends its last extent in place (the ``goal``): a file
  written sequentially stays one extent while space after it is free.
- Otherwise best fit: the smallest free extent that holds the whole request,
  which keeps large holes for large files.
- When no single free extent is big enough, the largest ones are taken first, so
  a fragmented region still gives the fewest extents. ``contiguous=True`` refuses
  that and raises ENOSPC instead.
- Freed extents coalesce with their neighbours at once.
- A request that cannot be met raises :class:`NoSpace` before anything changes.

Quarantine: freed extents that another client may still reach through a
layout lease are parked with a deadline and return to the free list only when
it passes (or when the leases are returned), so a stale mapping never shows a
new owner's bytes.

Thread safety: callers (the namespace) hold their lock; every mutation runs
inside a metadata transaction, and :meth:`reload` rebuilds the in-memory view
after a rollback.
"""

from __future__ import annotations

import bisect
import logging

from daxfs.server.metadata import Metadata
from daxfs.shared.errors import NoSpace
from daxfs.shared.extent import PhysRange

log = logging.getLogger(__name__)


class Allocator:
    def __init__(self, meta: Metadata, data_offset: int, region_size: int, block_size: int) -> None:
        self._meta = meta
        self.data_offset = data_offset
        self.region_size = region_size
        self.block_size = block_size
        # Sorted start offsets and their lengths; guarded by the namespace lock.
        self._starts: list[int] = []
        self._lengths: dict[int, int] = {}
        self.free_bytes = 0
        self.quarantined_bytes = 0
        #: Extents freed since the last take_freed(): the namespace discards
        #: their contents once the transaction that freed them has committed.
        self._freed: list[PhysRange] = []
        self.reload()

    def format(self) -> None:
        """Mark the whole data area free (a fresh region)."""
        self._meta.add_free(self.data_offset, self.region_size - self.data_offset)
        self.reload()

    def reload(self) -> None:
        """Rebuild the in-memory free list from SQLite (after open or a rollback)."""
        free = self._meta.free_extents()
        self._starts = [o for o, _ in free]
        self._lengths = dict(free)
        self.free_bytes = sum(n for _, n in free)
        self.quarantined_bytes = sum(n for _, n, _ in self._meta.quarantined())
        self._freed = []  # a rolled-back free frees nothing

    # -- queries -------------------------------------------------------------

    def free_extents(self) -> list[PhysRange]:
        return [PhysRange(o, self._lengths[o]) for o in self._starts]

    def largest_free(self) -> int:
        return max(self._lengths.values(), default=0)

    # -- mutation ------------------------------------------------------------

    def _take(self, start: int, length: int, offset: int) -> None:
        """Remove ``[offset, offset+length)`` from the free extent beginning at ``start``."""
        total = self._lengths.pop(start)
        i = bisect.bisect_left(self._starts, start)
        del self._starts[i]
        self._meta.remove_free(start)
        before = offset - start
        after = start + total - (offset + length)
        if before:
            self._insert(start, before)
        if after:
            self._insert(offset + length, after)
        self.free_bytes -= length

    def _insert(self, offset: int, length: int) -> None:
        bisect.insort(self._starts, offset)
        self._lengths[offset] = length
        self._meta.add_free(offset, length)

    def allocate(
        self, length: int, *, goal: int | None = None, contiguous: bool = False
    ) -> list[PhysRange]:
        """Take ``length`` bytes (a multiple of the block size), in pieces in the order taken.

        Raises NoSpace, changing nothing, when the request cannot be met.
        """
        bs = self.block_size
        if length <= 0 or length % bs:
            raise ValueError(f"allocation of {length} bytes is not whole blocks of {bs}")
        if length > self.free_bytes:
            raise NoSpace(
                f"no space: {length} bytes asked, {self.free_bytes} free"
                + (
                    f", {self.quarantined_bytes} waiting in quarantine"
                    if self.quarantined_bytes
                    else ""
                )
            )
        pieces: list[PhysRange] = []
        remaining = length
        if goal is not None and goal in self._lengths:
            take = min(remaining, self._lengths[goal])
            if take == remaining or not contiguous:
                self._take(goal, take, goal)
                pieces.append(PhysRange(goal, take))
                remaining -= take
        if remaining == 0:
            return pieces
        best: int | None = None
        for start in self._starts:
            n = self._lengths[start]
            if n >= remaining and (best is None or n < self._lengths[best]):
                best = start
                if n == remaining:
                    break
        if best is not None:
            self._take(best, remaining, best)
            pieces.append(PhysRange(best, remaining))
            return _merge(pieces)
        if contiguous:
            raise NoSpace(
                f"no contiguous extent of {length} bytes (largest free: {self.largest_free()})"
            )
        for start in sorted(self._starts, key=lambda s: -self._lengths[s]):
            take = min(remaining, self._lengths[start])
            self._take(start, take, start)
            pieces.append(PhysRange(start, take))
            remaining -= take
            if remaining == 0:
                break
        assert remaining == 0, "free_bytes said there was room"
        return _merge(pieces)

    def free(self, offset: int, length: int) -> None:
        """Return an extent to the free list, coalescing with its neighbours."""
        if length <= 0 or offset % self.block_size or length % self.block_size:
            raise ValueError(f"free of unaligned extent [{offset}, +{length})")
        if offset < self.data_offset or offset + length > self.region_size:
            raise ValueError(f"free of extent [{offset}, +{length}) outside the data area")
        i = bisect.bisect_left(self._starts, offset)
        # Overlap with a free neighbour means a double free: refuse loudly.
        if i < len(self._starts) and self._starts[i] < offset + length:
            raise ValueError(f"double free of [{offset}, +{length})")
        if i > 0:
            prev = self._starts[i - 1]
            if prev + self._lengths[prev] > offset:
                raise ValueError(f"double free of [{offset}, +{length})")
        start, end = offset, offset + length
        if i < len(self._starts) and self._starts[i] == end:
            nxt = self._starts[i]
            end += self._lengths.pop(nxt)
            del self._starts[i]
            self._meta.remove_free(nxt)
        if i > 0:
            prev = self._starts[i - 1]
            if prev + self._lengths[prev] == start:
                start = prev
                self._lengths.pop(prev)
                del self._starts[i - 1]
                self._meta.remove_free(prev)
        self._insert(start, end - start)
        self.free_bytes += length
        self._freed.append(PhysRange(offset, length))

    def take_freed(self) -> list[PhysRange]:
        """Extents freed since the last call (after a commit: safe to discard)."""
        freed, self._freed = self._freed, []
        return freed

    def quarantine(self, offset: int, length: int, until_ns: int) -> None:
        """Park a freed extent until ``until_ns`` (wall clock)."""
        self._meta.add_quarantine(offset, length, until_ns)
        self.quarantined_bytes += length

    def requarantine(self, offset: int, length: int, until_ns: int) -> None:
        """Keep one quarantined extent until ``until_ns`` instead (its recall completed)."""
        if self._meta.quarantined_length(offset) != length:
            return
        self._meta.remove_quarantine(offset)
        self._meta.add_quarantine(offset, length, until_ns)

    def release_quarantined(self, offset: int, length: int) -> int:
        """Free one quarantined extent early (its recall completed); 0 if already released."""
        if self._meta.quarantined_length(offset) != length:
            return 0
        self._meta.remove_quarantine(offset)
        self.quarantined_bytes -= length
        self.free(offset, length)
        return length

    def release_quarantine(self, now_ns: int, *, force: bool = False) -> int:
        """Free every quarantined extent whose deadline has passed; returns bytes released."""
        released = 0
        for offset, length, until in self._meta.quarantined():
            if force or until <= now_ns:
                self._meta.remove_quarantine(offset)
                self.quarantined_bytes -= length
                self.free(offset, length)
                released += length
        return released


def _merge(pieces: list[PhysRange]) -> list[PhysRange]:
    out: list[PhysRange] = []
    for off, n in pieces:
        if out and out[-1].end == off:
            out[-1] = PhysRange(out[-1].offset, out[-1].length + n)
        else:
            out.append(PhysRange(off, n))
    return out
