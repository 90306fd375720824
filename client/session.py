"""The client's session stream: lease renewal, layout recalls and self-fencing.

One bidirectional gRPC call for the client's whole life (``Session`` in
daxfs.proto). A thread sends ``Renew`` every third of the lease; another reads
server events: ``Renewed`` moves the lease deadline, ``LayoutRecall`` makes
the client drop the recalled layouts, fence its mappings of the range and
answer ``RecallDone``.

Self-fencing: if the deadline comes within a sixth of a lease without a
successful renewal (the server is gone, or the stream is broken), the client
fences every mapping and refuses copies (StaleHandle) until a renewal
succeeds again. Server and guests share one machine, so they share the wall
clock that deadlines are expressed in.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from daxfs.proto import daxfs_pb2 as pb

log = logging.getLogger(__name__)


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
        on_renewed: Callable[[int], None],
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._caller = caller
        self.lease_ns = lease_ns
        self.expires_ns = time.time_ns() + lease_ns
        self._on_recall = on_recall
        self._on_deadline = on_deadline
        self._on_renewed = on_renewed
        self._out: queue.SimpleQueue[pb.SessionRequest | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._call: Any = None
        self.fenced = False
        self.recalls = 0
        self._reader = threading.Thread(target=self._read_loop, name="daxfs-session", daemon=True)
        self._renewer = threading.Thread(target=self._renew_loop, name="daxfs-renew", daemon=True)
        self._reader.start()
        self._renewer.start()

    def _requests(
        self, out: queue.SimpleQueue[pb.SessionRequest | None]
    ) -> Iterator[pb.SessionRequest]:
        yield pb.SessionRequest(caller=self._caller, renew=pb.Renew())
        while True:
            item = out.get()
            if item is None:
                return
            yield item

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._call = self._stub.Session(self._requests(self._out), metadata=self._metadata)
                for event in self._call:
                    kind = event.WhichOneof("kind")
                    if kind == "renewed":
                        self.expires_ns = event.renewed.expires_ns
                        self.fenced = False
                        self._on_renewed(self.expires_ns)
                    elif kind == "recall":
                        self._on_recall(event.recall)
                        self.recalls += 1  # after fencing: observers may rely on it
                        self.send(
                            pb.SessionRequest(
                                caller=self._caller,
                                recall_done=pb.RecallDone(recall_id=event.recall.recall_id),
                            )
                        )
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                log.warning("session stream lost (%s); retrying", exc.code())
            except Exception:
                log.exception("session stream failed")
            if self._stop.wait(1.0):
                return
            # End the old request generator; the next call gets a fresh queue.
            old, self._out = self._out, queue.SimpleQueue()
            old.put(None)

    def send(self, request: pb.SessionRequest) -> None:
        self._out.put(request)

    def _renew_loop(self) -> None:
        period = max(self.lease_ns / 3e9, 0.05)
        while not self._stop.wait(period):
            self.send(pb.SessionRequest(caller=self._caller, renew=pb.Renew()))
            self.check_deadline()

    def check_deadline(self) -> None:
        """Fence everything when the lease is about to end unrenewed."""
        margin = self.lease_ns // 6
        if not self.fenced and time.time_ns() >= self.expires_ns - margin:
            log.warning("lease ends unrenewed: fencing every mapping")
            self.fenced = True
            self._on_deadline()

    def close(self) -> None:
        self._stop.set()
        self._out.put(None)
        if self._call is not None:
            self._call.cancel()
        self._reader.join(timeout=5)
        self._renewer.join(timeout=5)
