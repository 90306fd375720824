"""A Hypothesis state machine drives the namespace against a plain model (issue 2).

The namespace runs in-process on a real 4 MiB region and metadata file in
/dev/shm. The model is a dict of paths (to a model inode, or a directory) and
the bytes of every model inode; each rule predicts the exact error class a
call must raise (from the model alone), applies the call, and updates the
model only when it succeeded. The model also tracks what a client stored
through a write layout past EOF without committing: those bytes must stay
invisible until a CommitLayout publishes them, and anything else that moves
EOF over them (write, fallocate, truncate) must show zeros instead.

After every step: fsck of the volume is clean, every file holds the model's
bytes (read raw from its extents in the region, and through Namespace.read
on every open handle), the blocks past EOF hold the model's tail, sizes, link counts
and directory listings agree, the allocator's memory equals SQLite, and a
file nobody holds open keeps no blocks beyond its end. A call that fails
(ENOSPC included) must leave every metadata table exactly as it was.

``DAXFS_HYPOTHESIS_EXAMPLES`` raises the number of examples for a long run;
``DAXFS_HYPOTHESIS_RANDOM=1`` draws new examples each run instead of the
fixed (derandomized) ones that ``make test`` uses. A long run needs pytest's
own limit lifted: ``DAXFS_HYPOTHESIS_RANDOM=1 DAXFS_HYPOTHESIS_EXAMPLES=2000
pytest --timeout=0 -o faulthandler_timeout=0 tests/test_namespace_props.py``.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from daxfs.server.fsck import fsck
from daxfs.server.metadata import Metadata
from daxfs.server.namespace import ROOT, Caller, Namespace
from daxfs.server.volume import check_pairing, close_volume, format_volume
from daxfs.shared import errors
from daxfs.shared.extent import Layout, align_down, align_up, fill_holes
from daxfs.shared.format import KIB, MIB
from daxfs.shared.limits import RENAME_EXCHANGE, RENAME_NOREPLACE
from daxfs.shared.region import Region

#: Small, so that growth chunks and fallocate run into ENOSPC often.
REGION_SIZE = 4 * MIB
BS = 4 * KIB
LEASE_NS = 30 * 1_000_000_000

EXAMPLES = int(os.environ.get("DAXFS_HYPOTHESIS_EXAMPLES", "150"))
DERANDOMIZE = not os.environ.get("DAXFS_HYPOTHESIS_RANDOM")

Expect = type[errors.DaxfsError] | None

paths = st.lists(st.sampled_from("ab"), min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
#: A path, or (an int) the n-th name that exists in the model: most calls then hit something.
targets = st.one_of(paths, st.integers(0, 63))
# Mostly near the start of a file, sometimes far out (sparse files, growth chunks).
offsets = st.one_of(st.integers(0, 3 * BS), st.integers(0, 3 * MIB))
lengths = st.one_of(
    st.integers(1, 2 * BS), st.integers(1, 600 * KIB), st.sampled_from([2 * MIB, 4 * MIB])
)
# Preallocations up to 6 MiB: a 4 MiB region runs out.
prealloc_lengths = st.one_of(
    st.sampled_from([1, BS, 3 * BS + 5, MIB - 3 * KIB, 2 * MIB, 3 * MIB + 1, 4 * MIB, 6 * MIB]),
    st.integers(1, 4 * BS),
)
PATTERN = bytes(range(251)) * (4 * MIB // 251 + 2)


def payload(seed: int, n: int) -> bytes:
    """n bytes that differ from their neighbours, so a misplaced byte shows."""
    return PATTERN[seed % 251 : seed % 251 + n]


class Clock:
    """A wall clock the test moves by hand (leases and quarantine deadlines)."""

    def __init__(self) -> None:
        self.now = 1_000_000_000_000_000_000

    def __call__(self) -> int:
        return self.now


def open_namespace(region: str, meta_path: str, clock: Clock) -> Namespace:
    """What ``open_volume`` does, with an injected clock."""
    meta = Metadata(meta_path)
    meta.check_schema()
    check_pairing(region, meta)
    ns = Namespace(Region(region), meta, clock=clock)
    ns.reclaim_orphans()
    return ns


@dataclass
class MInode:
    data: bytearray
    nlink: int = 1
    opens: int = 0
    keep_prealloc: bool = False
    untrimmed: bool = False
    """Was open when the volume was closed: its growth chunk was never trimmed."""
    tail: bytearray = field(default_factory=bytearray)
    """Region bytes from EOF on, as uncommitted layout stores left them (zeros beyond)."""

    def grow(self, size: int, *, expose: bool) -> None:
        """EOF moves up to ``size``: over the tail (CommitLayout) or over zeros (the rest)."""
        n = size - len(self.data)
        if n <= 0:
            return
        self.data += (self.tail[:n] + bytes(n))[:n] if expose else bytes(n)
        del self.tail[:n]

    def shrink(self, size: int) -> None:
        """Truncate down: blocks past EOF are freed and the rest of the last one zeroed."""
        del self.data[size:]
        self.tail.clear()

    def store(self, offset: int, data: bytes) -> None:
        """Stores through a write layout: inside the file visible, past EOF in the tail."""
        size = len(self.data)
        inside = data[: max(0, size - offset)]
        self.data[offset : offset + len(inside)] = inside
        beyond = data[len(inside) :]
        if beyond:
            pos = offset + len(inside) - size
            if len(self.tail) < pos:
                self.tail.extend(bytes(pos - len(self.tail)))
            self.tail[pos : pos + len(beyond)] = beyond

    def write(self, offset: int, data: bytes) -> None:
        self.grow(offset + len(data), expose=False)
        self.data[offset : offset + len(data)] = data

    def last_close(self, bs: int) -> None:
        """The growth chunk past the last block of the file is trimmed."""
        if not self.keep_prealloc:
            del self.tail[align_up(len(self.data), bs) - len(self.data) :]
        self.untrimmed = False


@dataclass
class MHandle:
    fh: int
    caller: Caller
    mino: int
    writable: bool


def _parent(path: str) -> str:
    return posixpath.dirname(path)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


class NamespaceMachine(RuleBasedStateMachine):
    BLOCK = BS
    REGION = REGION_SIZE

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="daxfs-ns-", dir="/dev/shm")
        self.region = os.path.join(self.dir, "region")
        self.meta = self.region + ".meta"
        format_volume(self.region, self.meta, self.REGION, self.BLOCK)
        self.clock = Clock()
        self.ns = open_namespace(self.region, self.meta, self.clock)
        self.clients = [Caller(client=self.ns.hello().id), Caller(client=self.ns.hello().id)]
        # The model.
        self.files: dict[str, int] = {}  # path -> model inode
        self.dirs: set[str] = {"/"}
        self.inodes: dict[int, MInode] = {}
        self.handles: list[MHandle] = []
        self.next_mino = 1

    def teardown(self) -> None:
        close_volume(self.ns)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- model helpers -------------------------------------------------------

    def kind(self, path: str) -> str | None:
        if path in self.dirs:
            return "dir"
        if path in self.files:
            return "file"
        return None

    def walk_err(self, path: str) -> Expect:
        """What resolving ``path`` raises, as Namespace._walk does it."""
        cur = "/"
        for name in path.strip("/").split("/"):
            if self.kind(cur) != "dir":
                return errors.NotADirectory
            cur = posixpath.join(cur, name)
            if self.kind(cur) is None:
                return errors.NotFound
        return None

    def parent_err(self, path: str) -> Expect:
        parent = _parent(path)
        if parent == "/":
            return None
        return self.walk_err(parent) or (
            errors.NotADirectory if self.kind(parent) != "dir" else None
        )

    def children(self, d: str) -> set[str]:
        return {p for p in [*self.files, *self.dirs] if p != "/" and _parent(p) == d}

    def drop_link(self, mino: int) -> None:
        ino = self.inodes[mino]
        ino.nlink -= 1
        if ino.nlink == 0 and ino.opens == 0:
            del self.inodes[mino]

    def target(self, t: str | int, kind: str | None = None) -> str:
        """``t`` itself, or the t-th existing name (of that kind)."""
        if isinstance(t, str):
            return t
        names = sorted(p for p in [*self.files, *self.dirs - {"/"}] if kind in (None, self.kind(p)))
        return names[t % len(names)] if names else "/a"

    def ino_of(self, h: MHandle) -> int:
        return self.ns.fgetattr(h.fh, h.caller).ino

    def needed(self, h: MHandle, offset: int, length: int) -> int:
        """Bytes of new blocks a write to [offset, offset+length) needs."""
        lo, hi = align_down(offset, self.BLOCK), align_up(offset + length, self.BLOCK)
        mapped = self.ns.meta.extents(self.ino_of(h))
        return sum(e.length for e in fill_holes(mapped, lo, hi) if e.hole)

    def state(self) -> tuple[object, ...]:
        m = self.ns.meta
        return (
            sorted(m.all_inodes(), key=lambda r: r.ino),
            sorted(m.all_dirents()),
            sorted(m.all_extents(), key=lambda x: (x[0], x[1].file_offset)),
            m.free_extents(),
            m.quarantined(),
            self.ns.allocator.free_extents(),
            self.ns.allocator.free_bytes,
        )

    def call(self, expect: Expect, fn: Callable[[], object]) -> object:
        """Run one namespace call; it must raise ``expect`` (and change nothing) or succeed."""
        before = self.state()
        try:
            result = fn()
        except errors.DaxfsError as exc:
            assert expect is not None, f"unexpected {type(exc).__name__}: {exc}"
            assert type(exc) is expect, (
                f"expected {expect.__name__}, got {type(exc).__name__}: {exc}"
            )
            assert self.state() == before, f"a failed call ({exc}) changed the metadata"
            return None
        assert expect is None, f"expected {expect.__name__}, but the call succeeded"
        return result

    def pick(self, i: int) -> MHandle:
        return self.handles[i % len(self.handles)]

    def forget_handle(self, h: MHandle) -> None:
        self.handles.remove(h)
        ino = self.inodes[h.mino]
        ino.opens -= 1
        if ino.opens == 0:
            ino.last_close(self.BLOCK)
            if ino.nlink == 0:
                del self.inodes[h.mino]

    # -- rules: files --------------------------------------------------------

    @initialize(n=st.integers(0, 2), who=st.integers(0, 1))
    def start_with_open_files(self, n: int, who: int) -> None:
        """Most rules need an open file: begin with up to two."""
        for path in ["/a", "/b"][:n]:
            self.create(path, exclusive=True, truncate=False, who=who)

    @precondition(lambda self: len(self.handles) < 8)
    @rule(t=targets, exclusive=st.booleans(), truncate=st.booleans(), who=st.integers(0, 1))
    def create(self, t: str | int, exclusive: bool, truncate: bool, who: int) -> None:
        path = self.target(t)
        caller = self.clients[who]
        k = self.kind(path)
        expect = self.parent_err(path)
        if expect is None and k is not None:
            expect = errors.AlreadyExists if exclusive else None
            if expect is None and k == "dir":
                expect = errors.IsADirectory
        opened = self.call(
            expect,
            lambda: self.ns.create(path, 0o644, caller, exclusive=exclusive, truncate=truncate),
        )
        if opened is None:
            return
        assert hasattr(opened, "handle")
        if k is None:
            mino = self.next_mino
            self.next_mino += 1
            self.inodes[mino] = MInode(bytearray())
            self.files[path] = mino
        else:
            mino = self.files[path]
            if truncate and self.inodes[mino].data:  # an empty file is left alone
                self.inodes[mino].shrink(0)
        self.inodes[mino].opens += 1
        self.handles.append(MHandle(opened.handle, caller, mino, True))

    @precondition(lambda self: len(self.handles) < 8)
    @rule(t=targets, writable=st.booleans(), truncate=st.booleans(), who=st.integers(0, 1))
    def open(self, t: str | int, writable: bool, truncate: bool, who: int) -> None:
        path = self.target(t)
        caller = self.clients[who]
        truncate = truncate and writable
        expect = self.walk_err(path)
        if expect is None and self.kind(path) == "dir" and writable:
            expect = errors.IsADirectory
        opened = self.call(
            expect,
            lambda: self.ns.open(path, caller, writable=writable, truncate=truncate),
        )
        if opened is None:
            return
        assert hasattr(opened, "handle")
        if self.kind(path) == "dir":
            self.ns.release(opened.handle, caller)  # a directory handle has no data to check
            return
        mino = self.files[path]
        if truncate and self.inodes[mino].data:
            self.inodes[mino].shrink(0)
        self.inodes[mino].opens += 1
        self.handles.append(MHandle(opened.handle, caller, mino, writable))

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 7))
    def release(self, i: int) -> None:
        h = self.pick(i)
        self.ns.release(h.fh, h.caller)
        self.forget_handle(h)

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 7))
    def reopen(self, i: int) -> None:
        """close() then open() again by a name of the same file, if it still has one."""
        h = self.pick(i)
        self.ns.release(h.fh, h.caller)
        self.forget_handle(h)
        names = [p for p, m in self.files.items() if m == h.mino]
        if names:
            opened = self.ns.open(names[0], h.caller, writable=h.writable)
            self.inodes[h.mino].opens += 1
            self.handles.append(MHandle(opened.handle, h.caller, h.mino, h.writable))

    @precondition(lambda self: self.files)
    @rule(t=st.integers(0, 63))
    def read_by_path(self, t: int) -> None:
        """open(O_RDONLY), read everything, close (the last close trims the growth chunk)."""
        path = sorted(self.files)[t % len(self.files)]
        mino = self.files[path]
        reader = self.clients[0]  # open files need a session (client 0 creates nothing)
        opened = self.ns.open(path, reader)
        try:
            assert self.read_all(opened.handle, reader) == self.inodes[mino].data, path
        finally:
            self.ns.release(opened.handle, reader)
        if self.inodes[mino].opens == 0:
            self.inodes[mino].last_close(self.BLOCK)

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 7), offset=offsets, length=lengths, seed=st.integers(0, 250))
    def write(self, i: int, offset: int, length: int, seed: int) -> None:
        h = self.pick(i)
        data = payload(seed, length)
        expect: Expect = None
        if not h.writable:
            expect = errors.BadHandle
        elif self.needed(h, offset, length) > self.ns.allocator.free_bytes:
            expect = errors.NoSpace
        if self.call(expect, lambda: self.ns.write(h.fh, offset, data, h.caller)) is not None:
            self.inodes[h.mino].write(offset, data)

    @precondition(lambda self: self.handles)
    @rule(
        i=st.integers(0, 7),
        offset=offsets,
        length=lengths,
        seed=st.integers(0, 250),
        commit=st.booleans(),
        give_back=st.booleans(),
    )
    def layout_write(
        self, i: int, offset: int, length: int, seed: int, commit: bool, give_back: bool
    ) -> None:
        """GetLayout(WRITE), store straight into the region, then CommitLayout (or not)."""
        h = self.pick(i)
        data = payload(seed, length)
        expect: Expect = None
        if not h.writable:
            expect = errors.BadHandle
        elif self.needed(h, offset, length) > self.ns.allocator.free_bytes:
            expect = errors.NoSpace
        layout = self.call(
            expect, lambda: self.ns.get_layout(h.fh, offset, length, h.caller, write=True)
        )
        if layout is None:
            return
        assert isinstance(layout, Layout)
        pos = 0
        for ext in layout.extents:
            assert ext.region_offset is not None, f"write layout has a hole: {layout}"
            r = ext.region_offset
            self.ns.region.u8[r : r + ext.length] = memoryview(data)[pos : pos + ext.length]
            pos += ext.length
        assert pos == length
        # Stores inside the file are visible at once (it is the same memory);
        # stores past EOF stay invisible until committed.
        self.inodes[h.mino].store(offset, data)
        if commit:
            self.ns.commit_layout(h.fh, h.caller, new_size=offset + length)
            self.inodes[h.mino].grow(offset + length, expose=True)
        if give_back:
            self.ns.return_layout(layout.lease_id, h.caller)

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 7), offset=offsets, length=lengths, give_back=st.booleans())
    def layout_read(self, i: int, offset: int, length: int, give_back: bool) -> None:
        """GetLayout(READ): the tiles cover the range, and the bytes they name are the file's."""
        h = self.pick(i)
        layout = self.ns.get_layout(h.fh, offset, length, h.caller)
        data = self.inodes[h.mino].data
        pos = offset
        for ext in layout.extents:
            assert ext.file_offset == pos and ext.length > 0, layout
            pos = ext.file_end
            lo, hi = ext.file_offset, min(ext.file_end, len(data))
            if lo >= hi:
                continue
            if ext.region_offset is None:
                got = bytes(hi - lo)
            else:
                r = ext.region_offset
                got = self.ns.region.u8[r : r + hi - lo].tobytes()
            assert got == data[lo:hi], f"layout bytes [{lo}, {hi}) differ from the file's"
        assert pos == offset + length
        if give_back:
            self.ns.return_layout(layout.lease_id, h.caller)

    @rule(t=targets, size=st.one_of(st.integers(0, 3 * BS), st.integers(0, 3 * MIB)))
    def truncate(self, t: str | int, size: int) -> None:
        path = self.target(t)
        expect = self.walk_err(path)
        if expect is None and self.kind(path) == "dir":
            expect = errors.IsADirectory
        if self.call(expect, lambda: self.ns.setattr(path, ROOT, size=size)) is not None:
            self.resize(self.files[path], size)

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 7), size=st.one_of(st.integers(0, 3 * BS), st.integers(0, 3 * MIB)))
    def ftruncate(self, i: int, size: int) -> None:
        h = self.pick(i)
        expect = None if h.writable else errors.BadHandle
        if (
            self.call(expect, lambda: self.ns.setattr(None, h.caller, fh=h.fh, size=size))
            is not None
        ):
            self.resize(h.mino, size)

    def resize(self, mino: int, size: int) -> None:
        ino = self.inodes[mino]
        if size < len(ino.data):
            ino.shrink(size)
        else:
            ino.grow(size, expose=False)

    @precondition(lambda self: self.handles)
    @rule(
        i=st.integers(0, 7),
        offset=offsets,
        length=prealloc_lengths,
        keep_size=st.booleans(),
        contiguous=st.booleans(),
    )
    def fallocate(
        self, i: int, offset: int, length: int, keep_size: bool, contiguous: bool
    ) -> None:
        h = self.pick(i)
        expect: Expect = None
        needed = 0 if not h.writable else self.needed(h, offset, length)
        lo, hi = align_down(offset, self.BLOCK), align_up(offset + length, self.BLOCK)
        if not h.writable:
            expect = errors.BadHandle
        elif contiguous and needed != hi - lo:
            expect = errors.InvalidArgument  # the range must be empty
        elif (
            contiguous and needed > self.ns.allocator.largest_free()
        ) or needed > self.ns.allocator.free_bytes:
            expect = errors.NoSpace
        attr = self.call(
            expect,
            lambda: self.ns.fallocate(
                h.fh, offset, length, h.caller, keep_size=keep_size, contiguous=contiguous
            ),
        )
        if attr is None:
            return
        if contiguous:
            mapped = self.ns.meta.extents(self.ino_of(h))
            inside = [e for e in mapped if e.file_offset < hi and e.file_end > lo]
            assert len(inside) == 1, f"contiguous fallocate gave {inside}"
        if keep_size:
            self.inodes[h.mino].keep_prealloc = True
        else:
            self.inodes[h.mino].grow(offset + length, expose=False)

    # -- rules: names --------------------------------------------------------

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        expect = self.parent_err(path)
        if expect is None and self.kind(path) is not None:
            expect = errors.AlreadyExists
        if self.call(expect, lambda: self.ns.mkdir(path, 0o755)) is not None:
            self.dirs.add(path)

    @rule(t=targets)
    def rmdir(self, t: str | int) -> None:
        path = self.target(t, "dir")
        expect = self.parent_err(path)
        if expect is None:
            k = self.kind(path)
            if k is None:
                expect = errors.NotFound
            elif k != "dir":
                expect = errors.NotADirectory
            elif self.children(path):
                expect = errors.DirectoryNotEmpty
        self.call(expect, lambda: self.ns.rmdir(path))
        if expect is None:
            self.dirs.remove(path)

    @rule(t=targets)
    def unlink(self, t: str | int) -> None:
        path = self.target(t)
        expect = self.parent_err(path)
        if expect is None:
            k = self.kind(path)
            if k is None:
                expect = errors.NotFound
            elif k == "dir":
                expect = errors.IsADirectory
        self.call(expect, lambda: self.ns.unlink(path))
        if expect is None:
            self.drop_link(self.files.pop(path))

    @precondition(lambda self: any(h.mino in self.files.values() for h in self.handles))
    @rule(i=st.integers(0, 7))
    def unlink_while_open(self, i: int) -> None:
        """Unlink every name of an open file; its handles keep working."""
        candidates = [h for h in self.handles if h.mino in self.files.values()]
        h = candidates[i % len(candidates)]
        for path in sorted(p for p, m in self.files.items() if m == h.mino):
            self.ns.unlink(path)
            self.drop_link(self.files.pop(path))

    @rule(t=targets, new=st.one_of(st.sampled_from(["/c", "/d", "/a/c"]), paths))
    def link(self, t: str | int, new: str) -> None:
        existing = self.target(t, "file")
        expect = self.walk_err(existing)
        if expect is None and self.kind(existing) == "dir":
            expect = errors.NotPermitted
        expect = expect or self.parent_err(new)
        if expect is None and self.kind(new) is not None:
            expect = errors.AlreadyExists
        self.call(expect, lambda: self.ns.link(existing, new))
        if expect is None:
            mino = self.files[existing]
            self.files[new] = mino
            self.inodes[mino].nlink += 1

    @rule(t=targets, u=targets, flags=st.sampled_from([0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, t: str | int, u: str | int, flags: int) -> None:
        old, new = self.target(t), self.target(u)
        expect, action = self.predict_rename(old, new, flags)
        self.call(expect, lambda: self.ns.rename(old, new, flags=flags))
        if expect is None:
            action()

    def predict_rename(self, old: str, new: str, flags: int) -> tuple[Expect, Callable[[], None]]:
        """The error Namespace.rename must raise, in its order of checks, or the model change."""

        def nothing() -> None:
            pass

        expect = self.parent_err(old) or self.parent_err(new)
        if expect:
            return expect, nothing
        src, dst = self.kind(old), self.kind(new)
        if src is None:
            return errors.NotFound, nothing
        if src == "dir" and _under(_parent(new), old):
            return errors.InvalidArgument, nothing
        if flags & RENAME_EXCHANGE:
            if dst is None:
                return errors.NotFound, nothing
            if dst == "dir" and _under(_parent(old), new):
                return errors.InvalidArgument, nothing
            return None, lambda: self.move({old: new, new: old})
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                return errors.AlreadyExists, nothing
            if old == new or (src == dst == "file" and self.files[old] == self.files[new]):
                return None, nothing  # POSIX: the same file; nothing happens
            if dst == "dir":
                if src != "dir":
                    return errors.IsADirectory, nothing
                if self.children(new):
                    return errors.DirectoryNotEmpty, nothing
            elif src == "dir":
                return errors.NotADirectory, nothing

        def replace() -> None:
            if dst == "file":
                self.drop_link(self.files.pop(new))
            elif dst == "dir":
                self.dirs.remove(new)
            self.move({old: new})

        return None, replace

    def move(self, renames: dict[str, str]) -> None:
        """Re-key every entry at or below each old top to the matching new top, at once."""

        def rekey(p: str) -> str:
            for a, b in renames.items():
                if _under(p, a):
                    return b + p[len(a) :]
            return p

        self.files = {rekey(p): m for p, m in self.files.items()}
        self.dirs = {rekey(p) for p in self.dirs}

    # -- rules: volume -------------------------------------------------------

    @rule(
        advance=st.sampled_from([0, LEASE_NS // 2, LEASE_NS + 1]),
        # A restart ends every open; keep it rarer than the other steps.
        restart=st.sampled_from([False, False, False, True]),
    )
    def sweep(self, advance: int, restart: bool) -> None:
        """Time passes; expired leases let quarantined extents return."""
        self.clock.now += advance
        self.ns.sweep()
        if restart:
            self.restart()

    def restart(self) -> None:
        """The server stops and starts: handles die, unlinked-but-open files go."""
        close_volume(self.ns)
        self.ns = open_namespace(self.region, self.meta, self.clock)
        self.clients = [Caller(client=self.ns.hello().id), Caller(client=self.ns.hello().id)]
        for h in self.handles:
            ino = self.inodes.get(h.mino)
            if ino is not None:
                ino.opens = 0
                ino.untrimmed = True
        self.handles.clear()
        self.inodes = {m: ino for m, ino in self.inodes.items() if ino.nlink > 0}

    # -- invariants ----------------------------------------------------------

    @invariant()
    def fsck_is_clean(self) -> None:
        report = fsck(self.region, self.meta)
        assert report.clean, "fsck:\n" + "\n".join(report.problems)

    @invariant()
    def allocator_memory_is_sqlite(self) -> None:
        assert self.ns.allocator.free_extents() == self.ns.meta.free_extents()
        assert self.ns.allocator.free_bytes == sum(n for _, n in self.ns.meta.free_extents())

    @invariant()
    def tree_matches(self) -> None:
        for d in self.dirs:
            names = sorted(e.name for e in self.ns.readdir(d))
            assert names == sorted(posixpath.basename(p) for p in self.children(d)), d
        for path, mino in self.files.items():
            attr = self.ns.getattr(path)
            ino = self.inodes[mino]
            assert attr.size == len(ino.data), path
            assert attr.nlink == ino.nlink, path
            if not (ino.opens or ino.keep_prealloc or ino.untrimmed):
                # The growth chunk was trimmed at the last close.
                assert attr.allocated <= align_up(attr.size, self.BLOCK), (path, attr)

    @invariant()
    def contents_match(self) -> None:
        """Raw bytes from the extents, and Namespace.read through every open handle."""
        for mino, ino in self.inodes.items():
            handles = [h for h in self.handles if h.mino == mino]
            names = [p for p, m in self.files.items() if m == mino]
            inum = self.ns.getattr(names[0]).ino if names else self.ino_of(handles[0])
            size = len(ino.data)
            assert self.raw(inum, 0, size) == ino.data, (names, "contents")
            end = max((e.file_end for e in self.ns.meta.extents(inum)), default=0)
            if end > size:
                tail = (ino.tail + bytes(end - size))[: end - size]
                assert self.raw(inum, size, end) == tail, (names, "bytes past EOF")
        for h in self.handles:
            assert self.ns.fgetattr(h.fh, h.caller).size == len(self.inodes[h.mino].data)
            assert self.read_all(h.fh, h.caller) == self.inodes[h.mino].data

    def raw(self, ino: int, start: int, end: int) -> bytes:
        """File bytes [start, end) straight from the region, bypassing Namespace.read."""
        out = bytearray(end - start)
        for ext in fill_holes(self.ns.meta.extents(ino), start, end):
            if ext.region_offset is not None:
                r = ext.region_offset
                out[ext.file_offset - start : ext.file_end - start] = self.ns.region.u8[
                    r : r + ext.length
                ].tobytes()
        return bytes(out)

    def read_all(self, fh: int, caller: Caller) -> bytes:
        return b"".join(self._chunks(fh, caller))

    def _chunks(self, fh: int, caller: Caller) -> Iterator[bytes]:
        pos = 0
        while True:
            chunk = self.ns.read(fh, pos, 4 * MIB, caller)
            if not chunk:
                return
            yield chunk
            pos += len(chunk)


NamespaceMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    derandomize=DERANDOMIZE,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_namespace_against_dict_model = NamespaceMachine.TestCase


class HugeBlockMachine(NamespaceMachine):
    """The same, on a region of 2 MiB blocks (``--block-size 2M``): 20 blocks."""

    BLOCK = 2 * MIB
    REGION = 21 * 2 * MIB


HugeBlockMachine.TestCase.settings = settings(
    NamespaceMachine.TestCase.settings, max_examples=max(10, EXAMPLES // 5)
)
test_namespace_on_huge_blocks = HugeBlockMachine.TestCase


# -- regressions found by the machine ------------------------------------------


def _volume() -> tuple[str, Namespace, Caller]:
    d = tempfile.mkdtemp(prefix="daxfs-ns-", dir="/dev/shm")
    region = os.path.join(d, "region")
    format_volume(region, region + ".meta", REGION_SIZE, BS)
    ns = open_namespace(region, region + ".meta", Clock())
    return d, ns, Caller(client=ns.hello().id)


def _store_past_eof(ns: Namespace, fh: int, caller: Caller) -> None:
    """A client stores through a write layout past EOF and never commits."""
    layout = ns.get_layout(fh, 0, 1, caller, write=True)
    (ext,) = layout.extents
    assert ext.region_offset is not None
    ns.region.u8[ext.region_offset] = 0x55


def test_write_past_eof_does_not_expose_uncommitted_layout_stores() -> None:
    d, ns, caller = _volume()
    try:
        fh = ns.create("/f", 0o644, caller).handle
        _store_past_eof(ns, fh, caller)
        ns.write(fh, 1, b"x", caller)
        assert ns.read(fh, 0, 2, caller) == b"\0x"
    finally:
        close_volume(ns)
        shutil.rmtree(d, ignore_errors=True)


def test_fallocate_past_eof_does_not_expose_uncommitted_layout_stores() -> None:
    d, ns, caller = _volume()
    try:
        fh = ns.create("/f", 0o644, caller).handle
        _store_past_eof(ns, fh, caller)
        ns.fallocate(fh, 0, 2, caller)
        assert ns.read(fh, 0, 2, caller) == b"\0\0"
    finally:
        close_volume(ns)
        shutil.rmtree(d, ignore_errors=True)
