"""fsck: one specific corruption per test, detected with a clear message, then repaired.

Each test builds a small real volume through the namespace, corrupts one thing
directly in the SQLite metadata or in the region (never through daxfs code),
asserts that ``fsck`` names it, runs ``fsck(repair=True)``, and asserts that
the volume is then clean, opens, and still holds the data that was safe.
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daxfs.cli import main
from daxfs.server.fsck import FsckReport, check_open, fsck
from daxfs.server.metadata import Metadata
from daxfs.server.namespace import Caller
from daxfs.server.volume import close_volume, format_volume, open_volume
from daxfs.shared.format import MIB, SUPERBLOCK_SIZE
from daxfs.shared.region import read_superblock
from daxfs.testing import Volume

BS = 4096
SIZE = 16 * MIB


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


F_DATA = pattern(3 * BS, 1)
G_DATA = pattern(2 * BS, 2)


@pytest.fixture
def vol(workdir: Path) -> Volume:
    return _populated(Volume.create(workdir, size=SIZE))


def _populated(v: Volume) -> Volume:
    """/d/f (3 blocks, also linked as /h), /g (2 blocks), /s -> /g, /e (empty dir)."""
    ns = open_volume(v.region, v.meta)
    me = Caller(client=ns.hello().id)  # open files need a session
    try:
        ns.mkdir("/d", 0o755)
        ns.mkdir("/e", 0o755)
        for path, data in (("/d/f", F_DATA), ("/g", G_DATA)):
            opened = ns.create(path, 0o644, me)
            ns.write(opened.handle, 0, data, me)
            ns.release(opened.handle, me)
        ns.link("/d/f", "/h")
        ns.symlink("/g", "/s")
    finally:
        close_volume(ns)
    assert fsck(v.region, v.meta).clean
    return v


def sql(v: Volume, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """Run one statement on the metadata file behind daxfs's back."""
    with sqlite3.connect(v.meta) as db:
        return db.execute(statement, params).fetchall()


def ino(v: Volume, name: str) -> int:
    (row,) = sql(v, "SELECT ino FROM dirents WHERE name=?", name)
    return int(row[0])


def extents(v: Volume, name: str) -> list[tuple[int, int, int]]:
    """(file offset, region offset, length) of a file's extents."""
    rows = sql(
        v,
        "SELECT file_offset, region_offset, length FROM extents WHERE ino=? ORDER BY file_offset",
        ino(v, name),
    )
    return [(int(f), int(r), int(n)) for f, r, n in rows]


def read(v: Volume, path: str) -> bytes:
    ns = open_volume(v.region, v.meta)
    me = Caller(client=ns.hello().id)
    try:
        opened = ns.open(path, me)
        try:
            return ns.read(opened.handle, 0, 1 << 20, me)
        finally:
            ns.release(opened.handle, me)
    finally:
        close_volume(ns)


def detect(v: Volume, *fragments: str) -> FsckReport:
    report = fsck(v.region, v.meta)
    assert not report.clean
    text = "\n".join(report.problems)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert report.found == report.problems
    return report


def repair(v: Volume, *fragments: str) -> FsckReport:
    report = fsck(v.region, v.meta, repair=True)
    text = "\n".join(report.repairs)
    assert report.clean, "left after repair:\n" + "\n".join(report.problems) + "\n" + text
    assert report.found, "repair found nothing to repair"
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    again = fsck(v.region, v.meta)
    assert again.clean, "\n".join(again.problems)
    assert not again.repairs
    return report


# -- space ----------------------------------------------------------------------


def test_a_check_of_metadata_held_open_finds_what_fsck_finds(vol: Volume) -> None:
    meta = Metadata(vol.meta)
    try:
        assert check_open(vol.region, meta).clean
        sql(vol, "DELETE FROM free_extents")
        found = fsck(vol.region, vol.meta).problems
        assert found
        assert check_open(vol.region, meta).problems == found
    finally:
        meta.close()


def test_leaked_extent_returns_to_the_free_list(vol: Volume) -> None:
    sql(vol, "UPDATE free_extents SET length = length - ?", BS)
    detect(vol, "space accounting", "+4096 bytes leaked")
    repair(vol, "4096 leaked bytes returned")
    assert read(vol, "/d/f") == F_DATA and read(vol, "/g") == G_DATA


def test_uncoalesced_free_list_is_rebuilt(vol: Volume) -> None:
    ((off, n),) = sql(vol, "SELECT region_offset, length FROM free_extents")
    sql(vol, "UPDATE free_extents SET length = ? WHERE region_offset = ?", BS, off)
    sql(vol, "INSERT INTO free_extents VALUES (?, ?)", off + BS, n - BS)
    detect(vol, "not coalesced")
    repair(vol, "rebuilt the free list from the blocks in use (2 -> 1 extents)")


def test_double_allocated_extent_is_copied_so_both_files_keep_their_bytes(vol: Volume) -> None:
    ((_, f_region, _),) = extents(vol, "f")
    # /g's blocks now start one block into /d/f's: two files share region blocks
    # (g's old blocks leak). g shows f's bytes from then on; f is intact.
    sql(vol, "UPDATE extents SET region_offset = ? WHERE ino = ?", f_region + BS, ino(vol, "g"))
    shown = read(vol, "/g")
    assert shown == F_DATA[BS : 3 * BS]
    detect(vol, "overlap: inode")
    # The copy lands in the first free blocks: here g's own leaked ones.
    repair(vol, "shared blocks with another file; copied to [")
    assert read(vol, "/g") == shown and read(vol, "/d/f") == F_DATA
    # They no longer share: a write to one leaves the other alone.
    ns = open_volume(vol.region, vol.meta)
    me = Caller(client=ns.hello().id)
    try:
        opened = ns.open("/g", me, writable=True)
        ns.write(opened.handle, 0, b"\xff" * BS, me)
        ns.release(opened.handle, me)
    finally:
        close_volume(ns)
    assert read(vol, "/d/f") == F_DATA
    assert fsck(vol.region, vol.meta).clean


def test_double_allocation_without_space_for_a_copy_drops_the_later_claim(vol: Volume) -> None:
    ns = open_volume(vol.region, vol.meta)
    me = Caller(client=ns.hello().id)
    try:
        opened = ns.create("/big", 0o644, me)
        ns.fallocate(opened.handle, 0, ns.allocator.free_bytes, me)  # the region is full
        ns.release(opened.handle, me)
    finally:
        close_volume(ns)
    ((_, f_region, _),) = extents(vol, "f")
    ((_, g_region, g_length),) = extents(vol, "g")
    sql(vol, "UPDATE extents SET region_offset = ? WHERE ino = ?", f_region + BS, ino(vol, "g"))
    # g's own blocks are parked in quarantine, so no block is left for a copy.
    sql(vol, "INSERT INTO quarantine VALUES (?, ?, 0)", g_region, g_length)
    detect(vol, "overlap: inode")
    repair(vol, "(its blocks belong to another file; no free space to copy it)")
    assert extents(vol, "g") == []
    assert read(vol, "/d/f") == F_DATA and read(vol, "/g") == bytes(2 * BS)


def test_file_extent_overlapping_the_free_list_wins(vol: Volume) -> None:
    free_start = max(int(r[0]) for r in sql(vol, "SELECT region_offset FROM free_extents"))
    sql(vol, "UPDATE extents SET region_offset = ? WHERE ino = ?", free_start, ino(vol, "g"))
    detect(vol, "overlap: inode", "and free extent")
    repair(vol, "8192 bytes in use removed from it")
    assert extents(vol, "g") == [(0, free_start, 2 * BS)]
    assert read(vol, "/g") == bytes(2 * BS)  # what those blocks hold; nothing else to recover


@pytest.mark.parametrize(
    ("shift", "message"),
    [(SIZE, "lies outside the data area"), (100, "is not whole aligned blocks")],
)
def test_extent_outside_the_region_or_unaligned_is_dropped(
    vol: Volume, shift: int, message: str
) -> None:
    ((_, region_offset, _),) = extents(vol, "g")
    sql(
        vol,
        "UPDATE extents SET region_offset = ? WHERE ino = ?",
        region_offset + shift,
        ino(vol, "g"),
    )
    detect(vol, message)
    repair(vol, "dropped extent", "file bytes [0, 8192) now read as zeros", "leaked bytes returned")
    assert extents(vol, "g") == []
    assert read(vol, "/g") == bytes(2 * BS)  # the size stays; the range is a hole now
    assert read(vol, "/d/f") == F_DATA


def test_extents_of_a_missing_inode_are_freed(vol: Volume) -> None:
    g = ino(vol, "g")
    sql(vol, "DELETE FROM inodes WHERE ino = ?", g)
    detect(vol, f"points to missing inode {g}", f"belong to inode {g}, which does not exist")
    repair(vol, f"removed entry 'g' in directory 1: inode {g} does not exist", "missing inode")
    assert sql(vol, "SELECT count(*) FROM extents WHERE ino = ?", g) == [(0,)]


# -- tree -----------------------------------------------------------------------


def test_unreachable_file_goes_to_lost_found(vol: Volume) -> None:
    g = ino(vol, "g")
    sql(vol, "DELETE FROM dirents WHERE name = 'g'")
    detect(vol, f"inode {g} (nlink 1) is not reachable from the root")
    repair(vol, "created /lost+found", f"linked as /lost+found/#{g}")
    assert read(vol, f"/lost+found/#{g}") == G_DATA


def test_unreachable_directory_moves_with_its_contents(vol: Volume) -> None:
    d = ino(vol, "d")
    sql(vol, "DELETE FROM dirents WHERE name = 'd'")
    detect(vol, f"inode {d} (nlink 2) is not reachable", "inode 1: link count 4, counted 3")
    # An existing /lost+found is reused: no new one is made.
    sql(vol, "INSERT INTO dirents VALUES (1, 'lost+found', ?)", ino(vol, "e"))
    sql(vol, "DELETE FROM dirents WHERE name = 'e'")
    report = repair(vol, f"linked as /lost+found/#{d}")
    assert not any("created" in line for line in report.repairs)
    assert read(vol, f"/lost+found/#{d}/f") == F_DATA


def test_a_file_named_lost_found_keeps_its_name(vol: Volume) -> None:
    d = ino(vol, "d")
    sql(vol, "UPDATE dirents SET name = 'lost+found' WHERE name = 'g'")
    sql(vol, "DELETE FROM dirents WHERE name = 'd'")
    detect(vol, f"inode {d} (nlink 2) is not reachable")
    repair(vol, "created /lost+found.1", f"linked as /lost+found.1/#{d}")
    assert read(vol, "/lost+found") == G_DATA
    assert read(vol, f"/lost+found.1/#{d}/f") == F_DATA


def test_directory_cycle_is_broken_into_lost_found(vol: Volume) -> None:
    d, e = ino(vol, "d"), ino(vol, "e")
    # /d and /e each hold the other and neither hangs below the root any more.
    sql(vol, "DELETE FROM dirents WHERE name IN ('d', 'e')")
    sql(vol, "INSERT INTO dirents VALUES (?, 'e2', ?)", d, e)
    sql(vol, "INSERT INTO dirents VALUES (?, 'd2', ?)", e, d)
    detect(vol, f"inode {d} (nlink 2) is not reachable", f"inode {e} (nlink 2) is not reachable")
    repair(vol, f"linked as /lost+found/#{d}")
    assert read(vol, f"/lost+found/#{d}/f") == F_DATA


def test_dangling_entry_is_removed(vol: Volume) -> None:
    sql(vol, "INSERT INTO dirents VALUES (1, 'ghost', 999)")
    detect(vol, "entry 'ghost' in directory 1 points to missing inode 999")
    repair(vol, "removed entry 'ghost' in directory 1: inode 999 does not exist")


def test_wrong_link_count_is_recomputed(vol: Volume) -> None:
    f, g = ino(vol, "h"), ino(vol, "g")
    sql(vol, "UPDATE inodes SET nlink = 5 WHERE ino = ?", g)
    sql(vol, "UPDATE inodes SET nlink = 1 WHERE ino = ?", f)
    detect(vol, f"inode {g}: link count 5, counted 1", f"inode {f}: link count 1, counted 2")
    repair(vol, f"inode {g}: link count 5 set to 1", f"inode {f}: link count 1 set to 2")


# -- not repairable -------------------------------------------------------------


def _files(v: Volume) -> tuple[bytes, bytes]:
    return Path(v.region).read_bytes(), Path(v.meta).read_bytes()


# -- the superblock ---------------------------------------------------------------


def _overwrite(v: Volume, offset: int, data: bytes) -> None:
    with open(v.region, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _uuid_of(v: Volume) -> str:
    return read_superblock(v.region).uuid_str


def test_garbage_over_the_superblock_is_rewritten_from_the_metadata(
    vol: Volume, capsys: pytest.CaptureFixture[str]
) -> None:
    uuid = _uuid_of(vol)
    _overwrite(vol, 0, bytes((i * 37 + 11) & 0xFF for i in range(SUPERBLOCK_SIZE)))
    detect(vol, "bad magic", f"the metadata records this region ({uuid})", "fsck --repair")
    assert main(["fsck", "--repair", "--region", vol.region, "--meta", vol.meta]) == 0
    out = capsys.readouterr().out
    assert "REPAIRED: rewrote the superblock" in out and "clean after repair" in out
    assert _uuid_of(vol) == uuid
    assert fsck(vol.region, vol.meta).clean
    assert read(vol, "/d/f") == F_DATA and read(vol, "/g") == G_DATA


def test_a_superblock_checksum_mismatch_is_rewritten(vol: Volume) -> None:
    _overwrite(vol, 56, b"\x01")  # created_ns: covered by the CRC, changed without fixing it
    detect(vol, "superblock checksum mismatch", "fsck --repair")
    repair(vol, "rewrote the superblock")
    assert read(vol, "/d/f") == F_DATA


def _refused(v: Volume, *fragments: str) -> None:
    """The superblock damage is reported, a repair changes nothing, and says why."""
    before = _files(v)
    for report in (fsck(v.region, v.meta), fsck(v.region, v.meta, repair=True)):
        assert not report.clean and not report.repairs
        text = "\n".join(report.problems)
        for fragment in ("cannot vouch for this region", *fragments):
            assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert "not repairable by fsck" in text
    assert _files(v) == before


def test_a_damaged_superblock_of_another_size_is_not_rewritten(vol: Volume) -> None:
    _overwrite(vol, 0, b"\0" * SUPERBLOCK_SIZE)
    with open(vol.region, "ab") as f:
        f.write(b"\0" * BS)
    _refused(vol, f"the region has {SIZE + BS} bytes, the metadata records {SIZE}")


def test_a_superblock_naming_another_region_is_not_rewritten(vol: Volume) -> None:
    _overwrite(vol, 16, bytes(range(16)))  # the UUID, the header's magic intact
    _refused(vol, "header is intact and names region 00010203-")


def test_a_region_with_data_in_block_0_is_not_paired_with_the_metadata(vol: Volume) -> None:
    _overwrite(vol, 0, b"\xff" * BS)  # not a daxfs region's first block at all
    _refused(vol, "block 0 holds data past the superblock")


def test_a_future_version_is_not_rewritten(vol: Volume) -> None:
    sb = read_superblock(vol.region)
    _overwrite(vol, 0, dataclasses.replace(sb, major=sb.major + 1).pack())
    report = fsck(vol.region, vol.meta, repair=True)
    assert not report.repairs and "is not supported" in report.problems[0]
    assert "not repairable by fsck" in report.problems[0]


def test_metadata_of_another_region_is_reported_and_not_repaired(
    vol: Volume, workdir: Path
) -> None:
    other = str(workdir / "other")
    format_volume(other, other + ".meta", SIZE)
    report = fsck(vol.region, other + ".meta")
    assert not report.clean and "belongs to region" in report.problems[0]
    before = _files(vol)
    report = fsck(vol.region, other + ".meta", repair=True)
    assert not report.repairs and "not repairable by fsck" in report.problems[0]
    assert _files(vol) == before


# -- the command ----------------------------------------------------------------


def test_cli_repair_says_what_it_did(vol: Volume, capsys: pytest.CaptureFixture[str]) -> None:
    sql(vol, "UPDATE free_extents SET length = length - ?", BS)
    sql(vol, "DELETE FROM dirents WHERE name = 'g'")
    args = ["fsck", "--region", vol.region, "--meta", vol.meta]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "PROBLEM: space accounting" in out and "--repair" in out
    assert main([*args, "--repair"]) == 0
    out = capsys.readouterr().out
    assert "REPAIRED: rebuilt the free list" in out
    assert "REPAIRED: created /lost+found" in out
    assert "clean after repair" in out
    assert main(args) == 0
    assert "clean:" in capsys.readouterr().out


# -- any mix of corruptions -----------------------------------------------------


def _corruptions(v: Volume) -> dict[str, list[tuple[str, tuple[object, ...]]]]:
    """SQL for each kind of damage, with inode numbers and offsets taken up front."""
    d, e, g, s = (ino(v, n) for n in ("d", "e", "g", "s"))
    ((_, f_region, _),) = extents(v, "f")
    ((_, g_region, _),) = extents(v, "g")
    free_start = max(int(r[0]) for r in sql(v, "SELECT region_offset FROM free_extents"))
    upd_g = "UPDATE extents SET region_offset = ? WHERE ino = ?"
    return {
        "leak": [("UPDATE free_extents SET length = length - ?", (BS,))],
        "double": [(upd_g, (f_region + BS, g))],
        "free-overlap": [(upd_g, (free_start, g))],
        "outside": [(upd_g, (g_region + SIZE, g))],
        "unaligned": [(upd_g, (g_region + 100, g))],
        "missing-inode": [("DELETE FROM inodes WHERE ino = ?", (g,))],
        "unreachable-file": [("DELETE FROM dirents WHERE ino = ?", (g,))],
        "unreachable-dir": [("DELETE FROM dirents WHERE ino = ?", (d,))],
        "cycle": [
            ("DELETE FROM dirents WHERE ino IN (?, ?)", (d, e)),
            ("INSERT OR IGNORE INTO dirents VALUES (?, 'e2', ?)", (d, e)),
            ("INSERT OR IGNORE INTO dirents VALUES (?, 'd2', ?)", (e, d)),
        ],
        "second-dir-entry": [("INSERT OR IGNORE INTO dirents VALUES (?, 'again', ?)", (e, d))],
        "dangling": [("INSERT OR IGNORE INTO dirents VALUES (1, 'ghost', 999)", ())],
        "nlink": [("UPDATE inodes SET nlink = nlink + 3", ())],
        "symlink-extent": [
            ("INSERT OR IGNORE INTO extents VALUES (?, 0, ?, ?)", (s, free_start + 8 * BS, BS)),
        ],
    }


_KINDS = (
    "leak",
    "double",
    "free-overlap",
    "outside",
    "unaligned",
    "missing-inode",
    "unreachable-file",
    "unreachable-dir",
    "cycle",
    "second-dir-entry",
    "dangling",
    "nlink",
    "symlink-extent",
)


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(kinds=st.lists(st.sampled_from(_KINDS), min_size=1, max_size=4, unique=True))
def test_any_mix_of_corruptions_repairs_to_clean(kinds: list[str]) -> None:
    """Repair converges: one pass leaves a clean volume that opens; a second does nothing."""
    d = Path(tempfile.mkdtemp(prefix="daxfs-fsck-", dir="/dev/shm"))
    try:
        v = _populated(Volume.create(d, size=SIZE))
        damage = _corruptions(v)
        for kind in kinds:
            for statement, params in damage[kind]:
                sql(v, statement, *params)
        report = fsck(v.region, v.meta, repair=True)
        assert report.clean, "\n".join([*report.problems, "--", *report.repairs])
        again = fsck(v.region, v.meta, repair=True)
        assert again.clean and not again.repairs and not again.found
        ns = open_volume(v.region, v.meta)
        try:
            ns.readdir("/")
        finally:
            close_volume(ns)
    finally:
        shutil.rmtree(d, ignore_errors=True)
