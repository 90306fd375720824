"""The layout cache answers what it was told, exactly: a lookup is the known
tiles clipped to the range, or None when any byte of it is unknown."""

from __future__ import annotations

import random

from daxfs.client.layout_cache import LayoutCache
from daxfs.shared.extent import Extent, InodeId

INO = InodeId(7)


def _reference(
    known: dict[int, int | None], start: int, end: int
) -> list[tuple[int, int | None]] | None:
    """Each byte as (file offset, region offset or None); None if one is unknown."""
    out = []
    for b in range(start, end):
        if b not in known:
            return None
        out.append((b, known[b]))
    return out


def _bytes_of(tiles: list[Extent]) -> list[tuple[int, int | None]]:
    return [
        (t.file_offset + i, None if t.region_offset is None else t.region_offset + i)
        for t in tiles
        for i in range(t.length)
    ]


def test_a_lookup_is_the_tiles_known_there_and_none_where_anything_is_unknown() -> None:
    rnd = random.Random(1)
    for _round in range(30):
        cache = LayoutCache()
        known: dict[int, int | None] = {}
        for _ in range(rnd.randrange(1, 40)):
            # A layout of [start, end): tiles, some holes, maybe with gaps between them
            # (a gap is unknown after the insert: it replaces what was known there).
            start = rnd.randrange(0, 200)
            end = start + rnd.randrange(1, 60)
            tiles, pos = [], start
            while pos < end:
                length = min(rnd.randrange(1, 12), end - pos)
                region = None if rnd.random() < 0.2 else rnd.randrange(0, 10_000)
                if rnd.random() < 0.9:
                    tiles.append(Extent(pos, length, region))
                pos += length
            cache.insert(INO, tiles, start, end)
            for b in range(start, end):
                known.pop(b, None)
            for t in tiles:
                for i in range(t.length):
                    known[t.file_offset + i] = (
                        None if t.region_offset is None else t.region_offset + i
                    )
        for _ in range(200):
            start = rnd.randrange(0, 260)
            end = start + rnd.randrange(1, 40)
            got = cache.lookup(INO, start, end)
            want = _reference(known, start, end)
            assert (None if got is None else _bytes_of(got)) == want, (start, end)


def test_an_invalidated_file_is_unknown() -> None:
    cache = LayoutCache()
    cache.insert(INO, [Extent(0, 4096, 8192)], 0, 4096)
    assert cache.lookup(INO, 100, 200) == [Extent(100, 100, 8292)]
    cache.invalidate(INO)
    assert cache.lookup(INO, 100, 200) is None


def test_ranges_are_the_lookup_in_region_terms() -> None:
    rnd = random.Random(2)
    cache = LayoutCache()
    pos = 0
    while pos < 500:
        length = rnd.randrange(1, 20)
        region = None if rnd.random() < 0.2 else rnd.randrange(0, 10_000)
        cache.insert(INO, [Extent(pos, length, region)], pos, pos + length)
        pos += length + (rnd.randrange(1, 5) if rnd.random() < 0.1 else 0)  # gaps sometimes
    for _ in range(500):
        start = rnd.randrange(0, 520)
        end = start + rnd.randrange(1, 60)
        tiles = cache.lookup(INO, start, end)
        want = None if tiles is None else [(t.region_offset, t.length) for t in tiles]
        assert cache.ranges(INO, start, end) == want, (start, end)
        mapped = None if want is None or any(r is None for r, _ in want) else want
        assert cache.ranges(INO, start, end, mapped=True) == mapped, (start, end)
    assert LayoutCache().ranges(INO, 0, 1) is None
