"""Session streams: where the core's recalls wait until a client's stream carries them.

One queue per attached client. The namespace calls :meth:`SessionHub.deliver`
(its ``notify`` hook) while it holds its lock, so delivery must never block:
the queues are unbounded, and a client without a stream simply gets nothing
(its quarantined extents then wait for its lease to expire).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from daxfs.server.leases import Recall
from daxfs.shared.extent import ClientId


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
            old.put(None)  # a client reconnected its stream: end the old one
        return q

    def detach(self, client: ClientId, q: queue.SimpleQueue[Any]) -> None:
        with self._lock:
            if self._queues.get(client) is q:
                del self._queues[client]

    def deliver(self, client: ClientId, recall: Recall) -> None:
        with self._lock:
            q = self._queues.get(client)
            if q is not None:
                self.recalls_sent += 1
        if q is not None:
            q.put(recall)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queues)
