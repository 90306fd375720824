"""Session streams: the edge's wake-up queues that carry recalls and renewals to a client.

One queue per attached client. The core calls :meth:`SessionHub.deliver` (its
``notify`` hook) while it holds its lock, so delivery must never block: the
queues are unbounded. A recall delivered while the client has no stream is not
lost: the lease table keeps it until acknowledged and the next attach re-sends
it (see ``daxfs.server.leases``).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

from daxfs.server.cache_grants import Invalidation
from daxfs.server.leases import RecallNotice
from daxfs.shared.errors import DaxfsError
from daxfs.shared.extent import ClientId


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """Put on a queue to end its stream; with an error, the stream fails with it."""

    error: DaxfsError | None


class SessionHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[ClientId, queue.SimpleQueue[Any]] = {}  # guarded by self._lock
        self.recalls_sent = 0

    def attach(self, client: ClientId) -> queue.SimpleQueue[Any]:
        """A stream opened: recalls for ``client`` go to the returned queue from now on."""
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            old = self._queues.get(client)
            self._queues[client] = q
        if old is not None:
            old.put(StreamEnd(None))  # a client reconnected its stream: end the old one
        return q

    def detach(self, client: ClientId, q: queue.SimpleQueue[Any]) -> bool:
        """The stream of ``q`` ended; True if it was the client's current stream."""
        with self._lock:
            if self._queues.get(client) is q:
                del self._queues[client]
                return True
            return False

    def deliver_invalidation(self, client: ClientId, inv: Invalidation) -> None:
        """Queue an Invalidate; without a stream the client caches nothing (it is dropped)."""
        with self._lock:
            q = self._queues.get(client)
        if q is not None:
            q.put(inv)

    def deliver(self, client: ClientId, notice: RecallNotice) -> None:
        with self._lock:
            q = self._queues.get(client)
            if q is not None:
                self.recalls_sent += 1
        if q is not None:
            q.put(notice)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queues)
