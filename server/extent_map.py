"""The file extent map: which bytes of the region hold which bytes of each file.

famfs calls it the fmap. Each regular file maps file ranges to region ranges
(``Extent``, block aligned, kept in SQLite); a range with no extent is a hole
and reads as zeros. This module owns the map and the placement policy:

- a file growing at its end gets a chunk beyond what was asked
  (``daxfs.shared.growth``), so sequential writers need few layouts and few
  extents; the chunk is trimmed at the last close (``Namespace.release``);
- a new extent asks for the region bytes right after the file's previous
  extent, and merges with it when both continue;
- on a store that cannot punch holes (a /dev/dax device) new extents are
  zeroed when allocated; elsewhere freed extents are discarded, so free
  space already reads as zeros.

It frees nothing by itself: what leaves a file's map comes back as
:class:`Freed` pieces, and the lease lifecycle (``lease_lifecycle.py``)
decides whether they go free at once or wait in quarantine for recalls. It
knows no sessions, leases or callers. Callers hold the namespace lock inside
a metadata transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from daxfs.server.allocator import Allocator
from daxfs.server.metadata import Metadata
from daxfs.shared import errors, growth
from daxfs.shared.extent import Extent, InodeId, align_down, align_up, fill_holes
from daxfs.shared.region import Region


@dataclass(frozen=True, slots=True)
class Freed:
    """A piece that left a file's map: file range [file_offset, +length) at region_offset."""

    file_offset: int
    length: int
    region_offset: int


class ExtentMap:
    """Every file's extents in one region: look up, allocate, cut, zero."""

    def __init__(self, region: Region, meta: Metadata, allocator: Allocator) -> None:
        self.region = region
        self.meta = meta
        self.allocator = allocator
        self.block_size = region.block_size
        #: Free space reads as zeros when the store can punch holes: freed extents
        #: are discarded after commit, so allocation needs no zeroing. Otherwise
        #: (a /dev/dax device) new extents are zeroed when allocated.
        self.zero_on_alloc = not region.supports_discard()
        if not self.zero_on_alloc:
            for offset, length in allocator.free_extents():
                region.discard(offset, length)

    def of(self, ino: InodeId) -> list[Extent]:
        """The whole map of a file, in file order."""
        return self.meta.extents(ino)

    def overlapping(self, ino: InodeId, start: int, end: int) -> list[Extent]:
        """The extents of ``ino`` that overlap file range [start, end)."""
        return self.meta.extents_in(ino, start, end)

    def allocate(self, ino: InodeId, start: int, end: int, *, contiguous: bool = False) -> None:
        """Back every block of file range [start, end) with region storage that reads as zeros."""
        bs = self.block_size
        start, end = align_down(start, bs), align_up(end, bs)
        # Range queries only: a sparse file written at random holds thousands of extents.
        lo = max(start - 1, 0)  # also the extent ending at start, for the goal
        mapped = self.meta.extents_in(ino, lo, end)
        gaps = [e for e in fill_holes(mapped, start, end) if e.hole]
        if not gaps:
            return
        alloc_end, already = self.meta.extent_summary(ino)
        for gap in gaps:
            prev = [e for e in mapped if e.file_end <= gap.file_offset]
            goal = None
            if prev and prev[-1].file_end == gap.file_offset:
                assert prev[-1].region_offset is not None
                goal = prev[-1].region_offset + prev[-1].length
            want = gap.length
            if gap.file_end >= alloc_end and not contiguous:
                # Growing at the end: allocate a chunk so sequential writers get few extents.
                want = max(want, growth.chunk(already, bs, self.region.superblock.data_size))
            try:
                pieces = self.allocator.allocate(want, goal=goal, contiguous=contiguous)
            except errors.NoSpace:
                if want == gap.length:
                    raise
                pieces = self.allocator.allocate(gap.length, goal=goal, contiguous=contiguous)
            fpos = gap.file_offset
            for roff, n in pieces:
                if self.zero_on_alloc:
                    self.region.zero(roff, n)
                self._add(ino, Extent(fpos, n, roff))
                fpos += n
            mapped = self.meta.extents_in(ino, lo, end)

    def _add(self, ino: InodeId, ext: Extent) -> None:
        """Insert an extent, merging with the previous one when both file and region continue."""
        assert ext.region_offset is not None
        before = self.meta.extent_before(ino, ext.file_offset)
        if before is not None and before.file_end == ext.file_offset:
            p = before
            if p.region_offset is not None and p.region_offset + p.length == ext.region_offset:
                self.meta.delete_extent(ino, p.file_offset)
                self.meta.add_extent(
                    ino, Extent(p.file_offset, p.length + ext.length, p.region_offset)
                )
                return
        self.meta.add_extent(ino, ext)

    def cut(self, ino: InodeId, start: int, end: int | None = None) -> list[Freed]:
        """Take file range [start, end) (block aligned) out of the map; returns what left.

        ``end`` None means to the end of the file (truncate, trimming
        preallocation); a bounded range punches a hole.
        """
        extents = self.meta.extents(ino) if end is None else self.meta.extents_in(ino, start, end)
        freed: list[Freed] = []
        for ext in extents:
            assert ext.region_offset is not None
            lo = max(ext.file_offset, start)
            hi = ext.file_end if end is None else min(ext.file_end, end)
            if lo >= hi:
                continue
            self.meta.delete_extent(ino, ext.file_offset)
            if lo > ext.file_offset:
                self.meta.add_extent(
                    ino, Extent(ext.file_offset, lo - ext.file_offset, ext.region_offset)
                )
            if hi < ext.file_end:
                self.meta.add_extent(
                    ino, Extent(hi, ext.file_end - hi, ext.region_offset + (hi - ext.file_offset))
                )
            freed.append(Freed(lo, hi - lo, ext.region_offset + (lo - ext.file_offset)))
        return freed

    def drop(self, ino: InodeId) -> list[Freed]:
        """Take the whole map of a file away (the inode is being destroyed)."""
        if not self.meta.allocated_bytes(ino):  # (often cached: nothing to read or delete)
            return []
        freed = []
        for ext in self.meta.extents(ino):
            assert ext.region_offset is not None
            freed.append(Freed(ext.file_offset, ext.length, ext.region_offset))
        if freed:  # an empty map has nothing to delete (and changed no attribute)
            self.meta.delete_extents(ino)
        return freed

    def zero(self, ino: InodeId, start: int, end: int) -> None:
        """Zero the mapped bytes of file range [start, end) in the region."""
        if start >= end:
            return
        for ext in self.meta.extents_in(ino, start, end):
            part = ext.clip(start, end)
            if part is not None and part.region_offset is not None:
                self.region.zero(part.region_offset, part.length)

    def copy_out(self, ino: InodeId, start: int, dst: memoryview) -> None:
        """Copy file range [start, start+len(dst)) into ``dst`` (holes stay as they are)."""
        end = start + len(dst)
        for ext in self.meta.extents_in(ino, start, end):
            part = ext.clip(start, end)
            if part is not None and part.region_offset is not None:
                r = part.region_offset
                dst[part.file_offset - start : part.file_end - start] = self.region.u8[
                    r : r + part.length
                ].data

    def copy_in(self, ino: InodeId, start: int, src: memoryview) -> None:
        """Copy ``src`` into file range [start, start+len(src)), which must be allocated."""
        end = start + len(src)
        for ext in self.meta.extents_in(ino, start, end):
            part = ext.clip(start, end)
            if part is not None and part.region_offset is not None:
                r = part.region_offset
                self.region.u8[r : r + part.length] = src[
                    part.file_offset - start : part.file_end - start
                ]

    def persist(self, ino: InodeId) -> None:
        """Flush every mapped byte of the file to the persistence domain."""
        for ext in self.meta.extents(ino):
            assert ext.region_offset is not None
            self.region.persist(ext.region_offset, ext.length)
