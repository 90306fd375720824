"""Speculative growth: how much storage a file written past its allocation gets at once.

One rule for the client (how far its WRITE layout reaches) and the server
(how much it allocates for a gap at the end of a file), so an appending
writer asks for a layout O(log size) times:

- the chunk is ``GROWTH_FACTOR`` times the size the file reaches, so each
  layout call quadruples the allocation: a 1 GiB file written in 16 MiB
  pieces takes 3 GetLayout calls (allocated to 64 MiB at the first write, to
  320 MiB at the write ending at 80 MiB, to 1.3 GiB at the one ending at
  336 MiB), where doubling would take 6;
- at least ``MIN_GROWTH``, so small files do not ask once per block;
- at most ``MAX_GROWTH``, so a large file over-allocates at most 1 GiB, and
  from then on a 1 GiB-per-call stream costs one call per GiB;
- at most an eighth of the volume's capacity, so that one growing file does
  not make a small volume refuse another file's writes (the loan is only
  given back at close).

The excess is a loan: the server trims it at the file's last close (unless
``fallocate`` asked for it), and a chunk that does not fit is dropped for the
exact range (NoSpace only if that fails too). A writer that knows the final
size should call ``DaxFile.allocate`` instead: one call, one layout.
"""

from __future__ import annotations

from daxfs.shared.extent import align_up
from daxfs.shared.format import MIB

#: Smallest speculative chunk, bytes.
MIN_GROWTH = 1 * MIB
#: Largest speculative chunk, bytes (near the 1 GiB a DAX stream moves in ~0.1 s).
MAX_GROWTH = 1024 * MIB
#: Chunk as a multiple of the file's size: 3 makes each call quadruple the allocation.
GROWTH_FACTOR = 3


#: The chunk is at most the volume's data capacity divided by this.
CAPACITY_SHARE = 8


def chunk(size: int, block_size: int, capacity: int) -> int:
    """Bytes to allocate past ``size``, the file's size after the write that grows it.

    ``capacity`` is the volume's data size in bytes; the result is a multiple
    of ``block_size``, at least one block.
    """
    cap = min(MAX_GROWTH, capacity // CAPACITY_SHARE)
    return max(align_up(min(cap, max(MIN_GROWTH, GROWTH_FACTOR * size)), block_size), block_size)
