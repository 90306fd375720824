"""Telling the kernel to drop what it caches of a file: FUSE_NOTIFY_INVAL_INODE / _ENTRY.

With metadata caching on (``daxfs mount --cache-metadata``) the kernel keeps
attributes and names for a while (the dispatcher's entry and attribute
timeouts) and the server tells this client, before another guest's change
returns, what it may no longer trust (``SessionEvent.invalidate``;
``server/cache_grants.py``). The client's metadata cache drops it, and then
this notifier makes the kernel drop it too: an inode's attributes by its node
ids (``NOTIFY_INVAL_INODE``, every hard link's node), a name by (parent node,
name) (``NOTIFY_INVAL_ENTRY``). Only after the writes are done does the client
acknowledge, so the other guest's change returns only once this kernel can no
longer answer from the old state.

The writes happen on this module's own thread, never on a serving thread:
invalidating an entry takes the directory's lock in the kernel, which a
request being served may hold while it waits for this daemon's reply. A
caller that must wait for the writes (an invalidation from another guest)
waits on that thread; this client's own changes (the reply trailer) are
queued without waiting.

A node the kernel has already forgotten makes the write fail with ENOENT:
nothing was cached, nothing to do.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections.abc import Iterable
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
    done: threading.Event = field(default_factory=threading.Event)


class Notifier:
    """Kernel cache invalidations for one mount, written from one thread."""

    def __init__(self, channel: Channel, nodes: NodeTable) -> None:
        self.channel = channel
        self.nodes = nodes
        self.sent = 0
        self.late = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="daxfs-fuse-notify", daemon=True)
        self._thread.start()

    # -- the client's cache listener ----------------------------------------------

    def invalidate(self, inos: Iterable[int], paths: Iterable[str], *, wait: bool) -> None:
        """Drop the attributes of ``inos`` and the names at ``paths`` (and what lies under).

        ``wait`` waits at most ``WAIT_S``: invalidating a name takes its
        directory's lock in the kernel, which a request of this mount in that
        directory holds while the server answers it, and the server may be
        waiting for another mount whose own notification waits the same way.
        Past the bound the acknowledgement goes anyway (the write follows as
        soon as the lock is free): a stale name may outlive the other guest's
        change by that long, instead of both changes stalling for a lease.
        """
        job = _Job(list(inos), list(paths))
        self._jobs.put(job)
        if wait and not job.done.wait(WAIT_S):
            self.late += 1
            log.info("kernel invalidation still waiting after %.1f s: acknowledging", WAIT_S)

    def invalidate_all(self, *, wait: bool) -> None:
        """Drop every attribute and name the kernel may cache (stream down, new session)."""
        job = _Job([], [], everything=True)
        self._jobs.put(job)
        if wait:
            job.done.wait()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(5)

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
                job.done.set()

    def _apply(self, job: _Job) -> None:
        if job.everything:
            for nodeid, parent, name in self.nodes.known():
                self._inval_inode(nodeid)
                if parent is not None and name is not None:
                    self._inval_entry(parent, name)
            return
        for ino in job.inos:
            for nodeid in self.nodes.nodes_of(ino):
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
