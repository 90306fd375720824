"""Offline consistency check of a volume (region + metadata), and its repair.

Invariants checked, each reported with what is wrong:
- the superblock is valid and the region is as large as it says;
- the metadata belongs to this region (UUID, size, block size);
- every extent (of a file, free, or quarantined) is block aligned, inside the
  data area, and no two overlap; together they tile the data area exactly
  (free + used + quarantined = region), so a leaked or doubly used block shows;
- the free list is coalesced (no two free extents touch), as the allocator keeps it;
- a file's extents do not overlap in the file either; only existing regular
  files have any;
- every directory entry points to an existing inode from a directory;
- every inode with links is reachable from the root, and its link count matches.

``repair=True`` fixes, in one metadata transaction, what can be fixed without
guessing, and lists each action in ``FsckReport.repairs``:
- a directory entry in a missing or non-directory parent, or naming a missing
  inode, is removed; a directory with several entries keeps the first;
- a file extent that is unaligned or outside the data area, that belongs to a
  missing inode or a non-regular file, or that overlaps another extent of the
  same file, is dropped: its file range then reads as zeros. The pointer is
  corrupt, so the bytes it names cannot be trusted to be this file's;
- a file extent whose blocks another file's extent already claims (a double
  allocation) is *cloned*: its current bytes are copied to free blocks and the
  extent moved there, as e2fsck does for multiply-claimed blocks. fsck cannot
  know which owner the shared bytes belong to (the last writer of either file
  put them there), so both files keep the bytes they show today and stop
  sharing them. Without free space for the copy the extent is dropped instead;
- a quarantine entry that is invalid or overlaps a file extent is dropped;
- the free list is rebuilt as the data area minus the file extents and the
  quarantine: leaked blocks come back, and no block is both free and in use;
- an inode that has links but is not reachable from the root is linked into
  ``/lost+found`` (created if missing) as ``#<inode>``;
- link counts are recomputed from the directory entries.

A damaged superblock (bad magic or checksum) is rewritten from the metadata's
record of the region (UUID, size, block size), once the region and the metadata
agree on everything the superblock still shows: the backing store has the
recorded size, and either the superblock's UUID field is the recorded one, or
its whole header is gone and the rest of block 0 holds the zeros a daxfs
region keeps there. Anything else (a superblock of a future version, metadata
of another region or of another schema version, a missing root) is not
repairable: fsck says so and changes nothing.

A repair takes the volume's lock (server/volume.py) and is refused while a
server, mkfs or another repair holds it. A plain check runs beside a live
server with a note: it may see a change half made.
"""

from __future__ import annotations

import itertools
import os
import stat
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from daxfs.server.metadata import ROOT_INO, InodeRow, Metadata
from daxfs.server.volume import (
    VolumeLock,
    check_pairing,
    lock_holder,
    recorded_superblock,
)
from daxfs.shared.errors import DaxfsError, SuperblockDamaged
from daxfs.shared.extent import Extent, InodeId
from daxfs.shared.format import MAGIC, SUPERBLOCK_SIZE, Superblock, unchecked_fields
from daxfs.shared.region import (
    Region,
    backing_size,
    read_first_block,
    read_superblock,
    write_superblock,
)

LOST_FOUND = "lost+found"
NOT_REPAIRABLE = "not repairable by fsck: nothing was changed"

Range = tuple[int, int]
"""(start, end) in bytes, end exclusive."""


@dataclass
class FsckReport:
    problems: list[str] = field(default_factory=list)
    """What is wrong with the volume now (after any repair)."""
    notes: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    """What ``repair=True`` changed, one line per action."""
    found: list[str] = field(default_factory=list)
    """What the check found before any repair (equals ``problems`` without repair)."""
    files: int = 0
    used_bytes: int = 0
    free_bytes: int = 0
    quarantined_bytes: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(region_path: str, meta_path: str, *, repair: bool = False) -> FsckReport:
    """Check a volume; with ``repair``, fix what can be fixed and check again.

    A repair holds the volume's lock and raises VolumeBusy if a live process
    (a server) holds it.
    """
    if repair:
        with VolumeLock(meta_path, "fsck --repair"):
            return _fsck(region_path, meta_path, repair=True, report=FsckReport())
    report = FsckReport()
    holder = lock_holder(meta_path)
    if holder is not None:
        report.notes.append(
            f"the volume is in use by {holder}: this check may see a change half made; "
            "stop it for a check that counts (a repair is refused while it runs)"
        )
    return _fsck(region_path, meta_path, repair=False, report=report)


def _fsck(region_path: str, meta_path: str, *, repair: bool, report: FsckReport) -> FsckReport:
    p = report.problems
    unfixable = f" ({NOT_REPAIRABLE})" if repair else ""
    #: What a repair found and fixed before the check proper (a rewritten superblock).
    fixed: list[str] = []

    def done(r: FsckReport) -> FsckReport:
        r.found = [*fixed, *r.problems] if not r.found else r.found
        return r

    try:
        try:
            sb = read_superblock(region_path)
        except SuperblockDamaged as exc:
            rebuilt = _superblock_from_metadata(region_path, meta_path, exc, report, repair=repair)
            if rebuilt is None:
                return done(report)
            sb, finding = rebuilt
            (fixed if repair else p).append(finding)
            if repair:
                write_superblock(region_path, sb)
                report.repairs.append(
                    f"rewrote the superblock of {region_path} from the metadata's record "
                    f"(region {sb.uuid_str}, {sb.region_size} bytes, {sb.block_size}-byte blocks)"
                )
                sb = read_superblock(region_path)
        if backing_size(region_path) < sb.region_size:
            p.append(
                f"region {region_path} is shorter than its superblock's {sb.region_size} "
                f"bytes{unfixable}"
            )
            return done(report)
    except (OSError, DaxfsError) as exc:
        p.append(f"region: {exc}{unfixable}")
        return done(report)
    try:
        meta = Metadata(meta_path)
    except (OSError, DaxfsError) as exc:
        p.append(f"metadata: {exc}{unfixable}")
        return done(report)
    try:
        try:
            meta.check_schema()
            check_pairing(region_path, meta, sb)
        except DaxfsError as exc:
            p.append(f"{exc}{unfixable}")
            return done(report)
        _check(meta, sb, report)
        done(report)
        root = meta.get_inode(ROOT_INO)
        if repair and report.problems:
            if root is None or not stat.S_ISDIR(root.mode):
                report.notes.append(f"the root directory is missing: {NOT_REPAIRABLE}")
                return report
            with meta.transaction():
                _repair(meta, sb, region_path, report)
            after = FsckReport(repairs=report.repairs, found=report.found, notes=report.notes)
            _check(meta, sb, after)
            return after
    finally:
        meta.close()
    return report


def check_open(region_path: str, meta: Metadata) -> FsckReport:
    """The check (no repair) of a volume whose metadata the caller holds open.

    For a caller that keeps the metadata where a second connection cannot see
    it (the protocol simulation's in-memory database); the same checks as
    :func:`fsck` on a stopped volume whose superblock is intact.
    """
    report = FsckReport()
    try:
        sb = read_superblock(region_path)
        if backing_size(region_path) < sb.region_size:
            raise DaxfsError(f"region {region_path} is shorter than its superblock's size")
        meta.check_schema()
        check_pairing(region_path, meta, sb)
    except (OSError, DaxfsError) as exc:
        report.problems.append(str(exc))
    else:
        _check(meta, sb, report)
    report.found = list(report.problems)
    return report


def _superblock_from_metadata(
    region_path: str, meta_path: str, damage: SuperblockDamaged, r: FsckReport, *, repair: bool
) -> tuple[Superblock, str] | None:
    """The superblock the metadata records for this region, if they provably belong
    together, and the finding to report; None, with the reason added to
    ``r.problems``, when nothing can be rebuilt."""
    unfixable = f" ({NOT_REPAIRABLE})" if repair else ""
    try:
        meta = Metadata(meta_path)
    except (OSError, DaxfsError) as exc:
        r.problems.append(f"{damage}; and no metadata to rebuild it from: {exc}{unfixable}")
        return None
    try:
        meta.check_schema()
        want = recorded_superblock(meta)
    except (OSError, DaxfsError) as exc:
        r.problems.append(f"{damage}; and the metadata cannot rebuild it: {exc}{unfixable}")
        return None
    finally:
        meta.close()
    disagree: list[str] = []
    size = backing_size(region_path)
    exact = stat.S_ISREG(os.stat(region_path).st_mode)
    if size < want.region_size or (exact and size != want.region_size):
        disagree.append(f"the region has {size} bytes, the metadata records {want.region_size}")
    raw = read_first_block(region_path, want.block_size)
    magic, seen = unchecked_fields(raw)
    if seen.uuid != want.uuid:
        if magic == MAGIC:
            disagree.append(
                f"the superblock's header is intact and names region {seen.uuid_str}, "
                f"the metadata records {want.uuid_str}"
            )
        elif any(raw[SUPERBLOCK_SIZE:]):
            # The UUID is gone with the header: only the zeros mkfs left in the
            # rest of block 0 still say this is a daxfs region.
            disagree.append(
                "the superblock's UUID is gone and block 0 holds data past the superblock, "
                "where a daxfs region has zeros: this may not be the region the metadata records"
            )
    if disagree:
        r.problems.append(
            f"{damage}; the metadata {meta_path} cannot vouch for this region: "
            f"{'; '.join(disagree)}{unfixable}"
        )
        return None
    return want, (
        f"{damage}; the metadata records this region ({want.uuid_str}): "
        "`daxfs fsck --repair` rewrites the superblock from it"
    )


def _check(meta: Metadata, sb: Superblock, r: FsckReport) -> None:
    inodes = {row.ino: row for row in meta.all_inodes()}
    _check_space(meta, inodes, sb.data_offset, sb.region_size, sb.block_size, r)
    _check_tree(meta, inodes, r)


def _check_space(
    meta: Metadata,
    inodes: dict[InodeId, InodeRow],
    data_offset: int,
    region_size: int,
    bs: int,
    r: FsckReport,
) -> None:
    ranges: list[tuple[int, int, str]] = []
    per_file: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for ino, ext in meta.all_extents():
        assert ext.region_offset is not None
        ranges.append(
            (ext.region_offset, ext.length, f"inode {ino} extent @file {ext.file_offset}")
        )
        per_file[ino].append((ext.file_offset, ext.length))
        r.used_bytes += ext.length
        if ext.file_offset % bs:
            r.problems.append(
                f"inode {ino}: extent at file offset {ext.file_offset} is not block aligned"
            )
    free = meta.free_extents()
    for off, n in free:
        ranges.append((off, n, "free extent"))
        r.free_bytes += n
    for (a, an), (b, _bn) in itertools.pairwise(free):
        if a + an == b:
            r.problems.append(
                f"free extents [{a}, +{an}) and {b} touch: the free list is not coalesced"
            )
    for off, n, _until in meta.quarantined():
        ranges.append((off, n, "quarantined extent"))
        r.quarantined_bytes += n
    for off, n, what in ranges:
        if n <= 0 or off % bs or n % bs:
            r.problems.append(f"{what} [{off}, +{n}) is not whole aligned blocks of {bs}")
        if off < data_offset or off + n > region_size:
            r.problems.append(
                f"{what} [{off}, +{n}) lies outside the data area [{data_offset}, {region_size})"
            )
    ranges.sort()
    for (a_off, a_n, a_what), (b_off, _b_n, b_what) in itertools.pairwise(ranges):
        if a_off + a_n > b_off:
            r.problems.append(f"overlap: {a_what} [{a_off}, +{a_n}) and {b_what} at {b_off}")
    total = r.used_bytes + r.free_bytes + r.quarantined_bytes
    if total != region_size - data_offset:
        r.problems.append(
            f"space accounting: used {r.used_bytes} + free {r.free_bytes} + quarantined "
            f"{r.quarantined_bytes} = {total}, but the data area is "
            f"{region_size - data_offset} bytes "
            f"({region_size - data_offset - total:+d} bytes leaked or doubly counted)"
        )
    for file_ino, exts in per_file.items():
        if file_ino not in inodes:
            r.problems.append(f"extents belong to inode {file_ino}, which does not exist")
        exts.sort()
        for (a, an), (b, _bn) in itertools.pairwise(exts):
            if a + an > b:
                r.problems.append(f"inode {file_ino}: extents overlap in the file at offset {b}")


def _check_tree(meta: Metadata, inodes: dict[InodeId, InodeRow], r: FsckReport) -> None:
    r.files = len(inodes)
    root = inodes.get(ROOT_INO)
    if root is None or not stat.S_ISDIR(root.mode):
        r.problems.append("the root inode is missing or not a directory")
        return
    children: dict[int, list[int]] = defaultdict(list)
    links: Counter[int] = Counter()
    subdirs: Counter[int] = Counter()
    for parent, name, ino in meta.all_dirents():
        prow = inodes.get(parent)
        if prow is None or not stat.S_ISDIR(prow.mode):
            r.problems.append(f"entry {name!r} lives in inode {parent}, which is not a directory")
            continue
        row = inodes.get(ino)
        if row is None:
            r.problems.append(f"entry {name!r} in directory {parent} points to missing inode {ino}")
            continue
        children[parent].append(ino)
        links[ino] += 1
        if stat.S_ISDIR(row.mode):
            subdirs[parent] += 1
    seen = _reachable(children)
    for ino, row in inodes.items():
        if row.nlink == 0:
            r.notes.append(f"inode {ino} is unlinked but was open; the server reclaims it at start")
            if links[ino]:
                r.problems.append(f"inode {ino} has link count 0 but {links[ino]} entries")
            continue
        if ino not in seen:
            r.problems.append(f"inode {ino} (nlink {row.nlink}) is not reachable from the root")
        if stat.S_ISDIR(row.mode):
            if ino != ROOT_INO and links[ino] != 1:
                r.problems.append(f"directory {ino} has {links[ino]} entries (must have one)")
            want = 2 + subdirs[ino]
        else:
            want = links[ino]
        if row.nlink != want:
            r.problems.append(f"inode {ino}: link count {row.nlink}, counted {want}")
        if not stat.S_ISREG(row.mode) and meta.extents(ino):
            r.problems.append(f"inode {ino} is not a regular file but has extents")
        if stat.S_ISLNK(row.mode) and not row.target:
            r.problems.append(f"symlink {ino} has no target")


def _reachable(children: dict[int, list[int]]) -> set[int]:
    seen: set[int] = {ROOT_INO}
    stack: list[int] = [ROOT_INO]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


# -- repair ---------------------------------------------------------------------


def _repair(meta: Metadata, sb: Superblock, region_path: str, r: FsckReport) -> None:
    inodes = {row.ino: row for row in meta.all_inodes()}
    _repair_dirents(meta, inodes, r)
    _repair_extents(meta, inodes, sb, region_path, r)
    _repair_tree(meta, r)


def _repair_dirents(meta: Metadata, inodes: dict[InodeId, InodeRow], r: FsckReport) -> None:
    names: dict[InodeId, list[tuple[InodeId, str]]] = defaultdict(list)
    for parent, name, ino in sorted(meta.all_dirents()):
        prow = inodes.get(parent)
        if prow is None or not stat.S_ISDIR(prow.mode):
            meta.remove_dirent(parent, name)
            r.repairs.append(f"removed entry {name!r} of inode {parent}, which is not a directory")
        elif ino not in inodes:
            meta.remove_dirent(parent, name)
            r.repairs.append(
                f"removed entry {name!r} in directory {parent}: inode {ino} does not exist"
            )
        else:
            names[ino].append((parent, name))
    for ino, entries in names.items():
        if not stat.S_ISDIR(inodes[ino].mode):
            continue
        # A directory has exactly one entry (the root none): keep the first.
        keep = 0 if ino == ROOT_INO else 1
        for parent, name in entries[keep:]:
            meta.remove_dirent(parent, name)
            r.repairs.append(
                f"removed entry {name!r} in directory {parent}: directory {ino} "
                "already has another entry"
            )


def _repair_extents(
    meta: Metadata,
    inodes: dict[InodeId, InodeRow],
    sb: Superblock,
    region_path: str,
    r: FsckReport,
) -> None:
    bs, lo, hi = sb.block_size, sb.data_offset, sb.region_size

    def valid(off: int, n: int) -> bool:
        return n > 0 and off % bs == 0 and n % bs == 0 and lo <= off and off + n <= hi

    def drop(ino: int, ext: Extent, why: str) -> None:
        meta.delete_extent(ino, ext.file_offset)
        r.repairs.append(
            f"inode {ino}: dropped extent [{ext.region_offset}, +{ext.length}) {why}; "
            f"file bytes [{ext.file_offset}, {ext.file_end}) now read as zeros"
        )

    kept: list[tuple[InodeId, Extent]] = []
    file_end: dict[int, int] = {}
    for ino, ext in sorted(meta.all_extents(), key=lambda x: (x[0], x[1].file_offset)):
        assert ext.region_offset is not None
        row = inodes.get(ino)
        if row is None:
            meta.delete_extent(ino, ext.file_offset)
            r.repairs.append(
                f"dropped extent [{ext.region_offset}, +{ext.length}) of missing inode {ino}"
            )
        elif not stat.S_ISREG(row.mode):
            drop(ino, ext, "(not a regular file)")
        elif not valid(ext.region_offset, ext.length) or ext.file_offset % bs:
            drop(ino, ext, "(unaligned or outside the data area)")
        elif ext.file_offset < file_end.get(ino, 0):
            drop(ino, ext, "(overlaps another extent of the file)")
        else:
            file_end[ino] = ext.file_end
            kept.append((ino, ext))

    # Double allocations: the first claimant (lowest region offset, then inode)
    # keeps the blocks; a later claimant is cloned once free space is known.
    owned: list[Range] = []
    clones: list[tuple[InodeId, Extent]] = []
    claimed_to = 0
    for ino, ext in sorted(kept, key=lambda k: (k[1].region_offset or 0, k[0])):
        assert ext.region_offset is not None
        if ext.region_offset < claimed_to:
            clones.append((ino, ext))
        else:
            owned.append((ext.region_offset, ext.region_offset + ext.length))
            claimed_to = ext.region_offset + ext.length

    parked: list[Range] = []
    for off, n, _until in meta.quarantined():
        if not valid(off, n) or _overlap(_merge(owned + parked), [(off, off + n)]):
            meta.remove_quarantine(off)
            r.repairs.append(f"dropped quarantine entry [{off}, +{n}): invalid or in use")
        else:
            parked.append((off, off + n))

    spare = _complement(_merge(owned + parked), lo, hi)
    region: Region | None = None
    try:
        for ino, ext in clones:
            assert ext.region_offset is not None
            pieces, spare = _take(spare, ext.length)
            if not pieces:
                drop(ino, ext, "(its blocks belong to another file; no free space to copy it)")
                continue
            if region is None:
                region = Region(region_path)
            meta.delete_extent(ino, ext.file_offset)
            pos = ext.file_offset
            src = ext.region_offset
            for start, end in pieces:
                n = end - start
                region.u8[start:end] = region.u8[src : src + n]
                region.persist(start, n)
                meta.add_extent(ino, Extent(pos, n, start))
                owned.append((start, end))
                pos += n
                src += n
            r.repairs.append(
                f"inode {ino}: extent [{ext.region_offset}, +{ext.length}) shared blocks with "
                f"another file; copied to {', '.join(f'[{a}, +{b - a})' for a, b in pieces)}"
            )
    finally:
        if region is not None:
            region.close()

    _rebuild_free(meta, _complement(_merge(owned + parked), lo, hi), r)


def _rebuild_free(meta: Metadata, free: list[Range], r: FsckReport) -> None:
    old = meta.free_extents()
    if old == [(a, b - a) for a, b in free]:
        return
    old_ranges = _merge([(off, off + n) for off, n in old if n > 0])
    common = _overlap(free, old_ranges)
    returned = sum(b - a for a, b in free) - common
    taken = sum(b - a for a, b in old_ranges) - common
    for off, _n in old:
        meta.remove_free(off)
    for a, b in free:
        meta.add_free(a, b - a)
    r.repairs.append(
        f"rebuilt the free list from the blocks in use ({len(old)} -> {len(free)} extents): "
        f"{returned} leaked bytes returned to it, {taken} bytes in use removed from it"
    )


def _repair_tree(meta: Metadata, r: FsckReport) -> None:
    lost_found: tuple[int, str] | None = None  # inode and name in the root
    while True:
        inodes = {row.ino: row for row in meta.all_inodes()}
        children: dict[int, list[int]] = defaultdict(list)
        parents: dict[InodeId, list[tuple[InodeId, str]]] = defaultdict(list)
        for parent, name, ino in meta.all_dirents():
            children[parent].append(ino)
            parents[ino].append((parent, name))
        seen = _reachable(children)
        lost = sorted(
            ino
            for ino, row in inodes.items()
            if ino not in seen and (row.nlink > 0 or parents[ino])
        )
        if not lost:
            break
        # Move the tops of lost subtrees (no entry left); what hangs below comes along.
        # With no top the lost directories form a cycle: break it at one of them.
        tops = [ino for ino in lost if not parents[ino]]
        if not tops:
            tops = [next(i for i in lost if stat.S_ISDIR(inodes[i].mode))]
        if lost_found is None:
            lost_found = _lost_found(meta, r)
        for ino in tops:
            for parent, name in parents[ino]:
                meta.remove_dirent(parent, name)
            name = _free_name(meta, lost_found[0], f"#{ino}")
            meta.add_dirent(lost_found[0], name, ino)
            r.repairs.append(
                f"inode {ino} was not reachable from the root: linked as /{lost_found[1]}/{name}"
            )
    _recount_links(meta, r)


def _free_name(meta: Metadata, parent: int, name: str) -> str:
    """``name``, or ``name.1``, ``name.2``… whichever ``parent`` does not hold yet."""
    candidate, n = name, 0
    while meta.lookup(parent, candidate) is not None:
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def _lost_found(meta: Metadata, r: FsckReport) -> tuple[int, str]:
    """The ``/lost+found`` directory and its name, made if missing."""
    ino = meta.lookup(ROOT_INO, LOST_FOUND)
    if ino is not None:
        row = meta.get_inode(ino)
        if row is not None and stat.S_ISDIR(row.mode):
            return ino, LOST_FOUND
    gen = int(meta.get_meta("next_generation") or "1")
    meta.set_meta("next_generation", str(gen + 1))
    ino = meta.insert_inode(
        generation=gen,
        mode=stat.S_IFDIR | 0o700,
        uid=0,
        gid=0,
        nlink=2,
        now_ns=time.time_ns(),
    )
    # A non-directory squatting on the name keeps it; the new directory gets another.
    name = _free_name(meta, ROOT_INO, LOST_FOUND)
    meta.add_dirent(ROOT_INO, name, ino)
    r.repairs.append(f"created /{name} (inode {ino})")
    return ino, name


def _recount_links(meta: Metadata, r: FsckReport) -> None:
    inodes = {row.ino: row for row in meta.all_inodes()}
    links: Counter[int] = Counter()
    subdirs: Counter[int] = Counter()
    for parent, _name, ino in meta.all_dirents():
        links[ino] += 1
        if stat.S_ISDIR(inodes[ino].mode):
            subdirs[parent] += 1
    for ino, row in inodes.items():
        if row.nlink == 0 and not links[ino]:
            continue  # unlinked while open: the server reclaims it at start
        want = 2 + subdirs[ino] if stat.S_ISDIR(row.mode) else links[ino]
        if row.nlink != want:
            meta.update_inode(ino, nlink=want)
            r.repairs.append(f"inode {ino}: link count {row.nlink} set to {want}")


# -- ranges: sorted lists of disjoint (start, end) ---------------------------------


def _merge(ranges: list[Range]) -> list[Range]:
    out: list[Range] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _complement(used: list[Range], lo: int, hi: int) -> list[Range]:
    out: list[Range] = []
    pos = lo
    for a, b in used:
        if a > pos:
            out.append((pos, min(a, hi)))
        pos = max(pos, b)
    if pos < hi:
        out.append((pos, hi))
    return [(a, b) for a, b in out if a < b]


def _overlap(xs: list[Range], ys: list[Range]) -> int:
    """Bytes in both of two merged range lists."""
    total, i, j = 0, 0, 0
    while i < len(xs) and j < len(ys):
        a, b = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        total += max(0, b - a)
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return total


def _take(spare: list[Range], length: int) -> tuple[list[Range], list[Range]]:
    """First fit of ``length`` bytes from ``spare``, in as many pieces as needed."""
    if sum(b - a for a, b in spare) < length:
        return [], spare
    pieces: list[Range] = []
    rest: list[Range] = []
    for a, b in spare:
        if length:
            n = min(length, b - a)
            pieces.append((a, a + n))
            length -= n
            if a + n < b:
                rest.append((a + n, b))
        else:
            rest.append((a, b))
    return pieces, rest
