"""Offline consistency check of a volume (region + metadata).

Invariants checked, each reported with what is wrong:
- the superblock is valid and the region is as large as it says;
- the metadata belongs to this region (UUID, size, block size);
- every extent (of a file, free, or quarantined) is block aligned, inside the
  data area, and no two overlap; together they tile the data area exactly
  (free + used + quarantined = region), so a leaked or doubly used block shows;
- a file's extents do not overlap in the file either; only regular files have any;
- every directory entry points to an existing inode from a directory;
- every inode with links is reachable from the root, and its link count matches.

Run it only while no server uses the volume.
"""

from __future__ import annotations

import itertools
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from daxfs.server.metadata import ROOT_INO, Metadata
from daxfs.server.volume import check_pairing
from daxfs.shared.errors import DaxfsError
from daxfs.shared.region import backing_size, read_superblock


@dataclass
class FsckReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0
    used_bytes: int = 0
    free_bytes: int = 0
    quarantined_bytes: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(region_path: str, meta_path: str) -> FsckReport:
    report = FsckReport()
    p = report.problems
    try:
        sb = read_superblock(region_path)
        if backing_size(region_path) < sb.region_size:
            p.append(
                f"region {region_path} is shorter than its superblock's {sb.region_size} bytes"
            )
    except (OSError, DaxfsError) as exc:
        p.append(f"region: {exc}")
        return report
    try:
        meta = Metadata(meta_path)
    except (OSError, DaxfsError) as exc:
        p.append(f"metadata: {exc}")
        return report
    try:
        try:
            meta.check_schema()
            check_pairing(region_path, meta)
        except DaxfsError as exc:
            p.append(str(exc))
            return report
        _check_space(meta, sb.data_offset, sb.region_size, sb.block_size, report)
        _check_tree(meta, report)
    finally:
        meta.close()
    return report


def _check_space(
    meta: Metadata, data_offset: int, region_size: int, bs: int, r: FsckReport
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
    for off, n in meta.free_extents():
        ranges.append((off, n, "free extent"))
        r.free_bytes += n
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
        exts.sort()
        for (a, an), (b, _bn) in itertools.pairwise(exts):
            if a + an > b:
                r.problems.append(f"inode {file_ino}: extents overlap in the file at offset {b}")


def _check_tree(meta: Metadata, r: FsckReport) -> None:
    inodes = {row.ino: row for row in meta.all_inodes()}
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
    seen: set[int] = {ROOT_INO}
    stack: list[int] = [ROOT_INO]
    while stack:
        cur = stack.pop()
        for child in children.get(cur, ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
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
