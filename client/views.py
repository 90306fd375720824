"""Numpy views of a file: its extents mapped into one contiguous address range.

``DaxFile.array`` asks for the layout and calls :func:`map_tiles`, which
reserves address space and maps each extent there with MAP_FIXED, page tables
filled in the same call. A recall fences a view by mapping zero pages over the
recalled range (``client/fence.py``): the view lifecycle is map here, fence
there, unmap when the last array referring to the reservation is collected.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from daxfs.shared import errors
from daxfs.shared.extent import Extent, align_up
from daxfs.shared.hugepages import HUGE_PAGE
from daxfs.shared.mman import map_fixed
from daxfs.shared.region import Region


def address_of(buf: mmap.mmap) -> int:
    probe = np.frombuffer(buf, dtype=np.uint8)
    return int(probe.ctypes.data)


def map_tiles(
    region: Region, tiles: list[Extent], span: int, writable: bool
) -> tuple[mmap.mmap, int]:
    """Reserve address space for ``span`` bytes and map each tile there with MAP_FIXED.

    Returns the reservation and the address of file offset 0 in it. The
    reservation is an anonymous Python mmap; when the last array viewing it
    is collected, its munmap removes the whole range, fixed mappings included.
    Holes stay anonymous zero pages. Each tile's page tables are filled in
    the mapping call, so a fresh view takes no page fault on first touch:
    read population unless a read fault would leave stores to fault (see
    ``Region.read_fault_maps_writable``). On a 2 MiB-block region, file
    offset 0 sits on a 2 MiB boundary (the reservation is 2 MiB longer to
    allow it): with every extent 2 MiB aligned in the region, the kernel can
    map each 2 MiB with one huge page-table entry.
    """
    huge = region.block_size >= HUGE_PAGE
    slack = HUGE_PAGE if huge else 0
    reserve = mmap.mmap(-1, span + slack, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = align_up(address_of(reserve), HUGE_PAGE) if huge else address_of(reserve)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    populate = "write" if writable and not region.read_fault_maps_writable else "read"
    for tile in tiles:
        if tile.region_offset is None:
            continue
        addr = base + tile.file_offset
        err = map_fixed(
            addr,
            tile.length,
            prot,
            mmap.MAP_SHARED,
            region.fd,
            tile.region_offset,
            populate=populate,
            huge=huge,
        )
        if err:
            reserve.close()
            raise errors.DaxfsError(f"mmap of an extent failed: {os.strerror(err)}")
    return reserve, base
