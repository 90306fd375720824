"""The metadata store's row cache never disagrees with SQLite (server/metadata.py).

``Metadata`` answers ``get_inode``, ``lookup``, ``entry_of``, ``parent_of`` and
``allocated_bytes`` from memory when it can. Each test here compares those answers with what a
second, raw SQLite connection reads from the file, after committed and after
rolled-back transactions: a cache that kept a row of a rolled-back
transaction fails them.
"""

from __future__ import annotations

import random
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.server import metadata
from daxfs.server.metadata import ROOT_INO, InodeRow, Metadata
from daxfs.server.volume import format_volume
from daxfs.shared.errors import DaxfsError
from daxfs.shared.extent import Extent, InodeId
from daxfs.shared.format import MIB


class Refused(Exception):
    """What a test raises inside a transaction to have it rolled back."""


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[Metadata]:
    format_volume(str(tmp_path / "region"), str(tmp_path / "meta"), 4 * MIB)
    m = Metadata(str(tmp_path / "meta"))
    try:
        yield m
    finally:
        m.close()


def raw_inode(path: str, ino: int) -> InodeRow | None:
    """The committed row, read by another connection (bypasses the cache)."""
    with sqlite3.connect(path) as db:
        row = db.execute(
            "SELECT ino, generation, mode, uid, gid, nlink, size, atime_ns, mtime_ns, "
            "ctime_ns, target, keep_prealloc FROM inodes WHERE ino=?",
            (ino,),
        ).fetchone()
    db.close()
    return None if row is None else InodeRow(*row[:11], bool(row[11]))


def raw_allocated(path: str, ino: int) -> int:
    with sqlite3.connect(path) as db:
        (held,) = db.execute(
            "SELECT coalesce(sum(length), 0) FROM extents WHERE ino=?", (ino,)
        ).fetchone()
    db.close()
    return int(held)


def raw_dirents(path: str) -> dict[tuple[int, str], int]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT parent, name, ino FROM dirents").fetchall()
    db.close()
    return {(p, n): i for p, n, i in rows}


def assert_exact(m: Metadata, inos: set[int], names: set[tuple[int, str]]) -> None:
    """Every answer ``m`` gives about ``inos`` and ``names`` is what SQLite holds."""
    dirents = raw_dirents(m.path)
    for ino in inos:
        assert m.get_inode(ino) == raw_inode(m.path, ino), f"inode {ino}"
        assert m.allocated_bytes(ino) == raw_allocated(m.path, ino), f"extents of {ino}"
        entries = sorted((p, n) for (p, n), i in dirents.items() if i == ino)
        got = m.entry_of(ino)
        if not entries:
            assert got is None, f"entry of {ino}"
        else:
            assert got in entries, f"entry of {ino}"
            assert m.parent_of(ino) == got[0]
    for key in names:
        assert m.lookup(*key) == dirents.get(key), f"name {key}"


def new_dir(m: Metadata, parent: int, name: str) -> InodeId:
    ino = m.insert_inode(generation=7, mode=stat.S_IFDIR | 0o755, uid=0, gid=0, nlink=2, now_ns=1)
    m.add_dirent(parent, name, ino)
    return ino


def test_a_rolled_back_transaction_leaves_no_row_of_it_in_the_cache(meta: Metadata) -> None:
    with meta.transaction():
        a = new_dir(meta, ROOT_INO, "a")
        f = meta.insert_inode(
            generation=8, mode=stat.S_IFREG | 0o644, uid=1, gid=1, nlink=1, now_ns=2
        )
        meta.add_dirent(a, "f", f)
    names = {(ROOT_INO, "a"), (a, "f"), (a, "g"), (ROOT_INO, "b")}
    inos = {ROOT_INO, a, f}
    assert_exact(meta, inos, names)  # everything cached now
    with meta.transaction():
        meta.add_extent(f, Extent(0, 4096, 1 << 20))
        meta.add_extent(f, Extent(8192, 4096, 2 << 20))
    assert_exact(meta, inos, names)
    with pytest.raises(Refused), meta.transaction():
        meta.add_extent(f, Extent(4096, 4096, 3 << 20))
        meta.delete_extent(f, 0)
        assert meta.allocated_bytes(f) == 8192
        meta.delete_extents(f)
        assert meta.allocated_bytes(f) == 0
        meta.update_inode(f, size=4096, mtime_ns=3)
        meta.update_inode(a, nlink=3)
        meta.update_inode(ROOT_INO, keep_prealloc=1)  # a column the cache drops
        meta.remove_dirent(a, "f")
        meta.add_dirent(a, "g", f)
        b = new_dir(meta, ROOT_INO, "b")
        meta.remove_dirent(ROOT_INO, "a")
        meta.add_dirent(b, "a", a)
        meta.set_dirent(b, "a", f)
        meta.delete_inode(a)
        # Read inside the transaction: these cache its uncommitted state.
        assert meta.get_inode(f) is not None and meta.get_inode(f).size == 4096  # type: ignore[union-attr]
        assert meta.get_inode(ROOT_INO) is not None
        assert meta.lookup(a, "g") == f
        assert meta.entry_of(b) == (ROOT_INO, "b")
        inos.add(b)
        names |= {(b, "a")}
        raise Refused
    assert_exact(meta, inos, names)


def test_a_failed_statement_leaves_the_cache_as_sqlite(meta: Metadata) -> None:
    """A duplicate name is refused by SQLite, and the transaction with it."""
    with meta.transaction():
        a = new_dir(meta, ROOT_INO, "a")
    assert_exact(meta, {a}, {(ROOT_INO, "a")})
    with pytest.raises(DaxfsError, match="UNIQUE"), meta.transaction():
        meta.update_inode(a, nlink=5)
        meta.add_dirent(ROOT_INO, "a", a)
    assert_exact(meta, {a}, {(ROOT_INO, "a")})


def test_random_transactions_keep_the_cache_exact(
    meta: Metadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random changes, a third of them rolled back, and a small cache limit."""
    monkeypatch.setattr(metadata, "CACHE_LIMIT", 8)
    rng = random.Random(16)
    dirs: list[int] = [ROOT_INO]
    inos: set[int] = {ROOT_INO}
    names: set[tuple[int, str]] = set()
    for step in range(300):
        try:
            with meta.transaction():
                for _ in range(rng.randint(1, 5)):
                    parent = rng.choice(dirs)
                    name = f"n{rng.randint(0, 6)}"
                    names.add((parent, name))
                    there = meta.lookup(parent, name)
                    op = rng.random()
                    if there is None and op < 0.4:
                        ino = new_dir(meta, parent, name)
                        dirs.append(ino)
                        inos.add(ino)
                    elif there is not None and op < 0.6:
                        meta.remove_dirent(parent, name)
                    elif there is not None and op < 0.7:
                        meta.set_dirent(parent, name, rng.choice(dirs))
                    elif op < 0.8:
                        meta.update_inode(rng.choice(dirs), nlink=rng.randint(1, 9), size=step)
                    elif op < 0.9:
                        ino = rng.choice(dirs)
                        kind = rng.random()
                        if kind < 0.5:
                            offset = rng.randint(0, 1 << 20) * 4096
                            meta.add_extent(ino, Extent(offset, 4096, (step << 32) + offset))
                        elif kind < 0.8 and (ext := meta.extents(ino)):
                            meta.delete_extent(ino, rng.choice(ext).file_offset)
                        else:
                            meta.delete_extents(ino)
                        meta.allocated_bytes(rng.choice(dirs))
                    else:
                        meta.get_inode(rng.choice(dirs))
                        meta.entry_of(rng.choice(dirs))
                if rng.random() < 0.33:
                    raise Refused
        except (Refused, DaxfsError):  # a refused statement rolls back too
            pass
        assert_exact(meta, inos, names)


def test_a_row_first_read_after_its_change_is_dropped_by_the_rollback(meta: Metadata) -> None:
    """Not cached when changed, cached by a read inside the transaction."""
    with meta.transaction():
        a = new_dir(meta, ROOT_INO, "a")
    meta.drop_cache()
    with pytest.raises(Refused), meta.transaction():
        meta.update_inode(a, nlink=9)
        meta.remove_dirent(ROOT_INO, "a")
        assert meta.get_inode(a).nlink == 9  # type: ignore[union-attr]
        assert meta.lookup(ROOT_INO, "a") is None
        assert meta.entry_of(a) is None
        raise Refused
    assert_exact(meta, {a}, {(ROOT_INO, "a")})


def test_a_rolled_back_extent_leaves_the_bytes_held_as_they_were(meta: Metadata) -> None:
    with meta.transaction():
        f = meta.insert_inode(
            generation=8, mode=stat.S_IFREG | 0o644, uid=1, gid=1, nlink=1, now_ns=2
        )
        meta.add_extent(f, Extent(0, 4096, 1 << 20))
    assert meta.allocated_bytes(f) == 4096  # cached
    for change in ("add", "delete one", "delete all"):
        with pytest.raises(Refused), meta.transaction():
            if change == "add":
                meta.add_extent(f, Extent(4096, 4096, 2 << 20))
            elif change == "delete one":
                meta.delete_extent(f, 0)
            else:
                meta.delete_extents(f)
            meta.allocated_bytes(f)  # cached inside the transaction
            raise Refused
        assert_exact(meta, {f}, set())
