"""Inode generations never repeat, across restarts and rolled-back calls (Namespace._gen).

SQLite records a bound a block of generations ahead instead of every one; a
new server instance starts at that bound. A crash here is a Namespace dropped
without shutdown, then a new one on the same files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.server.metadata import Metadata
from daxfs.server.namespace import GENERATION_BLOCK, Namespace
from daxfs.server.volume import format_volume
from daxfs.shared.format import MIB
from daxfs.shared.region import Region


class Refused(Exception):
    """Raised inside a transaction to have it rolled back."""


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[str, str]]:
    region, meta = str(tmp_path / "region"), str(tmp_path / "meta")
    format_volume(region, meta, 4 * MIB)
    yield region, meta


def start(paths: tuple[str, str]) -> Namespace:
    meta = Metadata(paths[1])
    meta.check_schema()
    return Namespace(Region(paths[0]), meta)


def crash(ns: Namespace) -> None:
    """The process ends: nothing more reaches SQLite (no shutdown record)."""
    ns.meta.close()
    ns.region.close()


def generations(ns: Namespace) -> list[int]:
    return sorted(row.generation for row in ns.meta.all_inodes())


def test_generations_are_unique_across_crashes(paths: tuple[str, str]) -> None:
    seen: list[int] = []
    for instance in range(3):
        ns = start(paths)
        for i in range(GENERATION_BLOCK + 3):
            attr = ns.mkdir(f"/d{instance}-{i}", 0o755)
            assert not seen or attr.generation > max(seen)
            seen.append(attr.generation)
        crash(ns)
    ns = start(paths)
    assert generations(ns)[1:] == seen  # (the root's first)
    crash(ns)


def test_a_rolled_back_bound_is_written_again(paths: tuple[str, str]) -> None:
    ns = start(paths)
    ns.mkdir("/a", 0o755)  # wrote a bound
    with pytest.raises(Refused), ns._txn():
        # A call that takes generations up to past that bound, then fails:
        # the bound it wrote is rolled back with it.
        for _ in range(GENERATION_BLOCK + 1):
            ns._gen()
        raise Refused
    taken = ns.mkdir("/b", 0o755).generation
    crash(ns)
    ns = start(paths)
    assert ns.mkdir("/c", 0o755).generation > taken
    crash(ns)
