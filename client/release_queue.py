"""Releases sent after ``close()`` returns: a reader's Release leaves the critical path.

What a close must do before it returns is local or already done: the size is
published (CommitLayout, synchronous, so close-to-open holds for every other
guest), the file's layouts are dropped from the cache, and the lease id to
return is taken. What is left, the Release (with ``return_lease_id``), only
tells the server it may forget the handle and end the lease. For a reader,
nothing a guest can see depends on *when* that arrives except what the
release frees: a deferred release holds an unlinked file's blocks a little
longer, which costs space, never safety: blocks leave a lease only through a
recall or a return, and a late return of an older lease id is ignored by the
server.

Only a reader's close defers: a writer's release trims the file's
speculative preallocation, which every guest sees (``st_blocks``, free
space), so a writer's close still waits for it. So a reader's ``close()``
queues the Release and returns; one worker thread per client
sends the queued releases in order. After a server restart or eviction the
handle and the session it names are void: the server refuses it (the session
is unknown) and the release is dropped, as a synchronous one would be.

Order, as this client sees it, is kept: the client's next call waits until
every release queued before it has been answered (:meth:`ReleaseQueue.drain`),
so close-then-stat, close-then-unlink-then-statfs and the like observe the
release exactly as before. What moves is the idle time after a close: a
reader's open + map + copy + close costs one round trip, not two, after idle,
where each gRPC call is slowest (1.6-2.2 ms against 0.6-0.9 in a loop here).
Another client may see the handle open a few milliseconds longer; to it that
is a slow closer, which the protocol always allowed.

On the frame socket a queued release does not even cost its own round trip:
it waits (up to ``CARRY_WAIT_S``) for this client's next call, which carries
it in the same frame (``FrameCall.before``: the server answers it first, as
if sent alone, so the order is the same). The FUSE mount, whose close(2)
returned at FLUSH before the kernel even sends RELEASE, defers a writer's
release too: create + close + unlink of an empty file then costs two round
trips instead of three (the Release rides with the Unlink), about 100 µs of
the daemon's and the server's CPU per file here. Only when no call comes
does the worker send what waits, after ``CARRY_WAIT_S``; :meth:`drain` (and
with it ``Client.wait_released``) sends at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from daxfs.shared import errors

log = logging.getLogger(__name__)

#: What a queued call may ride as (rpc.py's ``Carried``: method, request, answer handler).
C = TypeVar("C")

#: How long a release that may ride with the next call waits for one before the
#: worker sends it alone (seconds). Short against a recall's patience, long
#: against the gap between two calls of a busy client (well under 1 ms).
CARRY_WAIT_S = 0.005
#: How long the worker, its queue empty, still wakes every CARRY_WAIT_S before
#: it waits to be woken (which costs the next defer a thread switch).
_LINGER_S = 0.1


class ReleaseQueue(Generic[C]):
    """Sends queued calls in order on one worker thread; :meth:`drain` waits for
    them; :meth:`take` hands them to a call that carries them instead (as
    ``C``: what the wire, rpc.py, needs to send them so)."""

    def __init__(self, name: str = "daxfs-release") -> None:
        self._name = name
        self._lock = threading.Lock()
        #: The worker waits on it for calls to send.
        self._work = threading.Condition(self._lock)
        #: :meth:`drain` and :meth:`take` wait on it for the worker.
        self._done = threading.Condition(self._lock)
        #: (call, how it may be carried, when it was queued: monotonic seconds).
        self._queue: deque[tuple[Callable[[], None], C | None, float]] = deque()  # guarded by _lock
        self._busy = False  # guarded by _lock
        self._closed = False  # guarded by _lock
        #: Calls taken by a carrier whose answer has not come yet (:meth:`carried`).
        self._riding = 0  # guarded by _lock
        #: Set by drain: the worker sends what is queued without waiting for a carrier.
        self._urgent = False  # guarded by _lock
        #: The worker waits with no deadline: a defer must wake it.
        self._idle = False  # guarded by _lock
        self._worker: threading.Thread | None = None
        #: Called before :meth:`drain` or :meth:`take` waits (the FUSE daemon hands
        #: its /dev/fuse descriptor to another serving thread, as before an RPC).
        self.before_wait: Callable[[], None] | None = None

    def defer(self, send: Callable[[], None], carry: C | None = None) -> None:
        """Run ``send`` after the caller returns (at once, here, once the queue is
        closed); with ``carry``, it may instead ride with the next call (:meth:`take`)."""
        with self._lock:
            if not self._closed:
                self._queue.append((send, carry, time.monotonic()))
                if self._worker is None:
                    self._worker = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._worker.start()
                # A worker waiting with a deadline finds it then: no wake-up
                # (a thread switch) per release of a busy client.
                if self._idle or carry is None:
                    self._work.notify()
                return
        self.send_quietly(send)

    def take(self) -> list[C] | None:
        """The queued calls, for the caller's next call to carry, in order; None
        when one of them cannot ride (then the caller :meth:`drain` s instead).

        A call the worker is sending is waited for first: it goes before them.
        Empty on the worker itself (what it sends is not carried). The caller
        says :meth:`carried` once their answers came (or the call failed):
        :meth:`drain` waits for that too.
        """
        if threading.current_thread() is self._worker:
            return []
        with self._lock:
            if not (self._queue or self._busy):
                return []
            busy = self._busy
        if busy and self.before_wait is not None:
            self.before_wait()
        with self._lock:
            while self._busy:
                self._done.wait()
            if any(carry is None for _, carry, _ in self._queue):
                return None
            taken = [carry for _, carry, _ in self._queue if carry is not None]
            self._queue.clear()
            self._riding += len(taken)
            return taken

    def carried(self, n: int) -> None:
        """``n`` calls :meth:`take` handed out were answered with their carrier
        (or lost with it)."""
        if n:
            with self._lock:
                self._riding -= n
                self._done.notify_all()

    def drain(self) -> None:
        """Return once every call queued before now has been answered.

        A no-op on the worker itself (a queued release is not ordered behind itself).
        """
        if threading.current_thread() is self._worker:
            return
        with self._lock:
            if not (self._queue or self._busy or self._riding):
                return
            self._urgent = True
            self._work.notify()
        if self.before_wait is not None:
            self.before_wait()
        with self._lock:
            while self._queue or self._busy or self._riding:
                self._done.wait()

    def close(self) -> None:
        """Send what is queued, then stop the worker; later calls are sent synchronously."""
        self.drain()
        with self._lock:
            self._closed = True
            self._work.notify()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()

    @property
    def pending(self) -> int:
        """Calls queued or in flight (sent by the worker, or riding with a call)."""
        with self._lock:
            return len(self._queue) + self._busy + self._riding

    def _run(self) -> None:
        empty_since: float | None = None
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    if not self._queue:
                        if self._closed:
                            return
                        self._urgent = False
                        # Linger a while with a deadline (a busy client's next
                        # release comes soon), then wait to be woken.
                        empty_since = now if empty_since is None else empty_since
                        if now - empty_since < _LINGER_S:
                            self._work.wait(CARRY_WAIT_S)
                        else:
                            self._idle = True
                            self._work.wait()
                            self._idle = False
                        continue
                    empty_since = None
                    _, carry, queued = self._queue[0]
                    wait = queued + CARRY_WAIT_S - now
                    if carry is None or self._urgent or self._closed or wait <= 0:
                        break
                    self._work.wait(wait)  # for a call to carry it
                send, _, _ = self._queue.popleft()
                self._busy = True
            try:
                self.send_quietly(send)
            finally:
                with self._lock:
                    self._busy = False
                    self._done.notify_all()

    @staticmethod
    def send_quietly(send: Callable[[], None]) -> None:
        """Send a queued call (or deal with the answer of one that rode with
        another) as the worker does: what nobody waits for is logged, not raised."""
        try:
            send()
        except errors.StaleHandle:  # UnknownSession too
            pass  # the server ended the handle's session already: nothing left to release
        except errors.Unavailable as exc:
            # The server is gone: a restarted one refuses the old session, and
            # one that comes back ends it with the lease; nothing is left to do.
            log.debug("deferred release dropped: %s", exc)
        except errors.DaxfsError as exc:
            # Nobody waits for this answer any more; the server ends the handle
            # with the session at the latest.
            log.warning("deferred release failed: %s", exc)
