"""Extents: which range of the region holds which bytes of a file.

All offsets and lengths are in bytes and describe half-open ranges
``[start, start + length)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, NewType

InodeId = NewType("InodeId", int)
Generation = NewType("Generation", int)
FileHandle = NewType("FileHandle", int)
LeaseId = NewType("LeaseId", int)
ClientId = NewType("ClientId", int)

#: Largest file size daxfs accepts, in bytes (4 EiB); an offset + length past it
#: is refused with EFBIG. Offsets are int64 on the wire and clients round
#: ranges up to blocks and layout windows, so the limit leaves int64 headroom:
#: no arithmetic on a valid range can overflow.
MAX_FILE_SIZE = 1 << 62


class PhysRange(NamedTuple):
    """Bytes ``[offset, offset + length)`` of the region, whoever's they are.

    A named tuple, so the allocator's hot paths pay little for it and
    ``offset, length = r`` still reads well.
    """

    offset: int
    """Byte offset in the region."""
    length: int
    """Bytes, > 0."""

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class Extent:
    """Bytes ``[file_offset, file_offset + length)`` of a file.

    ``region_offset`` is where those bytes live in the region, or ``None`` for a
    hole (bytes that read as zeros and have no storage yet).
    """

    file_offset: int
    """Byte offset in the file."""
    length: int
    """Bytes, > 0."""
    region_offset: int | None
    """Byte offset in the region, or None for a hole."""

    @property
    def hole(self) -> bool:
        return self.region_offset is None

    @property
    def file_end(self) -> int:
        return self.file_offset + self.length

    def clip(self, start: int, end: int) -> Extent | None:
        """The part of this extent inside file range ``[start, end)``, or None."""
        lo = max(start, self.file_offset)
        hi = min(end, self.file_end)
        if lo >= hi:
            return None
        region = None if self.region_offset is None else self.region_offset + lo - self.file_offset
        return Extent(lo, hi - lo, region)


@dataclass(frozen=True, slots=True)
class Layout:
    """A lease on the extents covering a file range, as granted by GetLayout."""

    file_offset: int
    """Start of the range the layout covers."""
    length: int
    """Bytes covered; the extents tile ``[file_offset, file_offset + length)``."""
    extents: tuple[Extent, ...]
    """Sorted by file offset, holes included."""
    lease_id: LeaseId
    """Give back with ReturnLayout; 0 when no lease was taken."""
    recall_seq: int
    """The session's recall counter at grant time: a later recall of the file voids it."""


def align_down(value: int, alignment: int) -> int:
    return value - value % alignment


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def fill_holes(mapped: list[Extent], start: int, end: int) -> list[Extent]:
    """Tile ``[start, end)`` with the mapped extents (sorted, non-overlapping) and holes."""
    out: list[Extent] = []
    pos = start
    for ext in mapped:
        part = ext.clip(start, end)
        if part is None:
            continue
        if part.file_offset > pos:
            out.append(Extent(pos, part.file_offset - pos, None))
        out.append(part)
        pos = part.file_end
    if pos < end:
        out.append(Extent(pos, end - pos, None))
    return out
