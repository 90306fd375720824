"""Serving threads: read a request from the channel, dispatch it, write the reply.

Several threads serve the one ``/dev/fuse`` descriptor, so a slow request (an
RPC waiting on the server) holds one thread and the others go on serving. But
only one thread at a time *reads* it: the holder of the reader token. It
keeps the token while what it serves does not wait (a READ or WRITE from
cached layouts: a memory copy and a reply; a LOOKUP, GETATTR or GETXATTR the
metadata cache answers; a FLUSH, RELEASE or FORGET), so a stream of them is
served by one thread, and hands the token over
(:meth:`KernelSession.hand_over`) when it would keep a request waiting: an RPC
over gRPC (``rpc.Connection.before_blocking``), a request arriving while it
waits for a reply over the frame socket (:meth:`KernelSession.await_reply`,
which polls both), this client's queued releases
(``ReleaseQueue.before_wait``), or at once for the few opcodes that may wait
on something else (``_KEEPS_TOKEN``). This is Go's scheduler handing its
processor over when a goroutine enters a blocking system call, and the
leader/followers pattern of server design.

Why: the kernel wakes the reader that has waited longest, so with every
thread reading, each request of a synchronous reader (fio psync, a database)
woke another sleeping thread, which then contended for the GIL with the one
that had just replied. Measured with fio 4 KiB random reads on this 2-core
machine under load: 6,300-7,000 IOPS and 122-127 µs of daemon CPU per read
with 8 readers; 12,200 IOPS and 69 µs with the token (one reader: 11-13k).

Each thread owns its buffers: the request buffer (a WRITE's payload is
handed to the operations in place); a READ reply points into the region
mapping itself. All threads end when the file system is unmounted.

Where the compiled data path is built (fastio.py), the token holder waits in
it instead of in ``Channel.receive``: it answers the READs and WRITEs it can
without the interpreter and hands every other request back here, which then
shows it the handle as it stands (``_show``) and, before what publishes or
ends a handle, takes what it wrote (``take_written``).
"""

from __future__ import annotations

import ctypes
import logging
import select
import struct
import threading
import time

from daxfs.client.fuse.kernel.channel import Channel
from daxfs.client.fuse.kernel.dispatch import IO_OPCODES, REQUEST_BUFFER, Dispatcher, Reply, Request
from daxfs.client.fuse.kernel.fastio import FastPath
from daxfs.client.fuse.kernel.protocol import IN_HEADER, Opcode

log = logging.getLogger(__name__)

#: Opcodes the reader serves itself, keeping the token: the data path
#: (IO_OPCODES), what the metadata cache mostly answers, and every request
#: whose only long waits are RPCs and the wait for this client's queued
#: releases, at which ``rpc.Connection.before_blocking``,
#: ``KernelSession.await_reply`` and ``ReleaseQueue.before_wait`` hand the
#: token over. Inline, a GETXATTR
#: answered from the cache (``ls -l`` sends two per name) costs 77-80 µs of
#: daemon CPU instead of 113-133 (no thread switch); create + close + unlink
#: of an empty file 470 µs instead of 610 (its FLUSH, RELEASE and FORGET no
#: longer wake another thread, and its CREATE and UNLINK wake one only at
#: their RPC). Handed over at once: what may wait on something else (a POSIX
#: lock, an fsync's flush of the region, a fallocate's or copy's memory work,
#: a truncate), and any opcode not named here.
_KEEPS_TOKEN = frozenset(
    {
        Opcode.LOOKUP,
        Opcode.GETATTR,
        Opcode.GETXATTR,
        Opcode.LISTXATTR,
        Opcode.ACCESS,
        Opcode.READLINK,
        Opcode.STATFS,
        Opcode.FORGET,
        Opcode.BATCH_FORGET,
        Opcode.FLUSH,
        Opcode.RELEASE,
        Opcode.RELEASEDIR,
        Opcode.OPEN,
        Opcode.OPENDIR,
        Opcode.READDIR,
        Opcode.READDIRPLUS,
        Opcode.CREATE,
        Opcode.MKNOD,
        Opcode.MKDIR,
        Opcode.SYMLINK,
        Opcode.LINK,
        Opcode.UNLINK,
        Opcode.RMDIR,
        Opcode.RENAME,
        Opcode.RENAME2,
        Opcode.SETXATTR,
        Opcode.REMOVEXATTR,
    }
)
#: ``fuse_in_header.opcode``: the u32 after the length.
_OPCODE = struct.Struct("<I")
#: The ``fh`` that starts a READ's, WRITE's and RELEASE's body; then a READ's
#: and WRITE's offset and size.
_FH = struct.Struct("<Q")
_FH_RANGE = struct.Struct("<QQI")
#: Requests before which the WRITEs the compiled loop served are told to the
#: open files (``take_written``): what publishes, persists, cuts or ends them.
_TAKES_WRITTEN = frozenset({Opcode.FLUSH, Opcode.FSYNC, Opcode.SETATTR, Opcode.RELEASE})

#: Serving threads. Most of a request's time is an RPC or a memory copy, both
#: outside the GIL, so a few more threads than cores keep the kernel's queue short.
DEFAULT_THREADS = 8


class KernelSession:
    """The serving threads of one mount."""

    def __init__(
        self,
        channel: Channel,
        dispatcher: Dispatcher,
        threads: int = DEFAULT_THREADS,
        *,
        fast: FastPath | None = None,
    ):
        self.channel = channel
        self.dispatcher = dispatcher
        #: The compiled data path (fastio.py), if built: the token holder waits
        #: in it, and it hands back every request it does not answer itself.
        self.fast = fast
        #: (generation, until) of the copy last shown to it per handle (token holder only).
        self._shown: dict[int, tuple[int, int]] = {}
        #: The reader token: held by the one thread that reads the next request.
        self._reader = threading.Lock()
        #: ``reading``: this thread holds the token.
        self._local = threading.local()
        self._threads = [
            threading.Thread(target=self._serve, name=f"daxfs-fuse-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def running(self) -> bool:
        """False once every thread ended (the file system was unmounted)."""
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    def _send(self, reply: Reply) -> None:
        try:
            self.channel.send(reply)
        except OSError:
            # A malformed reply (EINVAL) is this daemon's bug: the caller sees
            # an error from the kernel; keep serving the others.
            log.exception("the kernel refused a reply")

    def _serve(self) -> None:
        inbuf = (ctypes.c_ubyte * REQUEST_BUFFER)()
        data = memoryview(inbuf).cast("B")
        address = ctypes.addressof(inbuf)
        local = self._local
        # Looked up once: a READ or WRITE is served in a few microseconds of
        # Python, and each attribute lookup is a measurable part of them.
        receive, handle_io, send, opcode_of = (
            self.channel.receive,
            self.dispatcher.handle_io,
            self._send,
            _OPCODE.unpack_from,
        )
        fast, fd = self.fast, self.channel.fd
        while True:
            self._reader.acquire()
            local.reading = True
            # This thread answered the last request itself: a synchronous
            # caller's next one comes a few microseconds after the reply, and
            # the compiled loop waits awake for it (FastPath.serve).
            answered = False
            try:
                while local.reading:
                    if fast is None:
                        n = receive(data)
                    else:
                        n = fast.serve(fd, address, REQUEST_BUFFER, answered)
                    if n == 0:
                        return
                    opcode = opcode_of(data, 4)[0]
                    if opcode in IO_OPCODES:
                        handle_io(data[:n], send)
                        if fast is not None:
                            self._show(fast, data, opcode)
                        answered = True
                        continue
                    if fast is not None and opcode in _TAKES_WRITTEN:
                        self.take_written()
                        if opcode == Opcode.RELEASE:
                            fh = _FH.unpack_from(data, IN_HEADER.size)[0]
                            fast.forget(fh)
                            self._shown.pop(fh, None)
                    if opcode not in _KEEPS_TOKEN:
                        self.hand_over()  # may wait: another thread reads the next request
                    reply = self.dispatcher.handle(Request(data[:n], address, self._send))
                    if reply is not None:
                        self._send(reply)
                    # A FORGET has no reply and nobody waiting; a RELEASE is
                    # answered before its work, inside the handler.
                    answered = reply is not None or opcode == Opcode.RELEASE
            finally:
                self.hand_over()

    def _show(self, fast: FastPath, data: memoryview, opcode: int) -> None:
        """After a READ or WRITE served here: show the compiled loop its handle
        as the client knows it now, so that it answers the next ones itself.

        The generation is read before the copy is taken: a change after it
        (which bumps) makes the install fail rather than install a stale copy.
        Not again while the copy it has is current (a READ over a hole or an
        unknown part comes back here each time), nor after a WRITE that grew
        the file (the next one of a writer at the end grows it again, and
        each growth drops the copies).
        """
        fh, offset, size = _FH_RANGE.unpack_from(data, IN_HEADER.size)
        now = time.monotonic_ns()
        generation = fast.generation()
        shown = self._shown.get(fh)
        if shown is not None and shown[0] == generation and shown[1] > now:
            return
        ops = self.dispatcher.ops
        copy = ops.io_copy(fh)
        until = ops.copies_until_ns()
        if copy is None or until <= now:
            return
        if opcode == Opcode.WRITE and offset + size >= copy.size:
            return
        if fast.install(fh, generation, copy, until):
            self._shown[fh] = (generation, until)

    def take_written(self) -> None:
        """Tell the open files what the compiled loop wrote through them
        (before a FLUSH, FSYNC, SETATTR or RELEASE, and at the end)."""
        fast = self.fast
        if fast is None:
            return
        ops = self.dispatcher.ops
        for w in fast.take_written():
            ops.overwrote(w.fh, w.lo, w.hi)

    def await_reply(self, sock: int, timeout: float) -> None:
        """An RPC's frame is sent on ``sock``: wait for its reply or for a request.

        Called on the thread that will read the reply. The token holder polls
        the reply's socket and /dev/fuse together and hands the token over
        only if a request (or the unmount) comes first: a synchronous caller
        (one request at a time, the common case) then never wakes another
        thread, which cost about 45 µs of daemon CPU per RPC (mkdir + rename +
        rmdir: 505 µs per directory with a hand-over before each call, 370
        without). Returns at once on a thread without the token, and after
        ``timeout`` seconds (the reply's read then times out as before).
        """
        local = self._local
        if not getattr(local, "reading", False):
            return
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self.channel.fd, select.POLLIN)
        ready = poller.poll(max(0, int(timeout * 1000)))
        if any(fd == self.channel.fd for fd, _ in ready):
            self.hand_over()

    def hand_over(self) -> None:
        """The calling thread is about to wait: another one reads the next request.

        A no-op in a thread without the token (or not a serving thread at all).
        """
        local = self._local
        if getattr(local, "reading", False):
            local.reading = False
            self._reader.release()
