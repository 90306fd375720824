"""The client's session: the stream that keeps it, and what each of its events does.

One bidirectional gRPC call for the client's whole life (``Session`` in
daxfs.proto, whose header states the rules this module follows). A thread
sends ``Renew`` every third of the lease; another reads server events:
``Renewed`` moves the lease deadline, ``LayoutRecall`` makes the client drop
the recalled layouts, fence its mappings of the range and answer
``RecallDone``, ``Invalidate`` drops cached metadata.

:class:`SessionState` holds what the client holds under its session (layouts,
views, the per-inode state, the metadata cache, lease ids) and does what each
event requires: a recall, the deadline, the stream attaching or ending, an
invalidation, the server forgetting the session. The client library
(client/library.py) only wires it up and offers the namespace verbs.

Deadlines are this client's own monotonic clock: a ``Renewed`` extends the
lease by ``lease_ns`` from the moment the matching ``Renew`` (same ``seq``)
was *sent*, so no clock is ever compared with the server's (guests may be
VMs or other machines).

Self-fencing: if the deadline comes within a sixth of a lease without a
successful renewal (the server is gone, or the stream is broken), the client
fences every mapping and refuses copies (StaleHandle) until a renewal
succeeds again. If the server answers the stream with ESTALE (it restarted,
or it presumed this session gone), ``on_lost`` fences everything and opens a
new session, which the stream attaches from then on.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from daxfs.client.fence import Fence
from daxfs.client.inodes import Inode, Inodes
from daxfs.client.layout_cache import LayoutCache
from daxfs.client.lease_state import LeaseState
from daxfs.client.meta_cache import CacheListener, MetaCache, after_all
from daxfs.client.rpc import Hello, Server
from daxfs.proto import daxfs_pb2 as pb
from daxfs.shared.errors import DaxfsError
from daxfs.shared.extent import InodeId
from daxfs.shared.limits import ERRNO_KEY

log = logging.getLogger(__name__)


def _errno_of(exc: grpc.RpcError) -> int | None:
    for key, value in (exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else ():
        if key == ERRNO_KEY:
            return int(value)
    return None


@dataclass(frozen=True, slots=True)
class Recall:
    """The server takes back a file's layouts of a range (``LayoutRecall``)."""

    recall_id: int
    """Named in the acknowledgement (``RecallDone``)."""
    ino: InodeId
    offset: int
    """First byte of the file range recalled."""
    length: int
    """Bytes recalled."""
    seq: int
    """The session's recall counter: a layout granted at a lower ``recall_seq`` is void."""


@dataclass(frozen=True, slots=True)
class Invalidation:
    """Another guest's change made these cached answers stale (``Invalidate``)."""

    id: int
    inos: tuple[int, ...]
    paths: tuple[str, ...]
    """Paths to drop, at and under."""


class Session:
    """The session stream: renews the lease and hands each server event to its handler.

    Two threads: one renews every third of the lease and fences at the fence
    point (``on_deadline``); one reads events and turns them into values for
    ``on_recall`` (then acknowledges it), ``on_invalidate`` and
    ``on_attached``, and reattaches a broken stream. The stream names the
    session ``server`` calls go out in; when the server no longer knows it,
    ``on_lost`` opens a new one (:meth:`SessionState.session_lost`).
    """

    def __init__(
        self,
        server: Server,
        lease_ns: int,
        *,
        on_recall: Callable[[Recall], None],
        on_deadline: Callable[[], None],
        on_lost: Callable[[int], bool],
        clock: Callable[[], int] = time.monotonic_ns,
        state: LeaseState | None = None,
        on_invalidate: Callable[[Invalidation, Callable[[], None]], None] = (
            lambda inv, done: done()
        ),
        on_attached: Callable[[bool], None] = lambda up: None,
    ) -> None:
        #: The stream's calls name the session the server's calls do (``Server.caller``).
        self._server = server
        self._stub = server.conn.stub
        self._metadata = server.conn.metadata
        self.lease_ns = lease_ns
        self._clock = clock
        #: The deadline and the renewals in flight (client/lease_state.py); guarded by _lock.
        #: Hello counts as a renewal sent when the session was opened (just before this object).
        self.state = state if state is not None else LeaseState(lease_ns, clock)
        self._on_recall = on_recall
        self._on_deadline = on_deadline
        self._on_lost = on_lost
        #: Given each Invalidate and the function that acknowledges it, which it
        #: calls once every cache dropped it (the kernel's may take a moment,
        #: client/fuse/kernel/notifier.py; this thread goes on meanwhile).
        self._on_invalidate = on_invalidate
        #: Called with True at the first Renewed of each stream, False when it ends.
        self._on_attached = on_attached
        self._out: queue.SimpleQueue[pb.SessionRequest | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._stream_id = server.client_id
        self.recalls = 0
        self.sessions_lost = 0
        self._reader = threading.Thread(target=self._read_loop, name="daxfs-session", daemon=True)
        self._renewer = threading.Thread(target=self._renew_loop, name="daxfs-renew", daemon=True)
        self._reader.start()
        self._renewer.start()

    # -- the deadline ----------------------------------------------------------

    @property
    def deadline_ns(self) -> int:
        """Our monotonic ns when the lease ends unless renewed."""
        return self.state.deadline_ns

    @property
    def fenced(self) -> bool:
        return self.state.fenced

    def lease_valid(self) -> bool:
        """True while the lease has not run out on our clock (copies check it after copying).

        Without the lock: it reads two fields, each atomically, on every copy
        (a 4 KiB READ through the mount checks it twice); a renewal or a fence
        racing with it is seen by the next check, as it would be with the lock.
        """
        return self.state.lease_valid()

    def _renew_request(self) -> pb.SessionRequest:
        with self._lock:
            seq = self.state.renew_sent()
        return pb.SessionRequest(caller=self._server.caller, renew=pb.Renew(seq=seq))

    def _renewed(self, event: pb.Renewed) -> None:
        with self._lock:
            self.state.renewed(event.seq, event.lease_ns)

    def check_deadline(self) -> None:
        """Fence everything when the lease is about to end unrenewed."""
        with self._lock:
            due = self.state.due_to_fence()
        if due:
            log.warning("lease ends unrenewed: fencing every mapping")
            self._on_deadline()

    # -- the stream ------------------------------------------------------------

    def _requests(
        self, out: queue.SimpleQueue[pb.SessionRequest | None]
    ) -> Iterator[pb.SessionRequest]:
        self._stream_id = self._server.client_id  # the session this stream attaches
        yield self._renew_request()
        while True:
            item = out.get()
            if item is None:
                return
            yield item

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            retry_s = 1.0
            attached = False
            try:
                self._call = self._stub.Session(self._requests(self._out), metadata=self._metadata)
                for event in self._call:
                    kind = event.WhichOneof("kind")
                    if kind == "renewed":
                        self._renewed(event.renewed)
                        if not attached:
                            attached = True
                            self._on_attached(True)
                    elif kind == "invalidate":
                        inv = event.invalidate
                        self._on_invalidate(
                            Invalidation(inv.id, tuple(inv.inos), tuple(inv.paths)),
                            functools.partial(self._invalidated, inv.id),
                        )
                    elif kind == "recall":
                        r = event.recall
                        self._on_recall(
                            Recall(r.recall_id, InodeId(r.ino), r.offset, r.length, r.seq)
                        )
                        self.recalls += 1  # after fencing: observers may rely on it
                        self.send(
                            pb.SessionRequest(
                                caller=self._server.caller,
                                recall_done=pb.RecallDone(recall_id=r.recall_id),
                            )
                        )
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                if exc.code() == grpc.StatusCode.CANCELLED:
                    retry_s = 0.0  # adopt() cancelled it: reattach as the new session
                elif _errno_of(exc) == errno.ESTALE:
                    self._lost(exc)
                    retry_s = 0.0
                else:
                    log.warning("session stream lost (%s); retrying", exc.code())
            except Exception:
                log.exception("session stream failed")
            self._on_attached(False)
            if self._stop.wait(retry_s):
                return
            # End the old request generator; the next call gets a fresh queue.
            old, self._out = self._out, queue.SimpleQueue()
            old.put(None)

    def _invalidated(self, invalidation_id: int) -> None:
        """Acknowledge an invalidation (from whichever thread dropped the last cache).

        After the stream was replaced the server no longer waits for it and
        ignores the id.
        """
        done = pb.InvalidateDone(id=invalidation_id)
        self.send(pb.SessionRequest(caller=self._server.caller, invalidate_done=done))

    def _lost(self, exc: grpc.RpcError) -> None:
        """The server does not know our session: fence everything, then open a new one."""
        log.warning("session ended by the server (%s): fencing, then a new session", exc.details())
        stale = self._stream_id
        if stale != self._server.client_id:
            return  # a call found out first and a new session was adopted already
        with self._lock:
            self.state.lost()
        if not self._on_lost(stale):
            self._stop.wait(1.0)  # the server is unreachable again: retry the stream later

    def adopt(self, sent_ns: int) -> None:
        """A new session replaced ours, adopted by the server's calls already
        (its Hello was sent at ``sent_ns``, our clock)."""
        self.sessions_lost += 1
        with self._lock:
            self.state.new_session(sent_ns)
        call = self._call
        if call is not None:
            call.cancel()  # reattach at once, under the new session

    def send(self, request: pb.SessionRequest) -> None:
        self._out.put(request)

    def _renew_loop(self) -> None:
        # Wake for the next renewal, or for the fencing point if that comes first:
        # views must be fenced before the lease ends, not at the next renewal.
        period = max(self.lease_ns // 3, 50_000_000)
        next_renew = self._clock() + period
        while True:
            with self._lock:
                fenced, fence_at = self.state.fenced, self.state.fence_at
            wake = next_renew if fenced else min(next_renew, fence_at)
            if self._stop.wait(max(wake - self._clock(), 0) / 1e9 + 0.001):
                return
            if self._clock() >= next_renew:
                self.send(self._renew_request())
                next_renew = self._clock() + period
            self.check_deadline()

    def close(self) -> None:
        self._stop.set()
        self._out.put(None)
        if self._call is not None:
            self._call.cancel()
        self._reader.join(timeout=5)
        self._renewer.join(timeout=5)


class SessionState:
    """What this client holds under its session, and what each session event does to it.

    It holds the layouts (``layouts``), the views and the copies in flight
    (``fence``), the recall numbers and the deadline (``lease_state``), what
    the client knows of each open file (``inodes``), the metadata cache and
    the caches behind it (``meta_cache``, ``cache_listeners``) and the lease
    id per file. The events come from the session stream (:class:`Session`,
    started here unless the client has none) and from calls: a recall, the
    deadline coming unrenewed, the stream attaching or ending, another
    guest's change, this client's own change, and the server forgetting the
    session (a new one is opened; what the old one held is void).
    """

    def __init__(
        self,
        server: Server,
        hello: Hello,
        *,
        say_hello: Callable[[], Hello],
        stream: bool,
        cache_metadata: bool,
    ) -> None:
        self._server = server
        #: Opens a new session (the client's Hello, with its name).
        self._say_hello = say_hello
        self.lease_ns = hello.lease_ns
        self.region_uuid = hello.region_uuid
        #: Moves when the server restarts (a new session learns it).
        self.server_instance = hello.server_instance
        #: Metadata answers kept until the server takes them back (client/meta_cache.py);
        #: only with a session stream, which carries the invalidations.
        self.caches_metadata = cache_metadata and stream
        self.meta_cache = MetaCache()
        #: Other caches of the same answers (the FUSE edge's kernel): told what to drop.
        self.cache_listeners: list[CacheListener] = []
        self.layouts = LayoutCache()
        self.fence = Fence()
        #: What this client knows of each file it has open, shared by its open
        #: files of it (client/inodes.py): one size model, the recalls seen per file.
        self.inodes = Inodes()
        #: The protocol core (client/lease_state.py): the deadline (guarded by the
        #: session stream) and the highest recall seq seen per file in this session
        #: (a layout granted at a lower seq was overtaken by that recall and is
        #: discarded; guarded by the fence's exclusive lock (written) / shared
        #: lock (read with inserts)).
        self.lease_state = LeaseState(self.lease_ns, time.monotonic_ns)
        #: Moves when the server ends our session (restart, eviction): files
        #: opened before then are void (ESTALE).
        self.epoch = 0
        #: The lease id per file, for return-on-close. Guarded by _lock.
        self._lock = threading.Lock()
        self._lease_ids: dict[InodeId, int] = {}
        self._recover_lock = threading.Lock()
        #: Sessions of ours the server ended (a call naming one is recovered).
        self._past_sessions: set[int] = set()
        server.recover = self.recover
        self.stream: Session | None = None
        if stream:
            self.stream = Session(
                server,
                self.lease_ns,
                on_recall=self.recalled,
                on_deadline=self.deadline_passed,
                on_lost=self.session_lost,
                state=self.lease_state,
                on_invalidate=self.invalidated,
                on_attached=self.attached,
            )
            if self.caches_metadata:
                server.conn.on_invalidated = self.own_change

    # -- recalls and fencing -------------------------------------------------

    def recalled(self, recall: Recall) -> None:
        """The server takes back a range of a file: no copy from it is in flight
        when this returns, no cached layout names it, no view maps it."""
        ino = recall.ino
        with self.fence.io.exclusive():  # no copy from the range is in flight after this
            self.lease_state.recall_seen(ino, recall.seq)
            self.layouts.invalidate(ino)
            self.fence.fence(ino, recall.offset, recall.length)
            self.inodes.recalled(ino)
        log.debug(
            "recall %d: ino=%d [%d, +%d)", recall.recall_id, ino, recall.offset, recall.length
        )

    def deadline_passed(self) -> None:
        """The lease is about to end unrenewed: fence every view, drop every layout."""
        # Views first, at once: the exclusive lock waits for copies in flight, and
        # a view must not stay live past the lease while a copy finishes. Then
        # again under the lock, for a view registered meanwhile by array().
        self.fence.fence(None)
        self.meta_cache.close()
        with self.fence.io.exclusive():
            self.layouts.clear()
            self.fence.fence(None)

    def lease_valid(self) -> bool:
        """True while our lease holds on our own clock (always, without a session stream)."""
        return self.stream is None or self.stream.lease_valid()

    def copies_until_ns(self) -> int:
        """Until when (monotonic ns) a copy of the layouts and sizes this client
        knows may be used without looking again: the lease's self-fencing point
        (before its end); 0 once fenced; far off without a session stream."""
        if self.stream is None:
            return 1 << 62
        lease = self.lease_state
        return 0 if lease.fenced else lease.fence_at

    def watch_copies(self, drop: Callable[[], None]) -> None:
        """Have ``drop`` called after every change to what a copy of this client's
        layouts and sizes was taken from (a layout cached or dropped, a recall,
        a size seen or written) and at every fence; it must drop the copy and
        return only when no use of it is in flight (a recall is acknowledged
        after that). One watcher at a time (the mount's compiled READ path)."""
        self.layouts.on_change = drop
        self.inodes.on_change = drop
        self.lease_state.on_fence = drop

    # -- the metadata cache ----------------------------------------------------

    def attached(self, up: bool) -> None:
        """The session stream is attached (its first Renewed came) or ended."""
        if up and self.caches_metadata:
            self.meta_cache.open()
        else:
            self.meta_cache.close()
            for listener in self.cache_listeners:
                listener.invalidate_all()

    def invalidated(self, inv: Invalidation, done: Callable[[], None]) -> None:
        """Another guest's change: dropped here at once, acknowledged (``done``) once
        every listener dropped it too (the kernel's, from its own thread)."""
        self.meta_cache.invalidate(inv.inos, inv.paths)
        listeners = list(self.cache_listeners)
        if not listeners:
            done()
            return
        one = after_all(len(listeners), done)
        for listener in listeners:
            listener.invalidate(inv.inos, inv.paths, one)

    def own_change(self, blob: bytes) -> None:
        """What this client's own change made stale (a reply's INVALIDATED_KEY trailer).

        Applied on the calling thread before the call returns (``Connection.call``):
        ``MetaCache.changed`` then tells this trailer's epoch move apart from
        any other, and keeps the reply only if nothing else moved the cache.
        """
        stale = json.loads(blob.decode())  # str: json.loads(bytes) sniffs the encoding
        if stale.get("all"):
            self.meta_cache.clear(own=True)
            for listener in self.cache_listeners:
                listener.invalidate_all()
        else:
            inos = stale.get("inos", ())
            self.meta_cache.invalidate(
                inos, stale.get("paths", ()), own=True, xattrs_kept=stale.get("xattrs_kept", ())
            )
            for listener in self.cache_listeners:
                listener.invalidate_own(inos)

    def cache_ttl(self) -> float:
        """How long an answer of the metadata cache may be trusted from now (seconds).

        The rest of the lease, on this client's clock: past it the server no
        longer waits for this client before changes return. 0 when nothing
        may be cached (caching off, or the session stream is down).
        """
        if not self.caches_metadata or not self.meta_cache.is_open or self.stream is None:
            return 0.0
        return max(0.0, (self.stream.deadline_ns - time.monotonic_ns()) / 1e9)

    # -- leases of open files ----------------------------------------------------

    def closed_file(self, inode: Inode) -> int | None:
        """Return-on-close: the id of the lease the last handle of a file gives back with it.

        None while other handles are open or a view maps the file. The caller
        sends it with the Release (``return_lease_id``): extents the file frees
        later then go straight back to the free list instead of waiting for
        this client's recall acknowledgement.
        """
        ino = inode.ino
        with self._lock:
            if not self.inodes.close(inode):
                return None
            if self.fence.live_views(ino):
                return None
            lease_id = self._lease_ids.pop(ino, None)
        self.layouts.invalidate(ino)
        return lease_id

    def got_lease(self, ino: InodeId, lease_id: int) -> None:
        """A grant named the file's lease: each grant gives it a new, larger id.

        Replies of concurrent grants may arrive in any order; the largest id
        is the lease's current one (an older one no longer returns it).
        """
        with self._lock:
            self._lease_ids[ino] = max(self._lease_ids.get(ino, 0), lease_id)

    # -- a session the server forgot ----------------------------------------------

    def recover(self, stale_id: int) -> bool:
        """A call named session ``stale_id`` and the server did not know it.

        True once a new session replaced it (the call may be retried); False
        if it was none of ours or no new session could be opened.
        """
        if stale_id != self._server.client_id and stale_id not in self._past_sessions:
            return False
        return self.session_lost(stale_id)

    def session_lost(self, stale_id: int) -> bool:
        """The server no longer knows session ``stale_id``: everything we held is void.

        Fence every view and drop every layout first (the server may reuse the
        blocks once our lease has run out), then open a new session. Files
        opened before fail with ESTALE from now on; new opens work. Returns
        False if the server cannot be reached (retried later).
        The session stream and any call may find out first; the first recovers.
        """
        with self._recover_lock:
            if stale_id != self._server.client_id:
                return True  # recovered already
            self._past_sessions.add(stale_id)
            return self._new_session()

    def _new_session(self) -> bool:
        sent = time.monotonic_ns()  # Hello counts as the new session's first renewal
        self.meta_cache.close()
        with self.fence.io.exclusive():
            self.layouts.clear()
            self.fence.fence(None)
            self.lease_state.forget_recalls()
            self.epoch += 1
            self.inodes.new_session()
        with self._lock:
            self._lease_ids.clear()
        try:
            hello = self._say_hello()
        except DaxfsError as exc:
            log.warning("cannot open a new session: %s", exc)
            return False
        if hello.region_uuid != self.region_uuid:
            log.error(
                "the server now serves region %s, not %s", hello.region_uuid, self.region_uuid
            )
            return False
        self._server.adopt(hello.client_id)
        self.server_instance = hello.server_instance
        log.info("new session %d with server instance %d", hello.client_id, hello.server_instance)
        if self.stream is not None:
            self.stream.adopt(sent)
        return True

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
