"""The FUSE edge: POSIX calls from the guest kernel, answered by the client library.

``DaxfsOperations`` is an mfusepy ``Operations`` built on one :class:`Client`
(one region mapping, one layout cache). Namespace calls become one RPC each,
sent with the credentials of the process that made the system call
(``fuse_get_context``), so the server enforces permission bits per request.
Open files are :class:`DaxFile` objects: a read or write is a memory copy
between the kernel's FUSE buffer and the file's extents in the region; the
server sees layout calls only.

Every handler maps its own errors (``_edge``): a :class:`DaxfsError` becomes
its errno, anything else is logged and becomes EIO (mfusepy would say EINVAL).

``DaxfsFuse`` is the binding's ``FUSE`` class with three callbacks replaced:
``read``/``write`` hand the operations libfuse's buffer (no bytes object in
between: one memcpy per request, region to buffer or back), and ``rename``
passes renameat2 flags through (mfusepy 3.1.1 drops them, which would turn
RENAME_NOREPLACE into a replacing rename). ``init_with_config`` raises
``max_write`` so that the kernel sends reads and writes of up to 1 MiB.

Sizes within one mount: a write past EOF is published to the server at
flush/fsync/close (CommitLayout), like every daxfs client. Until then the
client core knows the larger size, one per inode for every open file of it
(``daxfs.client.inodes``), and getattr reports it, so the kernel, ``fstat``
and O_APPEND see every local write at once. Once everything is published the
server's size wins again, so truncates by other guests show (at once through
a layout recall, else at the next stat). The operations here only translate:
the size model, set-id clearing, O_APPEND and fsync's ranges are the core's.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import json
import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import mfusepy
import numpy as np
import numpy.typing as npt

from daxfs.client.daxfile import IoCopy
from daxfs.client.fuse.kernel.fastio import Counts
from daxfs.client.library import Client, DaxFile, OpenMode
from daxfs.shared import errors
from daxfs.shared.attr import Attr, SetAttr
from daxfs.shared.errors import DaxfsError
from daxfs.shared.format import MIB
from daxfs.shared.limits import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    MAX_RPC_IO,
)
from daxfs.shared.permissions import Identity

log = logging.getLogger(__name__)

#: Largest read/write the kernel is asked to send (FUSE max_write, and through
#: libfuse's FUSE_MAX_PAGES reply, max_pages = 256 pages of 4 KiB).
MAX_KERNEL_REQUEST = 1 * MIB
assert MAX_KERNEL_REQUEST <= MAX_RPC_IO

#: Read-only virtual attribute: the file's extent map, one
#: "FILE_OFFSET REGION_OFFSET LENGTH" line per extent (bytes, decimal), like FIEMAP.
XATTR_EXTENTS = "user.daxfs.extents"
#: Read-only virtual attribute (any path): JSON counters of the reads and
#: writes this mount received from the kernel, with their largest sizes.
XATTR_IOSTATS = "user.daxfs.iostats"
_VIRTUAL = (XATTR_EXTENTS, XATTR_IOSTATS)

#: libfuse's FUSE_UNKNOWN_INO: a directory entry whose inode number is not given.
UNKNOWN_INO = 0xFFFFFFFF

#: How long a mutating call's reply may answer the getattr that libfuse sends after it.
FRESH_S = 0.5

#: libfuse's name for an unlinked file that is still open; not listed.
HIDDEN_PREFIX = ".fuse_hidden"

#: utimensat's special nanosecond values, as libfuse passes them through.
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

F = TypeVar("F", bound=Callable[..., Any])


def _edge(fn: F) -> F:
    """The one place where a handler's failure becomes an errno."""

    @functools.wraps(fn)
    def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except DaxfsError as exc:
            log.debug("%s: %s (errno %d)", fn.__name__, exc, exc.code)
            raise mfusepy.FuseOSError(exc.code) from None
        except Exception:
            log.exception("FUSE %s failed; answering EIO", fn.__name__)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return cast(F, handler)


def _kernel_buffer(address: int, size: int) -> npt.NDArray[np.uint8]:
    """A numpy view (no copy) of libfuse's request buffer at ``address``."""
    return np.frombuffer(memoryview((ctypes.c_uint8 * size).from_address(address)), np.uint8)


def _groups_of(pid: int) -> list[int]:
    """Supplementary groups of the calling process (empty when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except OSError:
        pass
    return []


def _stat_dict(a: Attr) -> dict[str, int]:
    return {
        "st_ino": a.ino,
        "st_mode": a.mode,
        "st_nlink": a.nlink,
        "st_uid": a.uid,
        "st_gid": a.gid,
        "st_size": a.size,
        "st_blocks": (a.allocated + 511) // 512,
        "st_blksize": a.blksize,
        "st_rdev": a.rdev,
        "st_atime": a.atime_ns,
        "st_mtime": a.mtime_ns,
        "st_ctime": a.ctime_ns,
    }


def _may(a: Attr, caller: Identity, amode: int) -> bool:
    """access(2) by mode bits, the rule the server applies on every real operation."""
    return caller.may(a.mode, a.uid, a.gid, amode)


class IoStats:
    """Reads and writes as the kernel sent them. Guarded by ``self._lock``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reads = 0
        self.read_bytes = 0
        self.read_max = 0
        self.writes = 0
        self.write_bytes = 0
        self.write_max = 0
        self.read_sizes: Counter[int] = Counter()
        self.write_sizes: Counter[int] = Counter()
        #: Requests the kernel sent, by operation (the kernel backend counts them
        #: all; reads and writes are counted on both backends).
        self.requests: Counter[str] = Counter()
        #: What a compiled path answered (kernel/fastio.py ``FastPath.counts``).
        self.compiled: Callable[[], Counts] | None = None

    def request(self, op: str) -> None:
        with self._lock:
            self.requests[op] += 1

    def read(self, size: int) -> None:
        with self._lock:
            self.requests["READ"] += 1
            self.reads += 1
            self.read_bytes += size
            self.read_max = max(self.read_max, size)
            self.read_sizes[size] += 1

    def write(self, size: int) -> None:
        with self._lock:
            self.requests["WRITE"] += 1
            self.writes += 1
            self.write_bytes += size
            self.write_max = max(self.write_max, size)
            self.write_sizes[size] += 1

    def to_json(self, rpcs: Mapping[str, int] | None = None, carried: int = 0) -> bytes:
        """The counts as JSON; ``rpcs``: the client's calls by method, reported
        too, and ``carried``: how many of them rode with another call (a queued
        release in the next call's frame) instead of a round trip of their own.

        READs a compiled path answered count as any other (and by themselves:
        ``compiled_reads``, with ``compiled_fallbacks`` it left to Python)."""
        c = Counts(0, 0, 0, {}, 0, 0, {}) if self.compiled is None else self.compiled()
        with self._lock:
            read_sizes = self.read_sizes + Counter(c.sizes)
            write_sizes = self.write_sizes + Counter(c.write_sizes)
            requests = self.requests + Counter({"READ": c.reads, "WRITE": c.writes})
            doc = {
                "reads": self.reads + c.reads,
                "read_bytes": self.read_bytes + c.read_bytes,
                "read_max": max([self.read_max, *c.sizes]),
                "writes": self.writes + c.writes,
                "write_bytes": self.write_bytes + c.write_bytes,
                "write_max": max([self.write_max, *c.write_sizes]),
                "compiled_reads": c.reads,
                "compiled_writes": c.writes,
                "compiled_fallbacks": c.fallbacks,
                "compiled_refused": c.refused,
                # The five most frequent request sizes, {size: count}.
                "read_sizes": dict(read_sizes.most_common(5)),
                "write_sizes": dict(write_sizes.most_common(5)),
                "requests": dict(+requests),
                "rpcs": dict(rpcs or {}),
                "rpcs_carried": carried,
            }
        return json.dumps(doc, sort_keys=True).encode()


class _Handle:
    """One FUSE open: a DaxFile (a server handle). ``lock`` guards ``file``."""

    __slots__ = ("file", "lock")

    def __init__(self, file: DaxFile) -> None:
        self.file = file
        self.lock = threading.Lock()


class DaxfsOperations(mfusepy.Operations):  # type: ignore[misc]
    """The daxfs FUSE filesystem. Thread-safe: libfuse calls it from many threads."""

    #: Times cross the binding as integer nanoseconds.
    use_ns = True

    def __init__(
        self,
        client: Client,
        *,
        cache: bool = False,
        attr_timeout: float | None = None,
        on_ready: Callable[[], None] | None = None,
        context: Callable[[], tuple[int, int, int]] | None = None,
    ) -> None:
        self.client = client
        #: (uid, gid, pid) of the calling process: libfuse's context, or the
        #: kernel backend's request header (``daxfs.client.fuse.kernel``).
        self._context = context or mfusepy.fuse_get_context
        self.cache = cache
        #: Seconds the kernel may trust attributes and names. Without the page
        #: cache, 0: every stat asks the server, so another guest's commits
        #: show at once. With --cache, 1 s, as libfuse's default.
        self.attr_timeout = attr_timeout if attr_timeout is not None else (1.0 if cache else 0.0)
        self.on_ready = on_ready
        self.iostats = IoStats()
        self._lock = threading.Lock()
        # guarded by self._lock
        self._handles: dict[int, _Handle] = {}
        self._fh = itertools.count(1)
        #: path: (attributes, when, the metadata cache epoch they were kept at)
        self._fresh: dict[str, tuple[Attr, float, int | None]] = {}

    # -- plumbing ------------------------------------------------------------

    def _caller(self) -> Identity:
        """The identity of the process whose system call this is."""
        uid, gid, pid = self._context()
        # Root passes every permission check, so its groups need no /proc read.
        groups = _groups_of(pid) if uid != 0 and pid > 0 else []
        return Identity(uid, gid, tuple(groups))

    def _remember(self, path: str, attr: Attr) -> Attr:
        """Keep the attributes a mutating call returned, for libfuse's getattr right after it.

        libfuse's high-level layer follows create, mkdir, symlink, link and every
        setattr with a getattr of the same path; answering that one from the reply
        saves a round trip per call. One use, and only for FRESH_S seconds.
        With metadata caching, also whether the client kept them (the server
        granted the reply: ``MetaCache.changed``), for the kernel backend.
        """
        now = time.monotonic()
        kept = self.client.meta_cache.take_kept()
        with self._lock:
            if len(self._fresh) > 1024:  # replies libfuse never asked for (failed requests)
                self._fresh = {p: v for p, v in self._fresh.items() if now - v[1] <= FRESH_S}
            self._fresh[path] = (attr, now, kept)
        return attr

    def _forget(self, *paths: str) -> None:
        with self._lock:
            for path in paths:
                self._fresh.pop(path, None)

    def _fresh_attr(self, path: str) -> tuple[Attr, int | None] | None:
        with self._lock:
            item = self._fresh.pop(path, None)
        if item is None or time.monotonic() - item[1] > FRESH_S:
            return None
        return self.client.inodes.seen(item[0]), item[2]  # the size as the client sees it now

    def created(self, path: str) -> tuple[dict[str, int], int | None] | None:
        """The attributes the call that just made ``path`` returned (once), as getattr
        has them, and the metadata cache epoch the client kept them at (None: not kept).

        The kernel backend answers CREATE, MKDIR, MKNOD, SYMLINK and LINK with
        them instead of asking the server again (one round trip less each),
        and lets the kernel keep them as long as a lookup's when they were kept.
        """
        made = self._fresh_attr(path)
        return None if made is None else (_stat_dict(made[0]), made[1])

    def _cached(self) -> bool:
        """Whether the client's metadata cache may answer now."""
        return self.client.caches_metadata and self.client.lease_valid()

    def _handle(self, fh: int) -> _Handle:
        # No lock: a dict lookup is atomic, and the kernel sends no request on
        # a handle after its RELEASE.
        h = self._handles.get(fh)
        if h is None:
            raise errors.BadHandle(f"no open file with FUSE handle {fh}")
        return h

    def _register(self, file: DaxFile) -> int:
        with self._lock:
            fh = next(self._fh)
            self._handles[fh] = _Handle(file)
            return fh

    # -- lifecycle -----------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        # Bigger requests: libfuse replies FUSE_MAX_PAGES = max_write / page size,
        # and the kernel then sends reads and writes of up to MAX_KERNEL_REQUEST bytes.
        if conn is not None:
            conn.max_write = MAX_KERNEL_REQUEST
            conn.max_readahead = MAX_KERNEL_REQUEST if self.cache else 0
        if config is not None:
            config.use_ino = 1  # st_ino is the server's inode number
            # An unlinked open file is renamed to .fuse_hiddenNNN and removed at its
            # last close (libfuse's default). hard_remove would leave it without a
            # path, and libfuse answers fstat() of a pathless file with ESTALE.
            config.hard_remove = 0
            config.direct_io = 0 if self.cache else 1
            config.kernel_cache = 0
            # With the page cache, drop it at open when size or mtime changed
            # (close-to-open consistency across guests).
            config.auto_cache = 1 if self.cache else 0
            config.entry_timeout = self.attr_timeout
            config.attr_timeout = self.attr_timeout
            config.negative_timeout = 0.0
        if self.on_ready is not None:
            self.on_ready()

    def destroy(self, path: str) -> None:
        with self._lock:
            left = list(self._handles.items())
            self._handles.clear()
        for fh, h in left:
            try:
                with h.lock:
                    h.file.close()
            except DaxfsError as exc:
                log.warning("closing handle %d at unmount: %s", fh, exc)

    # -- attributes ----------------------------------------------------------

    @_edge
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        # A reply kept from a change is not a granted answer: with metadata
        # caching the kernel may keep what this returns, so ask the cache.
        fresh = path is not None and not self.client.caches_metadata
        made = self._fresh_attr(path) if fresh and path is not None else None
        a = None if made is None else made[0]
        if a is None:
            caller = self._caller()
            if fh is not None:
                file = self._handle(fh).file
                # fstat: whatever the cache holds for the inode, under any name,
                # is granted (a create's reply, mostly); else ask by the handle.
                held = self.client.meta_cache.by_ino(file.ino) if self._cached() else None
                a = file.stat(caller) if held is None else self.client.inodes.seen(held)
            elif path is not None:
                a = self.client.attr(path, caller)
            else:
                raise errors.NotFound("no path and no handle")
        return _stat_dict(a)

    def _setattr(self, path: str | None, changes: SetAttr, fh: int | None = None) -> Attr:
        """SetAttr through the open handle when the kernel named one (fchmod, ftruncate, ...)."""
        if fh is not None:
            attr = self._handle(fh).file.set_attr(changes, self._caller())
        elif path is None:
            # libfuse found no path for the inode (it was removed meanwhile).
            raise errors.NotFound("the file was unlinked")
        else:
            attr = self.client.set_attr(changes, path, caller=self._caller())
        return self._remember(path, attr) if path is not None else attr

    @_edge
    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        self._setattr(path, SetAttr(mode=mode & 0o7777), fh)
        return 0

    @_edge
    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        if uid != -1 or gid != -1:
            changes = SetAttr(uid=None if uid == -1 else uid, gid=None if gid == -1 else gid)
            self._setattr(path, changes, fh)
        return 0

    @_edge
    def utimens(
        self, path: str | None, times: tuple[int, int] | None = None, fh: int | None = None
    ) -> int:
        if fh is None and path is None:
            raise errors.NotFound("the file was unlinked")
        if times is None:
            self._setattr(path, SetAttr(atime_now=True, mtime_now=True), fh)
            return 0
        atime, mtime = times
        # libfuse passes the special values with tv_sec 0. UTIME_NOW is the
        # server's now (any writer may); an explicit time is the owner's only.
        changes = SetAttr(
            atime_ns=None if atime in (UTIME_OMIT, UTIME_NOW) else atime,
            mtime_ns=None if mtime in (UTIME_OMIT, UTIME_NOW) else mtime,
            atime_now=atime == UTIME_NOW,
            mtime_now=mtime == UTIME_NOW,
        )
        if changes != SetAttr():
            self._setattr(path, changes, fh)
        return 0

    @_edge
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if length < 0:
            raise errors.InvalidArgument(f"negative size {length}")
        if fh is not None:
            h = self._handle(fh)
            if h.file.mode_info.write:
                with h.lock:
                    h.file.truncate(length)
                return 0
            path = path or h.file.path
        if path is None:
            raise errors.NotFound("the file was unlinked")
        self._setattr(path, SetAttr(size=length))
        return 0

    # -- namespace -----------------------------------------------------------

    @_edge
    def opendir(self, path: str) -> int:
        """open(2) of a directory needs read permission (the server's rule, as access)."""
        caller = self._caller()
        a = self.client.attr(path, caller)
        if not _may(a, caller, os.R_OK):
            raise errors.PermissionDenied(f"cannot open directory {path}: no read permission")
        return 0

    @_edge
    def readdir(self, path: str, fh: int) -> Iterable[tuple[str, dict[str, int], int]]:
        entries = self.client.scandir(path, caller=self._caller())
        out: list[tuple[str, dict[str, int], int]] = [
            # With use_ino an entry with inode 0 is dropped by readdir(3); the
            # listing does not carry these two numbers, stat() has them.
            (".", {"st_mode": stat.S_IFDIR, "st_ino": UNKNOWN_INO}, 0),
            ("..", {"st_mode": stat.S_IFDIR, "st_ino": UNKNOWN_INO}, 0),
        ]
        out.extend(
            (name, _stat_dict(a), 0)  # all of them: the kernel's READDIRPLUS (sizes as open)
            for name, a in entries
            if not name.startswith(HIDDEN_PREFIX)
        )
        return out

    @_edge
    def mkdir(self, path: str, mode: int) -> int:
        self._remember(path, self.client.mkdir(path, mode, caller=self._caller()))
        return 0

    @_edge
    def mknod(self, path: str, mode: int, dev: int) -> int:
        """FIFOs, sockets (bind), devices: the kernel serves their I/O, the server the inode."""
        self._remember(path, self.client.mknod(path, mode, dev, caller=self._caller()))
        return 0

    @_edge
    def rmdir(self, path: str) -> int:
        self._forget(path)
        self.client.rmdir(path, caller=self._caller())
        return 0

    @_edge
    def unlink(self, path: str) -> int:
        self._forget(path)
        self.client.unlink(path, caller=self._caller())
        return 0

    @_edge
    def rename(self, old: str, new: str) -> int:
        return int(self.rename_flags(old, new, 0))

    @_edge
    def rename_flags(self, old: str, new: str, flags: int) -> int:
        """rename(2) and renameat2(2): RENAME_NOREPLACE and RENAME_EXCHANGE reach the server."""
        self._forget(old, new)
        self.client.rename(old, new, flags=flags, caller=self._caller())
        return 0

    @_edge
    def symlink(self, path: str, target: str) -> int:
        """mfusepy's order: the new link's path first, then what it points to."""
        self._remember(path, self.client.symlink(target, path, caller=self._caller()))
        return 0

    @_edge
    def readlink(self, path: str) -> str:
        return self.client.readlink(path, caller=self._caller())

    @_edge
    def link(self, new: str, existing: str) -> int:
        """mfusepy's order: the new name first, then the existing file."""
        self._remember(new, self.client.link(existing, new, caller=self._caller()))
        return 0

    @_edge
    def statfs(self, path: str) -> dict[str, int]:
        s = self.client.statfs(caller=self._caller())
        return {
            "f_bsize": s.block_size,
            "f_frsize": s.block_size,
            "f_blocks": s.blocks,
            "f_bfree": s.blocks_free,
            "f_bavail": s.blocks_free,
            "f_files": s.files + s.blocks_free,
            "f_ffree": s.blocks_free,
            "f_favail": s.blocks_free,
            "f_namemax": s.name_max,
        }

    @_edge
    def access(self, path: str, amode: int) -> int:
        caller = self._caller()
        # Resolving the path checks search permission on every directory on the way.
        a = self.client.attr(path, caller)
        if amode != os.F_OK and not _may(a, caller, amode):
            raise errors.PermissionDenied(f"access {amode:o} to {path} denied")
        return 0

    # -- open files ----------------------------------------------------------

    @staticmethod
    def _mode(flags: int) -> OpenMode:
        acc = flags & os.O_ACCMODE
        return OpenMode(
            read=acc in (os.O_RDONLY, os.O_RDWR),
            write=acc in (os.O_WRONLY, os.O_RDWR),
            create=bool(flags & os.O_CREAT),
            truncate=bool(flags & os.O_TRUNC),
            exclusive=bool(flags & os.O_EXCL),
            append=bool(flags & os.O_APPEND),
        )

    @_edge
    def create(self, path: str, mode: int, flags: int) -> int:
        file = self.client.open_file(
            path, self._mode(flags | os.O_CREAT), mode=mode, caller=self._caller()
        )
        fh = self._opened(file)
        self._remember(path, file.attr)
        return fh

    @_edge
    def open(self, path: str, flags: int) -> int:
        return self._opened(self.client.open_file(path, self._mode(flags), caller=self._caller()))

    def _opened(self, file: DaxFile) -> int:
        try:
            fh = self._register(file)
        except BaseException:
            file.close()
            raise
        if file.mode_info.read and file.mode_info.write and file.size:
            # One layout of the whole file now: writes inside it then find their
            # extents in the cache, instead of one GetLayout per small write.
            try:
                file.layout(0, 1)
            except BaseException:
                self.release(file.path, fh)
                raise
        return fh

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        """The Operations form (bytes); the mount uses :meth:`read_into`."""
        buf = ctypes.create_string_buffer(size)
        n = self.read_into(fh, ctypes.addressof(buf), size, offset)
        return buf.raw[:n]

    @_edge
    def read_into(self, fh: int, address: int, size: int, offset: int) -> int:
        """Copy up to ``size`` bytes at ``offset`` straight into the kernel's buffer."""
        self.iostats.read(size)
        h = self._handle(fh)
        dst = _kernel_buffer(address, size)
        with h.lock:
            return h.file.preadinto(dst, offset)

    def read_to(
        self, fh: int, size: int, offset: int, send: Callable[[list[memoryview]], None]
    ) -> None:
        """One copy: ``send`` gets views of the region (the kernel backend's writev).

        ``send`` runs under the fence's shared lock with the lease checked just
        before (``DaxFile.send_segments``). A lease found lapsed after it is
        logged: the bytes are gone to the reader and cannot be taken back
        (README, the layout safety invariant, one-copy reads). Raises
        DaxfsError: the kernel backend's dispatcher maps it to the errno.
        """
        self.iostats.read(size)
        h = self._handle(fh)
        # Without the handle's lock: send_segments() changes nothing of the
        # handle (what it reads is the inode's, shared with the other handles
        # and guarded there), and the kernel releases no handle while a READ
        # on it is in flight. A read waits for no write of the same open file.
        h.file.send_segments(offset, size, send)
        if not self.client.lease_valid():
            log.warning(
                "the lease lapsed during a one-copy read of %d bytes of %s", size, h.file.path
            )

    def io_copy(self, fh: int) -> IoCopy | None:
        """What a compiled data path may serve handle ``fh`` from
        (``DaxFile.io_copy``); None for an unknown handle."""
        h = self._handles.get(fh)
        return None if h is None else h.file.io_copy()

    def overwrote(self, fh: int, start: int, end: int) -> None:
        """A compiled data path stored [start, end) through ``fh`` (``DaxFile.overwrote``)."""
        h = self._handles.get(fh)
        if h is not None:
            h.file.overwrote(start, end)

    def copies_until_ns(self) -> int:
        """``SessionState.copies_until_ns``."""
        return self.client.state.copies_until_ns()

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        """The Operations form (bytes); the mount uses :meth:`write_from`."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return self.write_from(fh, ctypes.addressof(buf), len(data), offset)

    @_edge
    def write_from(self, fh: int, address: int, size: int, offset: int) -> int:
        """Store ``size`` bytes of the kernel's buffer at ``offset`` in the region."""
        return self.write_view(fh, _kernel_buffer(address, size), offset)

    def write_view(self, fh: int, src: Any, offset: int) -> int:
        """Store the bytes of buffer ``src`` (the kernel's request, in place) at ``offset``.

        Raises DaxfsError: the kernel backend's dispatcher maps it to the errno
        (:meth:`write_from`, the libfuse form, through ``_edge``).
        """
        self.iostats.write(len(src))
        h = self._handle(fh)
        with h.lock:
            # Clearing set-id bits is the filesystem's job for direct I/O.
            h.file.kill_setid(self._caller)
            if h.file.mode_info.append:
                return h.file.append(src)  # at the end the client knows, not at offset
            return h.file.pwrite(src, offset)

    @_edge
    def flush(self, path: str | None, fh: int) -> int:
        """close(2) of a descriptor: publish size and mtime (close-to-open)."""
        h = self._handle(fh)
        with h.lock:
            h.file.flush()
        return 0

    @_edge
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        """Persist the ranges written since the last fsync, then publish size and mtime."""
        h = self._handle(fh)
        with h.lock:
            h.file.fsync(written_only=True)
        return 0

    @_edge
    def release(self, path: str | None, fh: int) -> int:
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is None:
                raise errors.BadHandle(f"no open file with FUSE handle {fh}")
        with h.lock:
            # Publishes size and mtime (done at FLUSH already, unless the file
            # changed since), then queues the Release: close(2) returned at
            # FLUSH, so it rides with this client's next call.
            h.file.close(release_later=True)
        return 0

    @_edge
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise errors.NotSupported(f"fallocate mode {mode:#x}")
        h = self._handle(fh)
        keep = bool(mode & FALLOC_FL_KEEP_SIZE)
        punch = bool(mode & FALLOC_FL_PUNCH_HOLE)
        zero = bool(mode & FALLOC_FL_ZERO_RANGE)
        with h.lock:
            # Publishes this client's writes first (the server zeroes past its size).
            h.file.allocate(offset, size, keep_size=keep, punch_hole=punch, zero_range=zero)
        return 0

    # -- extended attributes -------------------------------------------------

    @_edge
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        caller = self._caller()
        if name == XATTR_IOSTATS:
            if not _may(self.client.attr(path, caller), caller, os.R_OK):
                raise errors.PermissionDenied(f"{name} of {path} needs read permission")
            conn = self.client.conn
            return self.iostats.to_json(conn.calls, conn.carried_calls)
        if name == XATTR_EXTENTS:
            return "".join(
                f"{e.file_offset} {e.region_offset} {e.length}\n"
                for e in self.client.extents(path, caller=caller)
            ).encode()
        return self.client.getxattr(path, name, caller=caller)

    @_edge
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        if name in _VIRTUAL:
            raise errors.NotPermitted(f"{name} is read-only")
        self.client.setxattr(path, name, value, options, caller=self._caller())
        return 0

    @_edge
    def listxattr(self, path: str) -> list[str]:
        # The virtual attributes are not listed, so cp -a and tar --xattrs do not
        # try to copy them.
        return self.client.listxattr(path, caller=self._caller())

    @_edge
    def removexattr(self, path: str, name: str) -> int:
        if name in _VIRTUAL:
            raise errors.NotPermitted(f"{name} is read-only")
        self.client.removexattr(path, name, caller=self._caller())
        return 0


class DaxfsFuse(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE with the payload path and renameat2 flags wired to DaxfsOperations."""

    operations: DaxfsOperations

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        address = ctypes.cast(buf, ctypes.c_void_p).value or 0
        return self.operations.read_into(fip.contents.fh, address, size, offset)

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        address = ctypes.cast(buf, ctypes.c_void_p).value or 0
        return self.operations.write_from(fip.contents.fh, address, size, offset)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename_flags(
            old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors), flags
        )

    # mfusepy 3.1.1 drops the file handle of these four (ftruncate, fchmod,
    # fchown, futimens): the call then went by path and checked the mode bits,
    # so ftruncate of a descriptor opened O_CREAT|O_RDWR with mode 0 failed.

    def _path(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    @staticmethod
    def _fh(fip: Any) -> int | None:
        return int(fip.contents.fh) if fip else None

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return self.operations.truncate(self._path(path), length, self._fh(fip))

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        return self.operations.chmod(self._path(path), mode, self._fh(fip))

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        # -1 (leave unchanged) arrives as the unsigned maximum.
        uid = -1 if uid == 0xFFFFFFFF else uid
        gid = -1 if gid == 0xFFFFFFFF else gid
        return self.operations.chown(self._path(path), uid, gid, self._fh(fip))

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        times = None
        if buf:
            ts = buf.contents
            times = (
                mfusepy.time_of_timespec(ts.actime, use_ns=True),
                mfusepy.time_of_timespec(ts.modtime, use_ns=True),
            )
        return self.operations.utimens(self._path(path), times, self._fh(fip))
