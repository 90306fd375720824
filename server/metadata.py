"""Metadata in SQLite: inodes, directory entries, extents and the free list.

Every change of the namespace is one SQLite transaction (WAL, synchronous=FULL),
so a crash leaves either the old or the new state. The free list is stored, not
derived, so that fsck can check that free + used + quarantined tile the region
exactly: a leaked or doubly used extent is then a detectable inconsistency.

Inode rows and directory entries are also kept in memory, write-through
(:class:`Metadata`, "The row cache"): a path walk reads dicts, not SQLite.
SQLite stays the only record: fsck and a restarted server read it alone.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from daxfs.server import cache_grants
from daxfs.server.cache_grants import Key
from daxfs.shared.errors import DaxfsError, FormatError, NoSpace, VolumeFailed
from daxfs.shared.extent import Extent, InodeId, PhysRange

log = logging.getLogger(__name__)

#: Bump on any incompatible schema change; stored in PRAGMA user_version.
SCHEMA_VERSION = 1
ROOT_INO = InodeId(1)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE inodes (
    ino INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    mode INTEGER NOT NULL,          -- st_mode: type and permission bits
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    size INTEGER NOT NULL,          -- bytes
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    target TEXT,                    -- symlink target, or a device number in decimal
    keep_prealloc INTEGER NOT NULL DEFAULT 0  -- fallocate(KEEP_SIZE) blocks survive close
);
CREATE TABLE dirents (
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX dirents_by_ino ON dirents (ino);
CREATE TABLE extents (
    ino INTEGER NOT NULL,
    file_offset INTEGER NOT NULL,   -- bytes, block aligned
    region_offset INTEGER NOT NULL, -- bytes, block aligned
    length INTEGER NOT NULL,        -- bytes, a multiple of the block size
    PRIMARY KEY (ino, file_offset)
) WITHOUT ROWID;
CREATE UNIQUE INDEX extents_by_region ON extents (region_offset);
CREATE TABLE free_extents (region_offset INTEGER PRIMARY KEY, length INTEGER NOT NULL);
CREATE TABLE quarantine (
    region_offset INTEGER PRIMARY KEY,
    length INTEGER NOT NULL,
    until_ns INTEGER NOT NULL       -- wall clock after which no lease can still reach it
);
CREATE TABLE xattrs (
    ino INTEGER NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
"""


#: SQLite's primary result codes for a metadata file that cannot be trusted any more.
_BROKEN = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def storage_error(path: str, exc: sqlite3.DatabaseError) -> DaxfsError:
    """An SQLite failure as a daxfs error: a full disk is ENOSPC (freeing space cures
    it); an I/O error or corruption fails the volume (``VolumeFailed``); anything else EIO."""
    text = str(exc)
    if "full" in text:
        return NoSpace(f"metadata {path}: the disk holding it is full ({text}); free space there")
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _BROKEN:
        return VolumeFailed(f"its metadata {path} failed: {text}")
    return DaxfsError(f"metadata {path}: {text}")


class Quarantined(NamedTuple):
    """A freed region range no one may reuse before ``until_ns`` (wall clock, ns)."""

    offset: int
    length: int
    until_ns: int


@dataclass(frozen=True, slots=True)
class InodeRow:
    """One row of ``inodes``; times are ns since the epoch, sizes bytes."""

    ino: InodeId
    generation: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    target: str | None
    keep_prealloc: bool


_INODE_COLS = (
    "ino, generation, mode, uid, gid, nlink, size, atime_ns, mtime_ns, ctime_ns, "
    "target, keep_prealloc"
)


def initial_size(mode: int, target: str | None) -> int:
    """The size of a new inode: a symlink's is its target's length in bytes, others' 0.

    A device keeps its rdev in ``target`` (no schema change); its size is 0.
    """
    return len(target.encode()) if target is not None and mode & 0o170000 == 0o120000 else 0


def _inode(row: tuple[object, ...]) -> InodeRow:
    return InodeRow(*row[:11], bool(row[11]))  # type: ignore[arg-type,call-arg]


#: The columns ``update_inode`` may set whose cached value it can compute
#: (integers, stored by SQLite as given); any other drops the cached row.
_INT_COLS = frozenset(
    ("generation", "mode", "uid", "gid", "nlink", "size", "atime_ns", "mtime_ns", "ctime_ns")
)
_ROW_FIELDS = (
    "ino", "generation", "mode", "uid", "gid", "nlink", "size", "atime_ns", "mtime_ns",
    "ctime_ns", "target", "keep_prealloc",
)  # fmt: skip
#: A cached row's values in InodeRow's order, in one C call.
_ROW_VALUES = operator.attrgetter(*_ROW_FIELDS)


def _update_plan(names: tuple[str, ...]) -> tuple[str, bool, tuple[int, ...] | None]:
    """For an update of the columns ``names``: its statement, whether it changes
    the permission attributes, and where the values go in a cached row (None:
    a column the cache does not compute)."""
    sql = f"UPDATE inodes SET {', '.join(f'{k}=?' for k in names)} WHERE ino=?"
    perm = bool({"mode", "uid", "gid"} & set(names))
    positions = (
        tuple(_ROW_FIELDS.index(k) for k in names) if all(k in _INT_COLS for k in names) else None
    )
    return sql, perm, positions


#: update_inode's plans by column names (a few shapes; guarded like the connection).
_UPDATES: dict[tuple[str, ...], tuple[str, bool, tuple[int, ...] | None]] = {}

#: Rows of each kind the cache keeps; past it, it starts again empty (a
#: bound on memory: a miss only costs the SELECT it saved).
CACHE_LIMIT = 1 << 16


class Metadata:
    """The SQLite store. Not thread-safe by itself: the namespace serialises access.

    The row cache. ``get_inode``, ``lookup``, ``entry_of``, ``parent_of`` and
    ``allocated_bytes`` answer from four dicts (``_inodes``, ``_entries``,
    ``_entry_of``, ``_allocated``) when they can, and from SQLite otherwise,
    keeping what it said. The invariant:

        Whatever a dict holds is what the same SELECT through this connection
        would return at that moment, inside an open transaction as well (its
        own uncommitted changes included) as outside one.

    It holds because (1) this class is the only writer of ``inodes``,
    ``dirents`` and ``extents`` (through this connection: the volume lock keeps other
    processes out, and fsck opens its own ``Metadata``); (2) every method that
    writes a row updates or drops the cached copy of it once SQLite took the
    statement, and records the key in ``_undo`` while a transaction is open;
    (3) when a transaction ends in ROLLBACK (a refused call, a failed COMMIT,
    SQLite's own rollback on a full disk) every key in ``_undo`` is dropped,
    so rows changed by the rolled-back transaction are read from SQLite
    again. A row only *read* inside a transaction is either one it changed
    (its key is in ``_undo``) or one it did not (the committed value). A
    dropped key is always safe: the next read asks SQLite. ``entry_of`` of a
    non-directory with several links may keep another of its names than
    SQLite's LIMIT 1 would pick; it is only asked about directories, which
    have one. Each dict starts again empty past :data:`CACHE_LIMIT` rows.
    ``tests/test_metadata_rows.py`` checks the cache against SQLite.
    """

    def __init__(self, path: str, *, scratch: bool = False) -> None:
        """``scratch``: a throwaway volume only this connection opens (the protocol
        simulation): an exclusive lock until :meth:`close` (the WAL index lives in
        the heap) and no fsyncs (``synchronous=OFF``). A crash of the process loses
        nothing; a crash of the machine may lose the last changes."""
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._depth = 0  # guarded by self._lock: nesting of transaction()
        #: What the open transaction changed, as cache-grant keys (see
        #: daxfs.server.cache_grants); the namespace takes it after the commit.
        self.touched: set[Key] = set()
        # The row cache (see the class docstring); guarded like the connection.
        self._inodes: dict[int, InodeRow] = {}
        self._entries: dict[tuple[int, str], InodeId | None] = {}  # None: no such name
        self._entry_of: dict[int, tuple[InodeId, str]] = {}
        self._allocated: dict[int, int] = {}  # bytes of extents, by inode
        #: Cache keys written by the open transaction: dropped if it rolls back.
        self._undo: list[tuple[dict[Any, Any], Any]] = []
        try:
            if scratch:
                self._conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={'OFF' if scratch else 'FULL'}")
            self._conn.execute("PRAGMA busy_timeout=5000")
            # Checkpoint every 256 pages (1 MiB) instead of 1000: metadata changes
            # are small, and a short WAL keeps a nearly full disk usable.
            self._conn.execute("PRAGMA wal_autocheckpoint=256")
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise FormatError(f"{path}: not a daxfs metadata file ({exc})") from None

    # -- lifecycle -----------------------------------------------------------

    @property
    def depth(self) -> int:
        """Nesting of open transaction() blocks (0: none)."""
        return self._depth

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def is_empty(self) -> bool:
        row = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return int(row[0]) == 0

    def create_schema(self, values: dict[str, str]) -> None:
        with self.transaction():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)
            self._conn.executemany("INSERT INTO meta VALUES (?, ?)", values.items())
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def check_schema(self) -> None:
        version = self.schema_version
        if version != SCHEMA_VERSION:
            raise FormatError(
                f"{self.path}: metadata schema version {version}, this daxfs needs {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self._conn.close()

    @property
    def changes(self) -> int:
        """Rows changed through this connection so far: a cheap "did anything change"."""
        return self._conn.total_changes

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic change; nested uses join the outer transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise storage_error(self.path, exc) from None
            self._depth = 1
            self.touched = set()
            self._undo = []
            try:
                yield
                self._conn.execute("COMMIT")
                self._undo = []
            except BaseException as exc:
                self.touched = set()
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.DatabaseError:
                    pass  # SQLite rolled back by itself (e.g. on a full disk)
                self._forget_undone()
                if isinstance(exc, sqlite3.DatabaseError):
                    self._checkpoint()
                    raise storage_error(self.path, exc) from None
                raise
            finally:
                self._depth = 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Reads outside :meth:`transaction`, with SQLite's failures as daxfs errors."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise storage_error(self.path, exc) from None

    def _forget_undone(self) -> None:
        """After a ROLLBACK: drop every cached row the transaction wrote."""
        undo, self._undo = self._undo, []
        for cache, key in undo:
            cache.pop(key, None)

    def _written(self, cache: dict[Any, Any], key: Any) -> None:
        """``key`` of ``cache`` was just written: remember it for a rollback."""
        if self._depth:
            self._undo.append((cache, key))

    def drop_cache(self) -> None:
        """Forget every cached row (they are read from SQLite again)."""
        self._inodes.clear()
        self._entries.clear()
        self._entry_of.clear()
        self._allocated.clear()

    def _checkpoint(self) -> None:
        """Best effort after a storage error: fold the WAL back so its space can be reused."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError:
            pass

    # -- meta ----------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- inodes --------------------------------------------------------------

    def get_inode(self, ino: int) -> InodeRow | None:
        cached = self._inodes.get(ino)
        if cached is not None:
            return cached
        row = self._conn.execute(f"SELECT {_INODE_COLS} FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None:
            return None
        found = _inode(row)
        self._keep(self._inodes, ino, found)
        return found

    @staticmethod
    def _keep(cache: dict[Any, Any], key: Any, value: Any) -> None:
        """Cache what SQLite just said (a read needs no undo: see the class docstring)."""
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[key] = value

    def insert_inode(
        self,
        *,
        generation: int,
        mode: int,
        uid: int,
        gid: int,
        nlink: int,
        now_ns: int,
        target: str | None = None,
        ino: int | None = None,
    ) -> InodeId:
        size = initial_size(mode, target)
        cur = self._conn.execute(
            "INSERT INTO inodes (ino, generation, mode, uid, gid, nlink, size, atime_ns, "
            "mtime_ns, ctime_ns, target) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (ino, generation, mode, uid, gid, nlink, size, now_ns, now_ns, now_ns, target),
        )
        assert cur.lastrowid is not None
        new = InodeId(cur.lastrowid)
        self._keep(
            self._inodes,
            new,
            InodeRow(
                new, generation, mode, uid, gid, nlink, size, now_ns, now_ns, now_ns, target, False
            ),
        )
        self._written(self._inodes, new)
        return new

    def update_inode(self, ino: int, **fields: object) -> None:
        names = tuple(fields)
        plan = _UPDATES.get(names)
        if plan is None:
            plan = _UPDATES[names] = _update_plan(names)
        sql, perm, positions = plan
        self.touched.add(cache_grants.Attr(InodeId(ino)))
        if perm:
            self.touched.add(cache_grants.Perm(InodeId(ino)))
        values = fields.values()
        self._conn.execute(sql, (*values, ino))
        # Noted even when not cached: a read later in this transaction caches
        # the uncommitted row, which a rollback must drop.
        self._written(self._inodes, ino)
        row = self._inodes.get(ino)
        if row is None:
            return
        if positions is not None:
            new = list(_ROW_VALUES(row))
            for at, value in zip(positions, values, strict=True):
                if type(value) is not int:
                    break
                new[at] = value
            else:
                self._inodes[ino] = InodeRow(*new)
                return
        del self._inodes[ino]  # e.g. keep_prealloc: read back as SQLite stores it

    def delete_inode(self, ino: int) -> None:
        self.touched.add(cache_grants.Attr(InodeId(ino)))
        self.touched.add(cache_grants.Xattrs(InodeId(ino)))
        self._conn.execute("DELETE FROM inodes WHERE ino=?", (ino,))
        self._conn.execute("DELETE FROM xattrs WHERE ino=?", (ino,))
        self._inodes.pop(ino, None)
        self._written(self._inodes, ino)

    def orphans(self) -> list[InodeId]:
        """Inodes with no directory entry left (unlinked while open before a restart)."""
        rows = self._conn.execute("SELECT ino FROM inodes WHERE nlink=0").fetchall()
        return [InodeId(r[0]) for r in rows]

    def all_inodes(self) -> list[InodeRow]:
        rows = self._conn.execute(f"SELECT {_INODE_COLS} FROM inodes").fetchall()
        return [_inode(r) for r in rows]

    def count_inodes(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM inodes").fetchone()[0])

    # -- directory entries ---------------------------------------------------

    def lookup(self, parent: int, name: str) -> InodeId | None:
        key = (parent, name)
        try:
            return self._entries[key]
        except KeyError:
            pass
        row = self._conn.execute(
            "SELECT ino FROM dirents WHERE parent=? AND name=?", (parent, name)
        ).fetchone()
        found = None if row is None else InodeId(row[0])
        self._keep(self._entries, key, found)
        return found

    def _set_entry(self, parent: int, name: str, ino: int | None, old: int | None) -> None:
        """The cache after (parent, name) went from naming ``old`` to naming ``ino``."""
        key = (parent, name)
        self._keep(self._entries, key, None if ino is None else InodeId(ino))
        self._written(self._entries, key)
        for moved in (old, ino):
            if moved is not None:
                self._entry_of.pop(moved, None)
                self._written(self._entry_of, moved)

    def add_dirent(self, parent: int, name: str, ino: int) -> None:
        self.touched.add(cache_grants.Entry(InodeId(parent), name))
        self._conn.execute("INSERT INTO dirents VALUES (?, ?, ?)", (parent, name, ino))
        self._set_entry(parent, name, ino, None)

    def set_dirent(self, parent: int, name: str, ino: int) -> None:
        self.touched.add(cache_grants.Entry(InodeId(parent), name))
        old = self.lookup(parent, name)
        self._conn.execute(
            "UPDATE dirents SET ino=? WHERE parent=? AND name=?", (ino, parent, name)
        )
        self._set_entry(parent, name, ino if old is not None else None, old)

    def remove_dirent(self, parent: int, name: str) -> None:
        self.touched.add(cache_grants.Entry(InodeId(parent), name))
        old = self.lookup(parent, name)
        self._conn.execute("DELETE FROM dirents WHERE parent=? AND name=?", (parent, name))
        self._set_entry(parent, name, None, old)

    def list_dir(self, parent: int) -> list[tuple[str, InodeId]]:
        rows = self._conn.execute(
            "SELECT name, ino FROM dirents WHERE parent=? ORDER BY name", (parent,)
        ).fetchall()
        return [(str(n), InodeId(i)) for n, i in rows]

    def has_children(self, parent: int) -> bool:
        row = self._conn.execute("SELECT 1 FROM dirents WHERE parent=? LIMIT 1", (parent,))
        return row.fetchone() is not None

    def parent_of(self, ino: int) -> InodeId | None:
        """The directory holding a directory inode (directories have one entry)."""
        entry = self.entry_of(ino)
        return None if entry is None else entry[0]

    def entry_of(self, ino: int) -> tuple[InodeId, str] | None:
        """(parent, name) of a directory inode's one entry; None for the root or a removed one."""
        cached = self._entry_of.get(ino)
        if cached is not None:
            return cached
        row = self._conn.execute("SELECT parent, name FROM dirents WHERE ino=? LIMIT 1", (ino,))
        found = row.fetchone()
        if found is None:
            return None
        entry = (InodeId(found[0]), str(found[1]))
        self._keep(self._entry_of, ino, entry)
        return entry

    def all_dirents(self) -> list[tuple[InodeId, str, InodeId]]:
        rows = self._conn.execute("SELECT parent, name, ino FROM dirents").fetchall()
        return [(InodeId(p), str(n), InodeId(i)) for p, n, i in rows]

    # -- extents -------------------------------------------------------------

    def extents(self, ino: int) -> list[Extent]:
        rows = self._conn.execute(
            "SELECT file_offset, length, region_offset FROM extents WHERE ino=? "
            "ORDER BY file_offset",
            (ino,),
        ).fetchall()
        return [Extent(f, n, r) for f, n, r in rows]

    def extents_in(self, ino: int, start: int, end: int) -> list[Extent]:
        """Extents overlapping file range [start, end), by index (files may hold thousands)."""
        rows = self._conn.execute(
            "SELECT file_offset, length, region_offset FROM extents WHERE ino=? AND file_offset<? "
            "AND file_offset >= coalesce((SELECT file_offset FROM extents WHERE ino=? AND "
            "file_offset<=? ORDER BY file_offset DESC LIMIT 1), 0) ORDER BY file_offset",
            (ino, end, ino, start),
        ).fetchall()
        return [Extent(f, n, r) for f, n, r in rows if f + n > start]

    def extent_before(self, ino: int, file_offset: int) -> Extent | None:
        """The last extent starting before ``file_offset``."""
        row = self._conn.execute(
            "SELECT file_offset, length, region_offset FROM extents WHERE ino=? AND file_offset<? "
            "ORDER BY file_offset DESC LIMIT 1",
            (ino, file_offset),
        ).fetchone()
        return None if row is None else Extent(row[0], row[1], row[2])

    def extent_summary(self, ino: int) -> tuple[int, int]:
        """(end of the last extent, bytes held) of a file."""
        row = self._conn.execute(
            "SELECT coalesce(max(file_offset + length), 0), coalesce(sum(length), 0) "
            "FROM extents WHERE ino=?",
            (ino,),
        ).fetchone()
        return int(row[0]), int(row[1])

    def add_extent(self, ino: int, ext: Extent) -> None:
        self.touched.add(cache_grants.Attr(InodeId(ino)))  # st_blocks
        self._conn.execute(
            "INSERT INTO extents VALUES (?, ?, ?, ?)",
            (ino, ext.file_offset, ext.region_offset, ext.length),
        )
        self._written(self._allocated, ino)
        held = self._allocated.get(ino)
        if held is not None:
            self._allocated[ino] = held + ext.length

    def delete_extent(self, ino: int, file_offset: int) -> None:
        self.touched.add(cache_grants.Attr(InodeId(ino)))
        self._conn.execute("DELETE FROM extents WHERE ino=? AND file_offset=?", (ino, file_offset))
        self._written(self._allocated, ino)
        self._allocated.pop(ino, None)  # (its length is not known here)

    def delete_extents(self, ino: int) -> None:
        self.touched.add(cache_grants.Attr(InodeId(ino)))
        self._conn.execute("DELETE FROM extents WHERE ino=?", (ino,))
        self._written(self._allocated, ino)
        self._keep(self._allocated, ino, 0)

    def all_extents(self) -> list[tuple[InodeId, Extent]]:
        rows = self._conn.execute(
            "SELECT ino, file_offset, length, region_offset FROM extents"
        ).fetchall()
        return [(InodeId(i), Extent(f, n, r)) for i, f, n, r in rows]

    def allocated_bytes(self, ino: int) -> int:
        held = self._allocated.get(ino)
        if held is not None:
            return held
        row = self._conn.execute("SELECT coalesce(sum(length), 0) FROM extents WHERE ino=?", (ino,))
        found = int(row.fetchone()[0])
        self._keep(self._allocated, ino, found)
        return found

    # -- free list and quarantine -------------------------------------------

    def free_extents(self) -> list[PhysRange]:
        rows = self._conn.execute(
            "SELECT region_offset, length FROM free_extents ORDER BY region_offset"
        ).fetchall()
        return [PhysRange(int(o), int(n)) for o, n in rows]

    def add_free(self, offset: int, length: int) -> None:
        self._conn.execute("INSERT INTO free_extents VALUES (?, ?)", (offset, length))

    def remove_free(self, offset: int) -> None:
        self._conn.execute("DELETE FROM free_extents WHERE region_offset=?", (offset,))

    def quarantined(self) -> list[Quarantined]:
        rows = self._conn.execute(
            "SELECT region_offset, length, until_ns FROM quarantine ORDER BY region_offset"
        ).fetchall()
        return [Quarantined(int(o), int(n), int(u)) for o, n, u in rows]

    def quarantined_length(self, offset: int) -> int | None:
        row = self._conn.execute(
            "SELECT length FROM quarantine WHERE region_offset=?", (offset,)
        ).fetchone()
        return None if row is None else int(row[0])

    def add_quarantine(self, offset: int, length: int, until_ns: int) -> None:
        self._conn.execute("INSERT INTO quarantine VALUES (?, ?, ?)", (offset, length, until_ns))

    def remove_quarantine(self, offset: int) -> None:
        self._conn.execute("DELETE FROM quarantine WHERE region_offset=?", (offset,))

    # -- extended attributes -------------------------------------------------

    def get_xattr(self, ino: int, name: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT value FROM xattrs WHERE ino=? AND name=?", (ino, name)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def set_xattr(self, ino: int, name: str, value: bytes) -> None:
        self.touched.add(cache_grants.Xattrs(InodeId(ino)))
        self._conn.execute("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)", (ino, name, value))

    def remove_xattr(self, ino: int, name: str) -> bool:
        self.touched.add(cache_grants.Xattrs(InodeId(ino)))
        cur = self._conn.execute("DELETE FROM xattrs WHERE ino=? AND name=?", (ino, name))
        return cur.rowcount > 0

    def list_xattrs(self, ino: int) -> list[str]:
        rows = self._conn.execute("SELECT name FROM xattrs WHERE ino=? ORDER BY name", (ino,))
        return [str(r[0]) for r in rows.fetchall()]

    def xattr_names_in(self, parent: int) -> dict[int, list[str]]:
        """The extended attribute names of every inode named in directory ``parent``."""
        rows = self._conn.execute(
            "SELECT x.ino, x.name FROM xattrs x JOIN dirents d ON d.ino = x.ino"
            " WHERE d.parent=? ORDER BY x.name",
            (parent,),
        )
        out: dict[int, list[str]] = {}
        for ino, name in rows.fetchall():
            out.setdefault(int(ino), []).append(str(name))
        return out
