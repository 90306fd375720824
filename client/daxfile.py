"""An open file of the client core: byte I/O, layouts and numpy views over the shared region.

A :class:`DaxFile` reads and writes by copying between the caller's buffer and
the file's extents in the region; the server only answers layout calls, and a
cached layout costs no RPC. It reaches the client it belongs to through
:class:`FileHost`, the part of ``daxfs.client.library.Client`` a file needs
(so this module does not import the library: no cycle).
"""

from __future__ import annotations

import io
import logging
import math
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from daxfs.client import rpc
from daxfs.client.fence import Fence
from daxfs.client.inodes import Inode, Inodes
from daxfs.client.layout_cache import LayoutCache, RegionRange
from daxfs.client.lease_state import LeaseState
from daxfs.client.session import SessionState
from daxfs.client.views import address_of, map_tiles
from daxfs.shared import errors, growth
from daxfs.shared.attr import Attr, SetAttr
from daxfs.shared.extent import MAX_FILE_SIZE, Extent, FileHandle, Layout, align_up
from daxfs.shared.flush import FlushMode
from daxfs.shared.format import MIB
from daxfs.shared.permissions import Identity
from daxfs.shared.region import Region

log = logging.getLogger(__name__)

#: Largest piece a write copies between two looks at the lease deadline; it
#: bounds what a client frozen mid-copy can still store (server/leases.py).
COPY_PIECE = 4 * MIB
#: Layout grants discarded in a row (each overtaken by a recall) before giving up.
STALE_GRANT_RETRIES = 8
#: What a hole reads as, for :meth:`DaxFile.send_segments` (longer holes get their own zeros).
_ZEROS = bytes(MIB)


def _zeros(n: int) -> memoryview:
    """``n`` zero bytes (a hole's), without allocating for holes up to 1 MiB."""
    return memoryview(_ZEROS if n <= len(_ZEROS) else bytes(n))[:n]


class FileHost(Protocol):
    """What a :class:`DaxFile` needs of its client (``daxfs.client.library.Client``)."""

    server: rpc.Server
    region: Region
    block_size: int
    layouts: LayoutCache
    fence: Fence
    lease_state: LeaseState
    inodes: Inodes
    state: SessionState

    @property
    def session_epoch(self) -> int: ...

    def lease_valid(self) -> bool: ...

    def fattr(self, handle: FileHandle, caller: Identity | None = None) -> Attr: ...

    def set_attr(
        self,
        changes: SetAttr,
        path: str | None = None,
        *,
        handle: FileHandle | None = None,
        caller: Identity | None = None,
    ) -> Attr: ...


@dataclass(frozen=True, slots=True)
class IoCopy:
    """An open file as a compiled copy path may serve it (:meth:`DaxFile.io_copy`)."""

    #: The visible size: a read past it is short, a write past it is growth (not for the copy).
    size: int
    #: Mapped tiles the layout cache holds, (file offset, length, region offset) in file order.
    tiles: list[tuple[int, int, int]]
    readable: bool
    #: May overwrite mapped bytes inside ``size``.
    writable: bool


def refresh(client: FileHost, inode: Inode, handle: FileHandle) -> None:
    """After recalls of the file the inode's size does not reflect: one GetAttr for the inode.

    ``handle``: a server handle of the inode's session (any open file's).
    """
    recalls = client.inodes.recall_count(inode.ino)
    if not inode.stale(recalls):
        return
    version = inode.version()
    attr = client.server.get_attr(handle=handle)
    inode.refreshed(attr.size, recalls, version)


def publish(client: FileHost, inode: Inode, handle: FileHandle) -> None:
    """Tell the server, through writable ``handle``, what the inode has that it lacks.

    Growth past the server's size and the mtime of writes (CommitLayout).
    After a recall the size is learnt first, so a truncate by another client
    is never undone by growth it discarded. Call with ``inode.publishing`` held.
    """
    refresh(client, inode, handle)
    plan = inode.to_publish()
    if plan is None:
        return
    client.server.commit_layout(handle, plan.new_size)
    inode.published_as(plan)


def publish_inode(client: FileHost, inode: Inode) -> None:
    """Publish what the inode has that the server lacks, through any open file that may write.

    Before a size or time change that does not go through a writable open
    file (a truncate by path, futimens of a read-only one). Nothing to do
    when no open file of the inode may write, or its session ended.
    """
    if inode.session != client.session_epoch:
        return
    with inode.publishing:
        handle = inode.any_writer()
        if handle is not None:
            publish(client, inode, FileHandle(handle))


@dataclass(frozen=True, slots=True)
class OpenMode:
    read: bool
    write: bool
    create: bool
    truncate: bool
    exclusive: bool
    append: bool

    @classmethod
    def parse(cls, mode: str) -> OpenMode:
        """Python's binary open() modes: rb, r+b, wb, w+b, ab, a+b, xb, x+b."""
        chars = set(mode)
        if (
            "b" not in chars
            or len(mode) != len(chars)
            or not chars <= set("rwaxb+")
            or len(chars & set("rwax")) != 1
        ):
            raise errors.InvalidArgument(
                f"invalid mode {mode!r}: use a binary mode such as 'rb', 'r+b', 'wb', 'ab'"
            )
        plus = "+" in chars
        kind = (chars & set("rwax")).pop()
        return cls(
            read=kind == "r" or plus,
            write=kind != "r" or plus,
            create=kind in "wax",
            truncate=kind == "w",
            exclusive=kind == "x",
            append=kind == "a",
        )


class DaxFile(io.RawIOBase):
    """An open daxfs file. Not thread-safe; open one per thread.

    What the client knows of the file (its size, published or not, and the
    recalls that size reflects) is shared by every open file of the client on
    the same inode (client/inodes.py): a write past EOF through one is the
    size all the others read up to and report, and a truncate through one
    publishes the others' growth first.
    """

    def __init__(
        self,
        client: FileHost,
        path: str,
        mode: OpenMode,
        handle: FileHandle,
        attr: Attr,
        layout: Layout | None = None,
        session_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.path = path
        self.mode_info = mode
        self.handle = handle
        self.ino = attr.ino
        #: The file's attributes when it was opened.
        self.attr = attr
        self._pos = 0
        #: close() has begun: what it publishes, it publishes itself.
        self._closing = False
        self._u8 = client.region.u8
        #: The region as bytes (memoryview slices copy for less than numpy's).
        self._region = self._u8.data
        self._bs = client.block_size
        # The session the open was sent in (a reply can outlive it).
        self._session_epoch = client.session_epoch if session_epoch is None else session_epoch
        #: Shared with every other open file of this client on the inode.
        self._inode = (
            client.inodes.open(
                attr,
                self._session_epoch,
                truncated=mode.truncate,
                writer=handle if mode.write else None,
            )
            if self._session_epoch == client.session_epoch
            else Inode(attr, epoch=0, session=self._session_epoch, opens=1)  # void already
        )
        if layout is not None:
            # Granted with the open (OpenRequest.layout): taken as a GetLayout reply is.
            try:
                usable = (
                    self._accept_layout(
                        layout, layout.file_offset, layout.file_offset + layout.length
                    )
                    is not None
                )
            except errors.StaleHandle:
                usable = False  # the session ended: every call on this file says so
            if not usable:
                # A recall overtook the reply, so the size it came with may be
                # stale too: the first copy learns it again.
                self._inode.unsure()

    # -- io.RawIOBase --------------------------------------------------------

    def readable(self) -> bool:
        return self.mode_info.read

    def writable(self) -> bool:
        return self.mode_info.write

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        """The file size as this client sees it (including growth not yet published)."""
        return self._inode.size

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._inode.size + offset
        else:
            raise errors.InvalidArgument(f"bad whence {whence}")
        if pos < 0:
            raise errors.InvalidArgument(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        if size is None or size < 0:
            size = max(self._inode.size - self._pos, 0)
        data = self.pread(size, self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        dst = np.frombuffer(buffer, dtype=np.uint8)
        n = self.preadinto(dst, self._pos)
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        self._check_open()
        if self.mode_info.append:
            n = self.append(data)
            self._pos = self._inode.size
            return n
        n = self.pwrite(data, self._pos)
        self._pos += n
        return n

    def append(self, data: Any) -> int:
        """Store ``data`` at the end of the file (O_APPEND); returns the count.

        The end is the size this client sees; appends through any of its open
        files of the inode are serialised, so no two start at the same end.
        """
        self._check_open()
        with self._inode.appending:
            return self.pwrite(data, self._inode.size)

    # -- positional I/O ------------------------------------------------------

    def _check_lease(self) -> None:
        """Refuse copies while fenced; after a recall of this file, learn its size again."""
        client = self.client
        if self.session_lost:
            raise errors.StaleHandle(
                f"{self.path}: the server ended the session this file was opened in "
                "(it restarted, or presumed this client gone); reopen it"
            )
        if not client.lease_valid():
            raise errors.StaleHandle("the client's lease lapsed; its layouts are fenced")
        refresh(client, self._inode, self.handle)

    def _layout(self, start: int, end: int, *, write: bool) -> list[Extent]:
        """Tiles for [start, end), from the cache or one GetLayout."""
        cached = self.client.layouts.lookup(self.ino, start, end)
        if cached is not None and (not write or not any(t.hole for t in cached)):
            return cached
        ask_start, ask_end = start, end
        if write:
            alloc_end = self.client.layouts.allocated_end(self.ino)
            if end > alloc_end:
                # Growing: ask for a chunk so appending writers need few layouts.
                ask_end = align_up(end, self._bs) + growth.chunk(
                    end, self._bs, self.client.region.superblock.data_size
                )
                ask_end = min(ask_end, max(end, MAX_FILE_SIZE))
        else:
            # Reads: one layout for the whole file, so later reads cost no RPC.
            ask_start, ask_end = 0, max(end, align_up(self._inode.size, self._bs))
        try:
            tiles = self._fetch_layout(ask_start, ask_end, write)
        except errors.NoSpace:
            if (ask_start, ask_end) == (start, end):
                raise
            # The growth chunk was only a hint: retry with exactly what is needed.
            tiles = self._fetch_layout(start, end, write)
        return [p for t in tiles if (p := t.clip(start, end)) is not None]

    def _fetch_layout(self, start: int, end: int, write: bool) -> list[Extent]:
        """One GetLayout for [start, end), cached and its lease noted.

        A grant that a recall of this file overtook (its recall_seq is below one
        we have seen) may name freed blocks: it is discarded and asked again.
        Check and insert happen under the fence's shared lock, so a recall
        (which takes it exclusively) is either seen here or comes after the
        insert and invalidates it.
        """
        for _attempt in range(STALE_GRANT_RETRIES):
            tiles = self._accept_layout(self._get_layout(start, end, write), start, end)
            if tiles is not None:
                return tiles
            log.debug("layout of ino %d overtaken by a recall: asking again", self.ino)
        raise errors.StaleHandle(f"{self.path}: every layout granted was recalled at once")

    def _accept_layout(self, reply: Layout, start: int, end: int) -> list[Extent] | None:
        """Cache a granted layout of [start, end) and note its lease; None if a recall overtook it.

        Every grant comes through here, from a GetLayout or with the open.
        """
        tiles = list(reply.extents)
        with self.client.fence.io.shared():
            if self.session_lost:
                # The reply outlived its session (a reply held past a restart or
                # an eviction): its blocks may be another file's by now.
                raise errors.StaleHandle(
                    f"{self.path}: the session this file was opened in ended; reopen it"
                )
            # The lease exists under this grant's id even if the layout is discarded.
            self.client.state.got_lease(self.ino, reply.lease_id)
            if not self.client.lease_state.grant_usable(self.ino, reply.recall_seq):
                return None
            self.client.layouts.insert(self.ino, tiles, start, end)
        return tiles

    def _get_layout(self, start: int, end: int, write: bool) -> Layout:
        return self.client.server.get_layout(self.handle, start, end - start, write=write)

    def layout(self, offset: int, length: int) -> list[Extent]:
        """Extents of [offset, offset+length); holes have region_offset None. Takes a layout."""
        if offset < 0 or length < 0:
            raise errors.InvalidArgument("negative offset or length")
        if length == 0:
            return []
        if not self.mode_info.read:
            return list(
                self.client.server.get_layout(self.handle, offset, length, write=True).extents
            )
        return self._layout(offset, offset + length, write=False)

    def preadinto(self, dst: npt.NDArray[np.uint8], offset: int) -> int:
        """Copy bytes at ``offset`` into ``dst`` (stops at EOF); returns the count."""
        self._check_open()
        if not self.mode_info.read:
            raise errors.BadHandle("file not open for reading")
        if offset < 0:
            raise errors.InvalidArgument(f"negative offset {offset}")
        self._check_lease()
        end = min(self._inode.size, offset + len(dst))
        if end <= offset:
            return 0
        tiles = self._layout(offset, end, write=False)
        with self.client.fence.io.shared():
            if self.client.layouts.lookup(self.ino, offset, end) is None:
                return self.preadinto(dst, offset)  # recalled meanwhile: start over
            for tile in tiles:
                a, b = tile.file_offset - offset, tile.file_end - offset
                if tile.region_offset is None:
                    dst[a:b] = 0
                else:
                    r = tile.region_offset
                    dst[a:b] = self._u8[r : r + tile.length]
        self._validate_copy()
        return end - offset

    def send_segments(
        self, offset: int, size: int, send: Callable[[list[memoryview]], None]
    ) -> int:
        """Hand ``send`` the bytes of [offset, offset + size) (cut at EOF) as views of
        the region, in order; returns their count.

        For a caller that copies them once and cannot take the copy back: the
        FUSE kernel backend hands them to one writev on /dev/fuse, and the
        kernel copies them straight into the reader's buffer. preadinto
        validates the lease *after* its copy and discards the bytes if it
        lapsed; here the lease is checked *before*, under the fence's shared
        lock, which is held until ``send`` returns so a recall of these extents
        waits for the copy. The residual risk and its bound are in the README
        (the layout safety invariant, "one-copy reads"). Holes are zeros. The
        views are valid only during ``send``.

        This is the mount's per-request path (a 4 KiB READ), so it looks the
        layout up once, under the fence (a recall invalidates under the
        exclusive side, so a tile found there stays good until the release),
        and asks the server only on a miss, outside the fence.
        """
        self._check_open()
        if not self.mode_info.read:
            raise errors.BadHandle("file not open for reading")
        if offset < 0:
            raise errors.InvalidArgument(f"negative offset {offset}")
        client = self.client
        io = client.fence.io
        while True:
            self._check_lease()
            end = min(self._inode.size, offset + size)
            if end <= offset:
                send([])
                return 0
            io.acquire_shared()
            try:
                ranges = client.layouts.ranges(self.ino, offset, end)
                if ranges is not None:
                    if not client.lease_valid():
                        raise errors.StaleHandle(
                            "the client's lease lapsed; its layouts are fenced"
                        )
                    region = self._region
                    send([_zeros(n) if r is None else region[r : r + n] for r, n in ranges])
                    return end - offset
            finally:
                io.release_shared()
            self._layout(offset, end, write=False)  # a miss, or recalled meanwhile

    def io_copy(self) -> IoCopy | None:
        """What a compiled copy path may serve this file's reads and overwrites
        from, as the client knows it now (:class:`IoCopy`). None when every
        request must come through :meth:`send_segments` and :meth:`pwrite`
        (closed, its session lost, its size to be learnt again after a recall).
        The copy is only as good as the moment it was taken:
        ``SessionState.watch_copies`` says when it must be dropped.
        """
        if self.closed or self._closing or self.session_lost:
            return None
        inode = self._inode
        if inode.stale(self.client.inodes.recall_count(inode.ino)):
            return None
        how = self.mode_info
        return IoCopy(
            inode.size,
            self.client.layouts.mapped(self.ino),
            readable=how.read,
            # Not an append (its offset is the end this client knows), nor a
            # write that must clear a set-id bit first (kill_setid).
            writable=how.write and not how.append and not inode.has_setid(),
        )

    def overwrote(self, start: int, end: int) -> None:
        """A compiled copy path stored bytes [start, end) inside the size: the file
        is dirty (its mtime moves at the next publication) and an fsync persists them."""
        self._inode.overwrote(start, end)

    def pread(self, size: int, offset: int) -> bytes:
        self._check_open()
        if size < 0:
            raise errors.InvalidArgument(f"negative size {size}")
        if not self.mode_info.read:
            raise errors.BadHandle("file not open for reading")
        if offset < 0:
            raise errors.InvalidArgument(f"negative offset {offset}")
        self._check_lease()
        end = min(self._inode.size, offset + size)
        if end <= offset:
            return b""
        tiles = self._layout(offset, end, write=False)
        if len(tiles) == 1 and tiles[0].region_offset is not None:
            r = tiles[0].region_offset
            with self.client.fence.io.shared():
                if self.client.layouts.lookup(self.ino, offset, end) is not None:
                    data = self._u8[r : r + tiles[0].length].tobytes()  # one copy
                    self._validate_copy()
                    return data
        out = np.empty(end - offset, dtype=np.uint8)
        # The size may shrink meanwhile (a recall): only what was copied is data.
        n = self.preadinto(out, offset)
        return out[:n].tobytes()

    def pwrite(self, data: Any, offset: int) -> int:
        """Store ``data`` at ``offset``; the new size is published by flush/fsync/close.

        Every open file of this client on the inode sees the new size at once.
        """
        self._check_open()
        if not self.mode_info.write:
            raise errors.BadHandle("file not open for writing")
        if offset < 0:
            raise errors.InvalidArgument(f"negative offset {offset}")
        src = memoryview(data)
        if src.ndim != 1 or src.format != "B":
            src = src.cast("B")
        if offset + len(src) > MAX_FILE_SIZE:
            # As write(2) at the file size limit: the part that fits, else EFBIG.
            if offset >= MAX_FILE_SIZE:
                raise errors.FileTooBig(f"offset {offset} is at or past the largest file size")
            src = src[: MAX_FILE_SIZE - offset]
        n = len(src)
        if n == 0:
            return 0
        end = offset + n
        client = self.client
        io = client.fence.io
        while True:
            self._check_lease()
            # One lookup, under the fence (see send_segments); the server is
            # asked only on a miss or for a hole, outside it.
            io.acquire_shared()
            try:
                ranges = client.layouts.ranges(self.ino, offset, end, mapped=True)
                if ranges is not None:
                    self._store(ranges, src)
                    break
            finally:
                io.release_shared()
            if any(t.region_offset is None for t in self._layout(offset, end, write=True)):
                raise errors.StaleHandle("server returned a hole for a WRITE layout")
        self._inode.wrote(offset, end)
        return n

    def _store(self, ranges: list[RegionRange], src: memoryview) -> None:
        """Copy ``src`` into the mapped region ``ranges`` (in file order); under the fence."""
        region = self._region
        f = 0
        for r, n in ranges:
            assert r is not None
            # In pieces, each after a look at the clock: a client frozen past
            # its lease mid-copy (with its stream down) finishes one piece at
            # most into blocks that may have been reused (leases.py).
            for lo in range(0, n, COPY_PIECE):
                if not self.client.lease_valid():
                    raise errors.StaleHandle("the client's lease lapsed during the write")
                hi = min(lo + COPY_PIECE, n)
                region[r + lo : r + hi] = src[f + lo : f + hi]
            f += n

    def kill_setid(self, writer: Callable[[], Identity]) -> None:
        """Before a write by ``writer``: clear the set-id bits as Linux does.

        A write by anyone but root clears S_ISUID, and S_ISGID when group
        execute is set or the writer is not in the file's group. ``writer`` is
        asked only when the file has such a bit. The FUSE edge calls this
        before each write (the kernel leaves it to the filesystem for direct
        I/O); the library's own writes do not.
        """
        self._check_open()
        if not self._inode.has_setid():
            return
        who = writer()
        kill = self._inode.setid_to_clear(who)
        if not kill:
            return
        attr = self.set_attr(SetAttr(mode=self._inode.mode & ~kill), who)
        self._inode.saw(attr)

    def _validate_copy(self) -> None:
        """After a read: if our lease may have lapsed during the copy, its bytes may be foreign."""
        if not self.client.lease_valid():
            raise errors.StaleHandle(
                "the client's lease lapsed during the read (was it frozen?); read again"
            )

    def truncate(self, size: int | None = None) -> int:
        """ftruncate: publishes every open file's growth first, then sets the size."""
        self._check_open()
        if not self.mode_info.write:
            raise errors.BadHandle("file not open for writing")
        if size is None:
            size = self._pos
        self.set_attr(SetAttr(size=size))
        return self._inode.size

    def stat(self, caller: Identity | None = None) -> Attr:
        """fstat: the file's attributes, with the size as this client sees it."""
        self._check_open()
        return self.client.fattr(self.handle, caller)

    def setattr(
        self,
        *,
        caller: Identity | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        atime_now: bool = False,
        mtime_now: bool = False,
    ) -> Attr:
        """fchmod, fchown, ftruncate and futimens through this open file:
        :meth:`set_attr` with the keywords as a :class:`SetAttr`."""
        changes = SetAttr(mode, uid, gid, size, atime_ns, mtime_ns, atime_now, mtime_now)
        return self.set_attr(changes, caller)

    def set_attr(self, changes: SetAttr, caller: Identity | None = None) -> Attr:
        """Change what ``changes`` gives, through this open file.

        A size or time change publishes first what this client wrote (a
        truncate up would otherwise zero writes the server does not know of,
        and a later CommitLayout would overwrite explicit times with now).
        Returns the attributes with the size as this client sees it.
        """
        self._check_open()
        if changes.touches_data:
            if self.mode_info.write:
                self._commit()
            else:
                publish_inode(self.client, self._inode)
        return self.client.set_attr(changes, handle=self.handle, caller=caller)

    def allocate(
        self,
        offset: int,
        length: int,
        *,
        keep_size: bool = False,
        contiguous: bool = False,
        punch_hole: bool = False,
        zero_range: bool = False,
    ) -> None:
        """fallocate: back [offset, offset+length) with storage; ``contiguous`` as one extent.

        The way to write a file of known size with one layout: ``allocate(0,
        size)`` takes a WRITE layout of the range along with the storage, so
        the writes (or one :meth:`array` of the whole file) that follow make no
        layout call. The allocation is kept at
        close (not trimmed like the speculative growth of appends, see
        ``daxfs.shared.growth``).

        ``punch_hole`` (with ``keep_size``) frees the range's blocks;
        ``zero_range`` makes it read as zeros (see AllocateRequest).
        """
        self._check_open()
        # Growth this client wrote first: a growing fallocate zeroes past the server's size.
        self._commit()
        attr = self.client.server.allocate(
            self.handle,
            offset,
            length,
            keep_size=keep_size,
            contiguous=contiguous,
            punch_hole=punch_hole,
            zero_range=zero_range,
        )
        self.client.layouts.invalidate(self.ino)
        self._inode.allocated(attr.size)
        if self.mode_info.write and length > 0 and not punch_hole:
            # The one layout: writes into the range, or an array() of it, need no other.
            self._fetch_layout(offset, offset + length, write=True)

    # -- visibility and durability ------------------------------------------

    @property
    def session_lost(self) -> bool:
        """True once the session this file was opened in ended (server restart, eviction)."""
        return self._session_epoch != self.client.session_epoch

    def _commit(self) -> None:
        """Publish what this client wrote to the file (any of its open files of it)."""
        if not self.mode_info.write:
            return
        with self._inode.publishing:
            self._commit_locked()

    def _commit_locked(self) -> None:
        if self.session_lost:
            if self._inode.to_publish() is None:
                return
            self._inode.lost()
            raise errors.StaleHandle(
                f"{self.path}: the session ended before this file's new size was published; "
                "writes past its old end are lost"
            )
        publish(self.client, self._inode, self.handle)

    def flush(self) -> None:
        """Publish size and mtime to the server (CommitLayout). Bytes are visible already."""
        if self.closed or self._closing:
            # close() published already, and then released the handle: the
            # flush io.IOBase.close() makes last must not use it (a recall of
            # the file arriving in between made it ask the server, by the
            # released handle, and fail ESTALE).
            return
        self._commit()

    def persist(self, offset: int = 0, length: int | None = None) -> FlushMode:
        """Make bytes [offset, offset+length) durable; returns the flush path used."""
        self._check_open()
        if length is None:
            length = max(self._inode.size - offset, 0)
        if offset < 0 or length < 0:
            raise errors.InvalidArgument("negative offset or length")
        region = self.client.region
        if length:
            for tile in (
                self._layout(offset, offset + length, write=False)
                if self.mode_info.read
                else self.layout(offset, length)
            ):
                if tile.region_offset is not None:
                    region.persist(tile.region_offset, tile.length)
        region.flusher.drain()
        return region.flush_mode

    def fsync(self, *, written_only: bool = False) -> None:
        """persist() every byte, then publish size and mtime.

        ``written_only``: persist only the ranges written (pwrite, through any
        open file of this client on the inode) since the last fsync that did,
        as a FUSE fsync needs: every write of the kernel arrives that way. Not
        for a file whose numpy views were stored to.
        """
        self._check_open()
        spans = self._inode.take_written()
        try:
            if not written_only:
                self.persist(0, self._inode.size)
            for span in spans if written_only else ():
                if span.end > span.start:
                    self.persist(span.start, span.end - span.start)
            self._commit()
        except BaseException:
            self._inode.put_back(spans)
            raise

    def close(self, *, release_later: bool = False) -> None:
        """Publish what this handle wrote (size, mtime), then release it.

        A reader's Release goes out after this returns (client/release_queue.py);
        a writer's before, since it trims the file's preallocation, which every
        guest sees. ``release_later``: a writer's goes out after too (the FUSE
        mount: close(2) returned at FLUSH, before the kernel sent RELEASE).
        """
        if self.closed:
            return
        self._closing = True
        try:
            if self.mode_info.write:
                with self._inode.publishing:
                    try:
                        self._commit_locked()
                    finally:
                        # No publication on behalf of the inode goes through
                        # this handle after this (it is about to be released).
                        self._inode.drop_writer(self.handle)
        finally:
            try:
                # The lease goes back with the handle, in one call and first: a
                # release that frees blocks (unlinked file, trimmed
                # preallocation) then needs no recall.
                lease_id = self.client.state.closed_file(self._inode)
                if not self.session_lost:  # else the server forgot the handle already
                    if self.mode_info.write and not release_later:
                        # A writer's release trims the file's preallocation,
                        # which every guest sees (st_blocks, free space): done
                        # before close returns.
                        try:
                            self.client.server.release(self.handle, return_lease_id=lease_id or 0)
                        except errors.StaleHandle:
                            pass  # the server restarted and forgot the handle
                    else:
                        # A reader's goes out after close returns, before this
                        # client's next call (client/release_queue.py), in the
                        # session the file is in now, whenever it goes out.
                        self.client.server.release_later(self.handle, return_lease_id=lease_id or 0)
            finally:
                super().close()
                self._u8 = None  # type: ignore[assignment]
                self._region = None  # type: ignore[assignment]

    def __enter__(self) -> DaxFile:
        return self

    # -- zero-copy view ------------------------------------------------------

    def array(
        self, dtype: npt.DTypeLike = np.uint8, shape: int | tuple[int, ...] | None = None
    ) -> npt.NDArray[Any]:
        """A numpy array whose memory is the file's extents in the region (zero copy).

        ``shape`` None gives a 1-D array over the whole file. A writable file
        grows to fit a larger shape (like ``np.memmap`` mode 'r+'); a read-only
        one refuses. Stores are visible to other guests at once; call
        :meth:`persist` for durability. The array stays valid after the file is
        closed; a truncate or unlink elsewhere may make its bytes read as zeros.
        """
        self._check_open()
        dt = np.dtype(dtype)
        if dt.itemsize == 0:
            raise errors.InvalidArgument("dtype with no size")
        size = self._inode.size
        if shape is None:
            if size % dt.itemsize:
                raise errors.InvalidArgument(
                    f"file size {size} is not a multiple of {dt} ({dt.itemsize} bytes)"
                )
            shape_t: tuple[int, ...] = (size // dt.itemsize,)
        else:
            shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
        if any(s < 0 for s in shape_t):
            raise errors.InvalidArgument(f"negative dimension in {shape_t}")
        nbytes = math.prod(shape_t) * dt.itemsize
        writable = self.mode_info.write
        if nbytes > size and not writable:
            raise errors.InvalidArgument(
                f"shape {shape_t} needs {nbytes} bytes but the file has {size} "
                "and is open read-only"
            )
        if nbytes == 0:
            return np.empty(shape_t, dtype=dt)
        span = align_up(nbytes, max(self._bs, mmap.PAGESIZE))
        self._check_lease()
        for _attempt in range(STALE_GRANT_RETRIES):
            if writable:
                tiles = self._layout(0, span, write=True)
                if nbytes > self._inode.size:
                    self._inode.grew(nbytes)
                    self._commit()
            else:
                tiles = self._layout(0, span, write=False)
            # Mapped and registered under the fence's shared lock, with the layout
            # still cached: a recall either fences this view or came before it
            # (then map afresh), so a recalled range never stays mapped,
            # populated or not.
            with self.client.fence.io.shared():
                if self.client.layouts.lookup(self.ino, 0, span) is None:
                    continue  # recalled meanwhile: ask again
                view, base = map_tiles(self.client.region, tiles, span, writable)
                self.client.fence.register(self.ino, view, base, span)
                break
        else:
            raise errors.StaleHandle(f"{self.path}: every layout granted was recalled at once")
        start = base - address_of(view)
        arr = np.frombuffer(view, dtype=dt, count=nbytes // dt.itemsize, offset=start)
        arr = arr.reshape(shape_t)
        if not writable:
            arr.flags.writeable = False
        return arr
