"""Kernel requests as calls on the path-based operations, and their replies.

:class:`Dispatcher` is the edge between the FUSE wire format and
:class:`daxfs.client.fuse.operations.DaxfsOperations`. It knows no file descriptor:
:meth:`Dispatcher.handle` takes one request's bytes and returns the reply's
buffers (``fuse_out_header`` first), or None for requests that get no reply;
the serving threads (:mod:`.session`) move the bytes. It does what libfuse's
high-level layer did for mfusepy: node ids become paths (:mod:`.nodes`), a
request that creates a name is followed by a getattr for the entry reply,
SETATTR becomes chmod/chown/truncate/utimens, directory listings are kept per
open directory so that READDIR at any offset sees one listing.

Errors, exactly as on the libfuse path: the operations already turn a
:class:`DaxfsError` into its errno (``_edge``), an OSError's errno goes back as
is, and anything else is logged and answered EIO. Nothing here may raise out
of :meth:`Dispatcher.handle` for a well-formed request.

INTERRUPT is not acted on: an RPC in flight cannot be withdrawn, and each one
ends by its deadline (``--timeout``), so the interrupted request is answered
normally, which the protocol allows.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from daxfs.client.fuse.kernel import protocol as p
from daxfs.client.fuse.kernel.nodes import NodeTable
from daxfs.client.fuse.kernel.protocol import InitFlag, Opcode, OpenFlag, SetattrValid
from daxfs.client.fuse.operations import MAX_KERNEL_REQUEST, UTIME_NOW, UTIME_OMIT, DaxfsOperations
from daxfs.shared.errors import DaxfsError, NotFound
from daxfs.shared.limits import RENAME_EXCHANGE

log = logging.getLogger(__name__)

#: One reply: buffers for writev, ``fuse_out_header`` first.
Reply = list[bytes | memoryview]
#: Pages of the largest read or write the kernel may send.
MAX_PAGES = MAX_KERNEL_REQUEST // 4096
#: The request buffer each serving thread needs: max_write plus the headers' page.
REQUEST_BUFFER = MAX_KERNEL_REQUEST + 4096


#: The data path's requests: :meth:`Dispatcher.handle_io` serves them.
IO_OPCODES = frozenset({Opcode.READ, Opcode.WRITE})
_READ = int(Opcode.READ)
_OUT_HEADER = p.OUT_HEADER
_OUT_SIZE = p.OUT_HEADER.size


@dataclass(frozen=True, slots=True)
class Request:
    """One request as read from the kernel, in a serving thread's buffer."""

    #: The whole request, header included (valid until the thread reads the next one).
    data: memoryview
    #: The address of ``data[0]`` (WRITE hands the operations its payload in place).
    address: int
    #: Writes one reply at once. READ replies through it itself, while the
    #: region memory the reply points into is still fenced for it.
    send: Callable[[Reply], None]


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What INIT settled with the kernel."""

    major: int
    minor: int
    flags: InitFlag
    max_write: int
    max_pages: int


@dataclass(frozen=True, slots=True)
class _Dirent:
    """One name of a directory listing, with the attributes the listing carried."""

    name: bytes
    ino: int
    #: The operations' stat dictionary (``st_mode`` at least).
    st: Mapping[str, int]

    @property
    def kind(self) -> int:
        """The DT_* type."""
        return stat.S_IFMT(self.st["st_mode"]) >> 12


def _name(body: memoryview) -> str:
    end = bytes(body).index(b"\0")
    return os.fsdecode(bytes(body[:end]))


def _two_names(body: memoryview) -> tuple[str, str]:
    raw = bytes(body)
    a, _, rest = raw.partition(b"\0")
    b, _, _ = rest.partition(b"\0")
    return os.fsdecode(a), os.fsdecode(b)


def _attr(st: Mapping[str, int]) -> p.Attr:
    return p.Attr(
        ino=st.get("st_ino", 0),
        size=st.get("st_size", 0),
        blocks=st.get("st_blocks", 0),
        atime_ns=st.get("st_atime", 0),
        mtime_ns=st.get("st_mtime", 0),
        ctime_ns=st.get("st_ctime", 0),
        mode=st["st_mode"],
        nlink=st.get("st_nlink", 1),
        uid=st.get("st_uid", 0),
        gid=st.get("st_gid", 0),
        # glibc's dev_t and the kernel's u32 encoding agree on the low 32 bits.
        rdev=st.get("st_rdev", 0) & 0xFFFFFFFF,
        blksize=st.get("st_blksize", 4096) or 4096,
    )


class Dispatcher:
    """FUSE requests to :class:`DaxfsOperations` calls. Thread-safe."""

    def __init__(
        self,
        ops: DaxfsOperations,
        *,
        allow_mmap: bool = True,
        on_init: Callable[[Negotiated], None] | None = None,
    ) -> None:
        self.ops = ops
        self.nodes = NodeTable()
        #: Ask for FUSE_DIRECT_IO_ALLOW_MMAP (MAP_SHARED on direct_io files).
        self.allow_mmap = allow_mmap
        self.on_init = on_init
        self.negotiated: Negotiated | None = None
        self._valid = p.split_ns(ops.attr_timeout)
        #: With metadata caching (``--cache-metadata``): how long the kernel may
        #: keep what a lookup or getattr just answered (the rest of the client's
        #: lease; the notifier drops it sooner when another guest changes it).
        self.cache_ttl: Callable[[], float] | None = None
        #: The client's metadata cache epoch (moves with every invalidation): an
        #: answer it moved under is given the short timeouts, since the
        #: invalidation may have found no node to drop yet (a new name).
        self.cache_epoch: Callable[[], int] = lambda: 0
        self._local = threading.local()
        self._lock = threading.Lock()
        # guarded by self._lock: open directories' listings, filled at offset 0,
        # with the cache epoch they were asked at
        self._dirs: dict[int, tuple[list[_Dirent], int] | None] = {}
        self._dh = itertools.count(1)
        # guarded by self._lock: the file handles open on each node. fstat(2)
        # reaches the daemon as a GETATTR without a handle, so a node that lost
        # its path (unlinked while open) is asked about through one of these.
        self._node_handles: dict[int, set[int]] = {}
        # guarded by self._lock: nodes open here, until their release returned.
        # Their attributes are not given the kernel for long: the daemon
        # commits a written file's size and mtime behind the kernel's back.
        self._open_nodes: dict[int, int] = {}
        self._table: dict[int, Callable[[p.InHeader, memoryview, Request], Reply | None]] = {
            Opcode.INIT: self._init,
            Opcode.DESTROY: self._destroy,
            Opcode.LOOKUP: self._lookup,
            Opcode.FORGET: self._forget,
            Opcode.BATCH_FORGET: self._batch_forget,
            Opcode.INTERRUPT: self._interrupt,
            Opcode.GETATTR: self._getattr,
            Opcode.SETATTR: self._setattr,
            Opcode.READLINK: self._readlink,
            Opcode.SYMLINK: self._symlink,
            Opcode.MKNOD: self._mknod,
            Opcode.MKDIR: self._mkdir,
            Opcode.UNLINK: self._unlink,
            Opcode.RMDIR: self._rmdir,
            Opcode.RENAME: self._rename,
            Opcode.RENAME2: self._rename2,
            Opcode.LINK: self._link,
            Opcode.OPEN: self._open,
            Opcode.CREATE: self._create,
            Opcode.STATFS: self._statfs,
            Opcode.RELEASE: self._release,
            Opcode.FLUSH: self._flush,
            Opcode.FSYNC: self._fsync,
            Opcode.FSYNCDIR: self._ok,
            Opcode.OPENDIR: self._opendir,
            Opcode.READDIR: self._readdir,
            Opcode.READDIRPLUS: self._readdirplus,
            Opcode.RELEASEDIR: self._releasedir,
            Opcode.SETXATTR: self._setxattr,
            Opcode.GETXATTR: self._getxattr,
            Opcode.LISTXATTR: self._listxattr,
            Opcode.REMOVEXATTR: self._removexattr,
            Opcode.ACCESS: self._access,
            Opcode.FALLOCATE: self._fallocate,
        }

    # -- the edge ----------------------------------------------------------------

    def context(self) -> tuple[int, int, int]:
        """(uid, gid, pid) of the request this thread serves (the operations' caller)."""
        ctx: tuple[int, int, int] = getattr(self._local, "ctx", (0, 0, 0))
        return ctx

    def handle(self, req: Request) -> Reply | None:
        """Serve one request; the reply's buffers, or None when the kernel wants none."""
        hdr = p.InHeader.parse(req.data)
        if hdr.opcode in IO_OPCODES:
            self.handle_io(req.data, req.send)
            return None
        body = req.data[p.IN_HEADER.size : hdr.length]
        fn = self._table.get(hdr.opcode)
        if fn is None:
            if hdr.opcode in p.NO_REPLY:
                return None
            return self._error(hdr, errno.ENOSYS)
        self._local.ctx = (hdr.uid, hdr.gid, hdr.pid)
        self.ops.iostats.request(_OPNAMES.get(hdr.opcode, "?"))
        try:
            return fn(hdr, body, req)
        except DaxfsError as exc:
            return self._error(hdr, exc.code)
        except OSError as exc:
            return self._error(hdr, exc.errno or errno.EIO)
        except Exception:
            log.exception("FUSE %s failed; answering EIO", _opname(hdr.opcode))
            return self._error(hdr, errno.EIO)

    def handle_io(self, data: memoryview, send: Callable[[Reply], None]) -> None:
        """Serve a READ or WRITE (``data``: the whole request) and send its reply.

        :meth:`handle`'s work for the two requests a data path sends in streams,
        without its generality: one unpack of header and body, no request
        object, no table. Errors are mapped as :meth:`handle` maps them.
        """
        length, opcode, unique, _, uid, gid, pid, fh, offset, size = p.IO_HEAD.unpack_from(data)
        err = 0
        try:
            if opcode == _READ:

                def reply(views: list[memoryview]) -> None:
                    send([_OUT_HEADER.pack(_OUT_SIZE + sum(map(len, views)), 0, unique), *views])

                self.ops.read_to(fh, min(size, MAX_KERNEL_REQUEST), offset, reply)
                return
            start = p.IN_HEADER.size + p.WRITE_IN.size
            if start + size > length:
                raise OSError(errno.EINVAL, "WRITE shorter than its size")
            self._local.ctx = (uid, gid, pid)  # a write by a non-owner clears set-id bits
            n = self.ops.write_view(fh, data[start : start + size], offset)
            send([p.out_header(p.OUT_HEADER.size + p.WRITE_OUT.size, unique), p.WRITE_OUT.pack(n)])
            return
        except DaxfsError as exc:
            err = exc.code
        except OSError as exc:
            err = exc.errno or errno.EIO
        except Exception:
            log.exception("FUSE %s failed; answering EIO", _opname(opcode))
            err = errno.EIO
        send([p.out_header(p.OUT_HEADER.size, unique, err)])

    @staticmethod
    def _error(hdr: p.InHeader, err: int) -> Reply:
        return [p.out_header(p.OUT_HEADER.size, hdr.unique, err)]

    @staticmethod
    def _reply(hdr: p.InHeader, *payload: bytes | memoryview) -> Reply:
        n = p.OUT_HEADER.size + sum(len(x) for x in payload)
        return [p.out_header(n, hdr.unique), *payload]

    def _ok(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        return self._reply(hdr)

    def _opened(self, nodeid: int, fh: int) -> None:
        with self._lock:
            self._node_handles.setdefault(nodeid, set()).add(fh)
            self._open_nodes[nodeid] = self._open_nodes.get(nodeid, 0) + 1

    def _released(self, nodeid: int) -> None:
        with self._lock:
            n = self._open_nodes.pop(nodeid, 0) - 1
            if n > 0:
                self._open_nodes[nodeid] = n

    def _closed(self, nodeid: int, fh: int) -> None:
        with self._lock:
            fhs = self._node_handles.get(nodeid)
            if fhs is not None:
                fhs.discard(fh)
                if not fhs:
                    del self._node_handles[nodeid]

    def _any_handle(self, nodeid: int) -> int | None:
        with self._lock:
            fhs = self._node_handles.get(nodeid)
            return min(fhs) if fhs else None

    def _path(self, nodeid: int) -> str:
        path = self.nodes.path(nodeid)
        if path is None:
            raise NotFound(f"node {nodeid} was removed")
        return path

    def _timeouts(self, nodeid: int = 0, since: int | None = None) -> tuple[int, int]:
        """Entry and attribute validity of an answer the server granted for caching.

        Only answers the server recorded are kept longer (a lookup, getattr by
        path, a listing, and the reply of a change the client kept: create,
        mkdir, mknod, symlink, link): the server then tells this client when
        they change. Everything else keeps the mount's ``--attr-timeout``, and
        so does an answer about a node open here (``_open_nodes``) or one the
        cache moved under since ``since``.
        """
        if nodeid and self._is_open(nodeid):
            return self._valid
        return self._name_timeouts(since)

    def _name_timeouts(self, since: int | None = None) -> tuple[int, int]:
        """:meth:`_timeouts` of a name alone: a node open here keeps its name
        long (only its attributes change behind the kernel's back)."""
        if self.cache_ttl is None:
            return self._valid
        if since is not None and self.cache_epoch() != since:
            return self._valid
        return p.split_ns(max(p.ns_to_s(self._valid), self.cache_ttl()))

    def _is_open(self, nodeid: int) -> bool:
        with self._lock:
            return nodeid in self._open_nodes

    def _entry(
        self,
        hdr: p.InHeader,
        parent: int,
        name: str,
        path: str,
        *,
        cached: bool = False,
        since: int | None = None,
        opening: bool = False,
    ) -> bytes:
        """The entry reply for (parent, name): attributes now, one more lookup.

        After a call that made the name, its reply's attributes, kept by the
        kernel as a lookup's when the client kept them (the server granted
        them with the reply), else for ``--attr-timeout``. ``opening``: the
        call opened the node (CREATE), whose attributes then stay short.
        """
        granted = cached
        made = None if cached else self.ops.created(path)
        if made is None:
            st = self.ops.getattr(path)
        else:
            st, since = made
            granted = since is not None
        attr = _attr(st)
        nodeid = self.nodes.lookup(parent, name)
        self.nodes.set_ino(nodeid, attr.ino)
        es, ens = self._name_timeouts(since) if granted else self._valid
        s, ns = self._timeouts(nodeid, since) if granted and not opening else self._valid
        return p.ENTRY_OUT.pack(nodeid, 0, es, s, ens, ns) + attr.pack()

    def _attr_out(self, st: Mapping[str, int], valid: tuple[int, int] | None = None) -> bytes:
        s, ns = valid or self._valid
        return p.ATTR_OUT.pack(s, ns, 0) + _attr(st).pack()

    def _open_flags(self) -> int:
        # Without --cache every open is direct_io: reads and writes reach the
        # region, no page cache. With it, no KEEP_CACHE: the kernel drops the
        # file's pages at each open (close-to-open consistency across guests).
        return 0 if self.ops.cache else int(OpenFlag.DIRECT_IO)

    # -- session -----------------------------------------------------------------

    def _init(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        major, minor, max_readahead, flags, flags2 = p.INIT_IN.unpack_from(body)
        if major != p.MAJOR or minor < p.MIN_MINOR:
            log.error("kernel FUSE protocol %d.%d is not supported (needs 7.%d+)",
                      major, minor, p.MIN_MINOR)  # fmt: skip
            return self._error(hdr, errno.EPROTO)
        offered = InitFlag(flags | ((flags2 << 32) if flags & InitFlag.INIT_EXT else 0))
        want = (
            InitFlag.ASYNC_READ
            | InitFlag.ATOMIC_O_TRUNC
            | InitFlag.BIG_WRITES
            | InitFlag.PARALLEL_DIROPS
            | InitFlag.MAX_PAGES
            | InitFlag.INIT_EXT
        )
        if self.allow_mmap:
            want |= InitFlag.DIRECT_IO_ALLOW_MMAP
        if self.ops.cache:
            want |= InitFlag.AUTO_INVAL_DATA
        if self.cache_ttl is not None:
            # Entries with their attributes in the listing (ls -l: no lookup
            # and no getattr per name), when they may be kept.
            want |= InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO
        # Never WRITEBACK_CACHE: a write must reach the region before it returns.
        got = offered & want
        readahead = min(max_readahead, MAX_KERNEL_REQUEST) if self.ops.cache else 0
        self.negotiated = Negotiated(major, min(minor, p.MINOR), got, MAX_KERNEL_REQUEST, MAX_PAGES)
        out = p.INIT_OUT.pack(
            p.MAJOR,
            min(minor, p.MINOR),
            readahead,
            int(got) & 0xFFFFFFFF,
            16,  # max_background
            12,  # congestion_threshold
            MAX_KERNEL_REQUEST,  # max_write
            1,  # time_gran: nanoseconds
            MAX_PAGES,
            0,  # map_alignment (DAX over virtiofs only)
            int(got) >> 32,
            0,  # max_stack_depth (passthrough only)
        )
        log.debug("INIT: kernel %d.%d offered %#x, taken %#x", major, minor, offered, got)
        if self.on_init is not None:
            self.on_init(self.negotiated)
        return self._reply(hdr, out)

    def _destroy(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        return self._reply(hdr)

    def _interrupt(self, hdr: p.InHeader, body: memoryview, req: Request) -> None:
        return None

    def _forget(self, hdr: p.InHeader, body: memoryview, req: Request) -> None:
        (count,) = p.FORGET_IN.unpack_from(body)
        self.nodes.forget(hdr.nodeid, count)
        return None

    def _batch_forget(self, hdr: p.InHeader, body: memoryview, req: Request) -> None:
        (count,) = p.BATCH_FORGET_IN.unpack_from(body)
        for i in range(count):
            nodeid, n = p.FORGET_ONE.unpack_from(body, p.BATCH_FORGET_IN.size + i * 16)
            self.nodes.forget(nodeid, n)
        return None

    # -- attributes --------------------------------------------------------------

    def _lookup(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        name = _name(body)
        path = self.nodes.child(hdr.nodeid, name)
        since = self.cache_epoch()
        try:
            entry = self._entry(hdr, hdr.nodeid, name, path, cached=True, since=since)
            return self._reply(hdr, entry)
        except OSError as exc:  # the operations answer FuseOSError(errno)
            s, ns = self._timeouts(since=since)
            if exc.errno != errno.ENOENT or not (s or ns):
                raise
            # A negative entry the kernel may keep: the server recorded the
            # walk, so a creation of the name by another guest is notified.
            return self._reply(hdr, p.ENTRY_OUT.pack(0, 0, s, 0, ns, 0) + bytes(p.ATTR.size))

    def _getattr(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        flags, fh = p.GETATTR_IN.unpack_from(body)
        path = self.nodes.path(hdr.nodeid)
        handle = fh if flags & p.GETATTR_FH else None
        if path is None and handle is None:
            handle = self._any_handle(hdr.nodeid)
        if path is None and handle is None:
            raise NotFound(f"node {hdr.nodeid} was removed")
        since = self.cache_epoch()
        st = self.ops.getattr(path, handle)
        if handle is not None:
            return self._reply(hdr, self._attr_out(st))
        self.nodes.set_ino(hdr.nodeid, st.get("st_ino", 0))  # the root's, first
        return self._reply(hdr, self._attr_out(st, self._timeouts(hdr.nodeid, since)))

    def _setattr(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        (valid, fh, size, _, atime, mtime, _, atimensec, mtimensec, _, mode, uid, gid) = (
            p.SETATTR_IN.unpack_from(body)
        )
        v = SetattrValid(valid)
        path = self.nodes.path(hdr.nodeid)
        handle = fh if v & SetattrValid.FH else None
        if path is None and handle is None:
            handle = self._any_handle(hdr.nodeid)
        ops = self.ops
        # libfuse's order: mode, owner, size, times; then the attributes as they are.
        # fchmod, fchown, ftruncate and futimens name the handle (FATTR_FH).
        if v & SetattrValid.MODE:
            ops.chmod(path, mode, handle)
        if v & (SetattrValid.UID | SetattrValid.GID):
            ops.chown(
                path,
                uid if v & SetattrValid.UID else -1,
                gid if v & SetattrValid.GID else -1,
                handle,
            )
        if v & SetattrValid.SIZE:
            ops.truncate(path, size, handle)
        times = SetattrValid.ATIME | SetattrValid.MTIME
        times |= SetattrValid.ATIME_NOW | SetattrValid.MTIME_NOW
        if v & times:

            def when(now: SetattrValid, given: SetattrValid, sec: int, nsec: int) -> int:
                if v & now:
                    return UTIME_NOW
                if v & given:
                    return sec * 1_000_000_000 + nsec
                return UTIME_OMIT

            ops.utimens(
                path,
                (
                    when(SetattrValid.ATIME_NOW, SetattrValid.ATIME, atime, atimensec),
                    when(SetattrValid.MTIME_NOW, SetattrValid.MTIME, mtime, mtimensec),
                ),
                handle,
            )
        if path is None and handle is None:
            raise NotFound(f"node {hdr.nodeid} was removed")
        return self._reply(hdr, self._attr_out(ops.getattr(path, handle)))

    def _access(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        (mask,) = p.ACCESS_IN.unpack_from(body)
        self.ops.access(self._path(hdr.nodeid), mask)
        return self._reply(hdr)

    def _statfs(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        s = self.ops.statfs("/")
        out = p.STATFS_OUT.pack(
            s["f_blocks"], s["f_bfree"], s["f_bavail"], s["f_files"], s["f_ffree"],
            s["f_bsize"], s["f_namemax"], s["f_frsize"],
        )  # fmt: skip
        return self._reply(hdr, out)

    # -- names -------------------------------------------------------------------

    def _readlink(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        return self._reply(hdr, os.fsencode(self.ops.readlink(self._path(hdr.nodeid))))

    def _symlink(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        name, target = _two_names(body)
        path = self.nodes.child(hdr.nodeid, name)
        self.ops.symlink(path, target)
        return self._reply(hdr, self._entry(hdr, hdr.nodeid, name, path))

    def _mknod(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        mode, rdev, _ = p.MKNOD_IN.unpack_from(body)
        name = _name(body[p.MKNOD_IN.size :])
        path = self.nodes.child(hdr.nodeid, name)
        if stat.S_ISREG(mode):
            # As libfuse does for a file system with create and no mknod.
            fh = self.ops.create(path, mode, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            self.ops.release(path, fh)
        else:
            self.ops.mknod(path, mode, rdev)
        return self._reply(hdr, self._entry(hdr, hdr.nodeid, name, path))

    def _mkdir(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        mode, _ = p.MKDIR_IN.unpack_from(body)
        name = _name(body[p.MKDIR_IN.size :])
        path = self.nodes.child(hdr.nodeid, name)
        self.ops.mkdir(path, mode)
        return self._reply(hdr, self._entry(hdr, hdr.nodeid, name, path))

    def _unlink(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        name = _name(body)
        self.ops.unlink(self.nodes.child(hdr.nodeid, name))
        self.nodes.detach(hdr.nodeid, name)
        return self._reply(hdr)

    def _rmdir(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        name = _name(body)
        self.ops.rmdir(self.nodes.child(hdr.nodeid, name))
        self.nodes.detach(hdr.nodeid, name)
        return self._reply(hdr)

    def _rename(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        (newdir,) = p.RENAME_IN.unpack_from(body)
        return self._do_rename(hdr, newdir, 0, body[p.RENAME_IN.size :])

    def _rename2(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        newdir, flags = p.RENAME2_IN.unpack_from(body)
        return self._do_rename(hdr, newdir, flags, body[p.RENAME2_IN.size :])

    def _do_rename(self, hdr: p.InHeader, newdir: int, flags: int, names: memoryview) -> Reply:
        old, new = _two_names(names)
        old_path = self.nodes.child(hdr.nodeid, old)
        new_path = self.nodes.child(newdir, new)
        self.ops.rename_flags(old_path, new_path, flags)
        self.nodes.rename(hdr.nodeid, old, newdir, new, exchange=bool(flags & RENAME_EXCHANGE))
        return self._reply(hdr)

    def _link(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        (old,) = p.LINK_IN.unpack_from(body)
        name = _name(body[p.LINK_IN.size :])
        path = self.nodes.child(hdr.nodeid, name)
        self.ops.link(path, self._path(old))
        return self._reply(hdr, self._entry(hdr, hdr.nodeid, name, path))

    # -- files -------------------------------------------------------------------

    def _open(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        flags, _ = p.OPEN_IN.unpack_from(body)
        fh = self.ops.open(self._path(hdr.nodeid), flags)
        self._opened(hdr.nodeid, fh)
        return self._reply(hdr, p.OPEN_OUT.pack(fh, self._open_flags(), 0))

    def _create(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        flags, mode, _, _ = p.CREATE_IN.unpack_from(body)
        name = _name(body[p.CREATE_IN.size :])
        path = self.nodes.child(hdr.nodeid, name)
        fh = self.ops.create(path, mode, flags)
        try:
            entry = self._entry(hdr, hdr.nodeid, name, path, opening=True)
        except BaseException:
            self.ops.release(path, fh)
            raise
        self._opened(int.from_bytes(entry[:8], "little"), fh)
        return self._reply(hdr, entry, p.OPEN_OUT.pack(fh, self._open_flags(), 0))

    def _release(self, hdr: p.InHeader, body: memoryview, req: Request) -> None:
        """Answered at once; the Release RPC (and a commit left to do) follows.

        Nothing waits for what the reply would say: close(2) returned at FLUSH
        (which published the size), and the kernel ignores a RELEASE's error.
        It only holds the inode and a background slot until the reply. Safe to
        answer first because: the lease goes back with the Release, and a lease
        returned late is only space kept from reuse a little longer, never a
        breach (the layout safety invariant holds while a lease is held); a
        later open of the same file is a new handle, which the client counts
        before this one's Release decides whether to return the lease
        (``SessionState.closed_file``), and a newer grant is never ended by an older
        lease id; the node counts as open here (short attribute timeouts) until
        the daemon is done, so a size or mtime it still commits is not hidden.
        """
        fh, *_ = p.RELEASE_IN.unpack_from(body)
        self._closed(hdr.nodeid, fh)
        req.send(self._reply(hdr))
        try:
            self.ops.release(self.nodes.path(hdr.nodeid), fh)
        except OSError as exc:  # the operations log a DaxfsError as they map it
            log.debug("release of handle %d: errno %d", fh, exc.errno)
        finally:
            self._released(hdr.nodeid)
        return None

    def _flush(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        fh, _, _ = p.FLUSH_IN.unpack_from(body)
        self.ops.flush(self.nodes.path(hdr.nodeid), fh)
        return self._reply(hdr)

    def _fsync(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        fh, flags = p.FSYNC_IN.unpack_from(body)
        datasync = int(bool(flags & p.FSYNC_FDATASYNC))
        self.ops.fsync(self.nodes.path(hdr.nodeid), datasync, fh)
        return self._reply(hdr)

    def _fallocate(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        fh, offset, length, mode = p.FALLOCATE_IN.unpack_from(body)
        self.ops.fallocate(self.nodes.path(hdr.nodeid), mode, offset, length, fh)
        return self._reply(hdr)

    # -- directories -------------------------------------------------------------

    def _opendir(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        self.ops.opendir(self._path(hdr.nodeid))  # read permission, as open(2) needs
        with self._lock:
            dh = next(self._dh)
            self._dirs[dh] = None
        return self._reply(hdr, p.OPEN_OUT.pack(dh, 0, 0))

    def _listing(self, hdr: p.InHeader, dh: int, offset: int) -> tuple[list[_Dirent], int]:
        """The directory's entries, and the cache epoch they were asked at; read at
        offset 0, kept after."""
        with self._lock:
            kept = self._dirs.get(dh)
        if kept is None or offset == 0:
            path = self._path(hdr.nodeid)
            since = self.cache_epoch()
            listing = [
                _Dirent(os.fsencode(name), st.get("st_ino", 0), st)
                for name, st, _ in self.ops.readdir(path, dh)
            ]
            kept = (listing, since)
            with self._lock:
                self._dirs[dh] = kept
        return kept

    def _readdir(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        dh, offset, size, *_ = p.READ_IN.unpack_from(body)
        listing, _ = self._listing(hdr, dh, offset)
        out: list[bytes] = []
        used = 0
        for i in range(offset, len(listing)):
            name, ino, kind = listing[i].name, listing[i].ino, listing[i].kind
            rec = p.dirent(ino, i + 1, name, kind)
            if used + len(rec) > size:
                break
            out.append(rec)
            used += len(rec)
        return self._reply(hdr, b"".join(out))

    def _readdirplus(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        """READDIR with each name's entry and attributes, as a LOOKUP would answer.

        Asked for at INIT (DO_READDIRPLUS) only with metadata caching: the
        server granted the listing's entries to this client (it tells it when
        they change), so the kernel may keep them for the rest of the lease,
        and ``ls -l`` costs one listing. Each entry with a node id counts one
        lookup (the kernel forgets it later), so it is made only for a record
        that fits. An empty entry (node id 0: the kernel looks the name up
        itself when it needs it) for ``.`` and ``..``, for a node open here
        (its size may be ahead of the server's) and for a listing the cache
        moved under since it was asked.
        """
        dh, offset, size, *_ = p.READ_IN.unpack_from(body)
        listing, since = self._listing(hdr, dh, offset)
        out: list[bytes] = []
        used = 0
        empty = p.ENTRY_OUT.pack(0, 0, 0, 0, 0, 0) + bytes(p.ATTR.size)
        keep = self.cache_ttl is not None and self.cache_epoch() == since
        s, ns = self._timeouts() if keep else (0, 0)
        for i in range(offset, len(listing)):
            d = listing[i]
            rec = p.dirent(d.ino, i + 1, d.name, d.kind)
            if used + len(empty) + len(rec) > size:
                break
            entry = empty
            if keep and d.name not in (b".", b".."):
                name = os.fsdecode(d.name)
                known = self.nodes.find(hdr.nodeid, name)
                if known is None or not self._is_open(known):
                    nodeid = self.nodes.lookup(hdr.nodeid, name)
                    self.nodes.set_ino(nodeid, d.ino)
                    entry = p.ENTRY_OUT.pack(nodeid, 0, s, s, ns, ns) + _attr(d.st).pack()
            out.append(entry + rec)
            used += len(entry) + len(rec)
        return self._reply(hdr, b"".join(out))

    def _releasedir(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        dh, *_ = p.RELEASE_IN.unpack_from(body)
        with self._lock:
            self._dirs.pop(dh, None)
        return self._reply(hdr)

    # -- extended attributes -----------------------------------------------------

    def _getxattr(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        (size,) = p.GETXATTR_IN.unpack_from(body)
        name = _name(body[p.GETXATTR_IN.size :])
        value = bytes(self.ops.getxattr(self._path(hdr.nodeid), name))
        return self._sized(hdr, size, value)

    def _listxattr(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        (size,) = p.GETXATTR_IN.unpack_from(body)
        names: Sequence[str] = self.ops.listxattr(self._path(hdr.nodeid))
        return self._sized(hdr, size, b"".join(os.fsencode(n) + b"\0" for n in names))

    def _sized(self, hdr: p.InHeader, size: int, value: bytes) -> Reply:
        """getxattr(2)'s protocol: size 0 asks for the length; too small a size is ERANGE."""
        if size == 0:
            return self._reply(hdr, p.GETXATTR_OUT.pack(len(value)))
        if len(value) > size:
            return self._error(hdr, errno.ERANGE)
        return self._reply(hdr, value)

    def _setxattr(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        size, flags = p.SETXATTR_IN.unpack_from(body)
        rest = bytes(body[p.SETXATTR_IN.size :])
        raw, _, tail = rest.partition(b"\0")
        self.ops.setxattr(self._path(hdr.nodeid), os.fsdecode(raw), tail[:size], flags)
        return self._reply(hdr)

    def _removexattr(self, hdr: p.InHeader, body: memoryview, req: Request) -> Reply:
        self.ops.removexattr(self._path(hdr.nodeid), _name(body))
        return self._reply(hdr)


#: Opcode names, looked up once per request (an enum construction is not free).
_OPNAMES: dict[int, str] = {op.value: op.name for op in Opcode}


def _opname(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return str(opcode)
