"""The client's session stream: lease renewal, layout recalls and self-fencing.

One bidirectional gRPC call for the client's whole life (``Session`` in
daxfs.proto, whose header states the rules this module follows). A thread
sends ``Renew`` every third of the lease; another reads server events:
``Renewed`` moves the lease deadline, ``LayoutRecall`` makes the client drop
the recalled layouts, fence its mappings of the range and answer
``RecallDone``.

Deadlines are this client's own monotonic clock: a ``Renewed`` extends the
lease by ``lease_ns`` from the moment the matching ``Renew`` (same ``seq``)
was *sent*, so no clock is ever compared with the server's (guests may be
VMs or other machines).

Self-fencing: if the deadline comes within a sixth of a lease without a
successful renewal (the server is gone, or the stream is broken), the client
fences every mapping and refuses copies (StaleHandle) until a renewal
succeeds again. If the server answers the stream with ESTALE (it restarted,
or it presumed this session gone), ``on_lost`` fences everything and opens a
new session, whose caller the stream uses from then on.
"""

from __future__ import annotations

import errno
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from daxfs.client.lease_state import LeaseState
from daxfs.proto import daxfs_pb2 as pb
from daxfs.shared.limits import ERRNO_KEY

log = logging.getLogger(__name__)


def _errno_of(exc: grpc.RpcError) -> int | None:
    for key, value in (exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else ():
        if key == ERRNO_KEY:
            return int(value)
    return None


class Session:
    def __init__(
        self,
        stub: Any,
        metadata: tuple[tuple[str, str], ...],
        caller: pb.Caller,
        lease_ns: int,
        *,
        on_recall: Callable[[pb.LayoutRecall], None],
        on_deadline: Callable[[], None],
        on_lost: Callable[[int], pb.Caller | None],
        clock: Callable[[], int] = time.monotonic_ns,
        state: LeaseState | None = None,
        on_invalidate: Callable[[pb.Invalidate, Callable[[], None]], None] = (
            lambda inv, done: done()
        ),
        on_attached: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self.caller = caller
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
        self._stream_id = caller.client_id
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
        """True while the lease has not run out on our clock (copies check it after copying)."""
        with self._lock:
            return self.state.lease_valid()

    def _renew_request(self) -> pb.SessionRequest:
        with self._lock:
            seq = self.state.renew_sent()
        return pb.SessionRequest(caller=self.caller, renew=pb.Renew(seq=seq))

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
        self._stream_id = self.caller.client_id  # the session this stream attaches
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
                        self._on_invalidate(inv, functools.partial(self._invalidated, inv.id))
                    elif kind == "recall":
                        self._on_recall(event.recall)
                        self.recalls += 1  # after fencing: observers may rely on it
                        self.send(
                            pb.SessionRequest(
                                caller=self.caller,
                                recall_done=pb.RecallDone(recall_id=event.recall.recall_id),
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
        self.send(pb.SessionRequest(caller=self.caller, invalidate_done=done))

    def _lost(self, exc: grpc.RpcError) -> None:
        """The server does not know our session: fence everything, then open a new one."""
        log.warning("session ended by the server (%s): fencing, then a new session", exc.details())
        stale = self._stream_id
        if stale != self.caller.client_id:
            return  # a call found out first and a new session was adopted already
        with self._lock:
            self.state.lost()
        if self._on_lost(stale) is None:
            self._stop.wait(1.0)  # the server is unreachable again: retry the stream later

    def adopt(self, caller: pb.Caller, sent_ns: int) -> None:
        """A new session replaced ours (its Hello was sent at ``sent_ns``, our clock)."""
        self.sessions_lost += 1
        with self._lock:
            self.state.new_session(sent_ns)
        self.caller = caller
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
