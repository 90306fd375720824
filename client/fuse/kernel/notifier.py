"""Telling the kernel to drop what it caches of a file: FUSE_NOTIFY_INVAL_INODE / _ENTRY.

With metadata caching on (``daxfs mount --cache-metadata``) the kernel keeps
attributes and names for a while (the dispatcher's entry and attribute
timeouts) and the server tells this client, before another guest's change
returns, what it may no longer trust (``SessionEvent.invalidate``;
``server/cache_grants.py``). The client's metadata cache drops it, and then
this notifier makes the kernel drop it too: an inode's attributes by its node
ids (``NOTIFY_INVAL_INODE``, every hard link's node), a name by (parent node,
name) (``NOTIFY_INVAL_ENTRY``). Only after the writes are done does this
thread acknowledge (the session stream's reader hands it the acknowledgement
and goes on renewing), so the other guest's change returns only once this
kernel can no longer answer from the old state.

The writes happen on this module's own thread, never on a serving thread:
invalidating an entry takes the directory's lock in the kernel, which a
request being served may hold while it waits for this daemon's reply.

This mount's own changes are mostly not notified: the kernel made them
itself and updated what it caches from their replies (a size, a name, the
parent's attributes), and dropping the named inodes too would cost every
closed file a GETATTR. Two exceptions: a file the kernel knows under several
names (hard links are separate nodes here, and the kernel updates only the
one it changed through) has every node's attributes dropped, and a change
too long to name (``invalidate_all``) drops everything. What the daemon
commits behind the kernel's back (a written file's size and mtime at close)
is never given the kernel for long (``Dispatcher``: a node open here keeps
``--attr-timeout``).

A node the kernel has already forgotten makes the write fail with ENOENT:
nothing was cached, nothing to do.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from daxfs.client.fuse.kernel import protocol as p
from daxfs.client.fuse.kernel.channel import Channel
from daxfs.client.fuse.kernel.nodes import NodeTable

log = logging.getLogger(__name__)

#: Longest an acknowledgement waits for the kernel to take a notification.
WAIT_S = 1.0


@dataclass(slots=True)
class _Job:
    inos: list[int]
    paths: list[str]
    everything: bool = False
    #: This mount's own change: only inodes known under several names.
    own: bool = False
    #: The acknowledgement to the server (another guest's change), called once.
    ack: Callable[[], None] | None = None
    #: When the acknowledgement goes even if the writes have not (monotonic s).
    deadline: float = 0.0
    acked: bool = False  # guarded by Notifier._lock
    written: threading.Event = field(default_factory=threading.Event)


class Notifier:
    """Kernel cache invalidations for one mount, written from one thread."""

    def __init__(self, channel: Channel, nodes: NodeTable) -> None:
        self.channel = channel
        self.nodes = nodes
        self.sent = 0
        self.late = 0
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        #: Jobs with an acknowledgement, in order, for the thread that bounds the wait.
        self._acks: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="daxfs-fuse-notify", daemon=True)
        self._thread.start()
        self._bound = threading.Thread(target=self._late, name="daxfs-fuse-ack", daemon=True)
        self._bound.start()

    # -- the client's cache listener ----------------------------------------------

    def invalidate(
        self, inos: Iterable[int], paths: Iterable[str], done: Callable[[], None]
    ) -> None:
        """Drop the attributes of ``inos`` and the names at ``paths`` (and what lies
        under), then call ``done`` (the acknowledgement). Returns at once.

        ``done`` waits at most ``WAIT_S``: invalidating a name takes its
        directory's lock in the kernel, which a request of this mount in that
        directory holds while the server answers it, and the server may be
        waiting for another mount whose own notification waits the same way.
        Past the bound the acknowledgement goes anyway (the write follows as
        soon as the lock is free): a stale name may outlive the other guest's
        change by that long, instead of both changes stalling for a lease.
        """
        job = _Job(list(inos), list(paths), ack=done, deadline=time.monotonic() + WAIT_S)
        self._acks.put(job)
        self._jobs.put(job)

    def invalidate_own(self, inos: Iterable[int]) -> None:
        """This mount's own change (see the module's docstring): drops the
        attributes of files the kernel knows under several names, waiting at
        most ``WAIT_S`` for it (the next stat of another name must see it)."""
        linked = [ino for ino in inos if len(self.nodes.nodes_of(ino)) > 1]
        if linked:
            job = _Job(linked, [], own=True)
            self._jobs.put(job)
            job.written.wait(WAIT_S)

    def invalidate_all(self) -> None:
        """Drop every attribute and name the kernel may cache (stream down, new
        session, a change too long to name). Returns at once."""
        self._jobs.put(_Job([], [], everything=True))

    def close(self) -> None:
        self._jobs.put(None)
        self._acks.put(None)
        self._thread.join(5)
        self._bound.join(5)

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._apply(job)
            except Exception:
                log.exception("invalidating the kernel's caches failed")
            finally:
                job.written.set()
                self._ack(job)

    def _late(self) -> None:
        """Acknowledge what the kernel has not taken within ``WAIT_S`` (see invalidate)."""
        while True:
            job = self._acks.get()
            if job is None:
                return
            if not job.written.wait(max(0.0, job.deadline - time.monotonic())):
                with self._lock:
                    late = not job.acked
                if late:
                    self.late += 1
                    log.info(
                        "kernel invalidation still waiting after %.1f s: acknowledging", WAIT_S
                    )
                self._ack(job)

    def _ack(self, job: _Job) -> None:
        with self._lock:
            if job.acked or job.ack is None:
                return
            job.acked = True
        job.ack()

    def _apply(self, job: _Job) -> None:
        if job.everything:
            for nodeid, parent, name in self.nodes.known():
                self._inval_inode(nodeid)
                if parent is not None and name is not None:
                    self._inval_entry(parent, name)
            return
        for ino in job.inos:
            nodeids = self.nodes.nodes_of(ino)
            if job.own and len(nodeids) < 2:
                continue
            for nodeid in nodeids:
                self._inval_inode(nodeid)
        for path in job.paths:
            entry = self.nodes.entry_of(path)
            if entry is None:
                continue
            parent, name, node = entry
            # The name, and the node's own attributes: a directory's listing
            # (and what a child lookup found under it) goes with its inode.
            self._inval_entry(parent, name)
            if node is not None:
                self._inval_inode(node)

    def _inval_inode(self, nodeid: int) -> None:
        body = p.NOTIFY_INVAL_INODE_OUT.pack(nodeid, 0, 0)
        self._send(p.NotifyCode.INVAL_INODE, body)

    def _inval_entry(self, parent: int, name: str) -> None:
        raw = name.encode()
        body = p.NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(raw), 0) + raw + b"\0"
        self._send(p.NotifyCode.INVAL_ENTRY, body)

    def _send(self, code: p.NotifyCode, body: bytes) -> None:
        header = p.OUT_HEADER.pack(p.OUT_HEADER.size + len(body), int(code), 0)
        try:
            self.channel.send([header, body])
            self.sent += 1
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
