"""The lease lifecycle: from a layout grant to the reuse of its blocks, in one place.

``leases.py`` holds the state (sessions, leases, recalls, the rules of the
protocol); this module runs it against the region's free space:

1. **grant**: ``Namespace.get_layout`` asks the table for a lease;
2. **free**: a change that takes blocks out of a file (``ExtentMap.cut``)
   hands each :class:`~daxfs.server.extent_map.Freed` piece to
   :meth:`LeaseLifecycle.release`: free at once when nobody may map it,
   otherwise quarantined until every holder acknowledged (or, during the
   restart grace, until the grace ends);
3. **recall**: after the transaction commits, :meth:`send_recalls` queues one
   recall per file and wakes each holder's session stream through the
   :class:`Outbox` the gRPC edge provides (the recall stays queued in the
   table until acknowledged, so a wake-up that finds no stream loses nothing);
4. **wait**: the core waits (:meth:`wait`) until every holder with a live
   stream acknowledged, at most ``RECALL_WAIT_NS``, before the change returns;
5. **release**: an acknowledgement, a dropped session or an operator's evict
   completes the recall (:meth:`complete`): the quarantined blocks go back to
   the free list, or wait out the restart grace.

Callers hold the namespace lock (the one this lifecycle's condition uses)
inside a metadata transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from daxfs.server.allocator import Allocator
from daxfs.server.cache_grants import Invalidation
from daxfs.server.extent_map import Freed
from daxfs.server.leases import LeaseTable, Pending, RecallNotice
from daxfs.server.metadata import Metadata
from daxfs.shared.extent import ClientId, InodeId, PhysRange

log = logging.getLogger(__name__)

#: Quarantine deadline of blocks that wait for recall acknowledgements, not for a time.
UNTIL_ACKNOWLEDGED = (1 << 63) - 1
#: How long a call that freed blocks waits for streams to acknowledge the recall.
RECALL_WAIT_NS = 2_000_000_000
#: Added to one lease for the restart grace period (clock rates differ a little).
GRACE_MARGIN_NS = 1_000_000_000
#: Metadata key: leases left at the last clean stop ("0" lets a restart skip the grace).
LEASES_AT_STOP = "leases_at_stop"


class Outbox(Protocol):
    """Where the core's messages to a client's session stream go (the gRPC edge's hub).

    Both are called under the namespace lock and must never block.
    """

    def deliver(self, client: ClientId, notice: RecallNotice) -> None: ...

    def deliver_invalidation(self, client: ClientId, invalidation: Invalidation) -> None: ...


class NoStreams:
    """The outbox of a core without an edge (tools, tests): recalls wait in the table."""

    def deliver(self, client: ClientId, notice: RecallNotice) -> None:
        pass

    def deliver_invalidation(self, client: ClientId, invalidation: Invalidation) -> None:
        pass


class LeaseLifecycle:
    """Quarantine, recalls and the restart grace of one server instance."""

    def __init__(
        self,
        table: LeaseTable,
        meta: Metadata,
        allocator: Allocator,
        lock: threading.RLock,
        clock: Callable[[], int],
    ) -> None:
        self.table = table
        self.meta = meta
        self.allocator = allocator
        self.clock = clock
        #: Notified whenever recalls or invalidations complete; waits release the lock.
        self.changed = threading.Condition(lock)
        self.outbox: Outbox = NoStreams()
        #: Extents freed under other clients' leases in the current transaction,
        #: per file (the restart grace, not a recall, holds the others).
        self._freed: dict[InodeId, list[Freed]] = {}
        self.grace_until_wall = 0

    # -- server instances ------------------------------------------------------

    def start_instance(self, lease_ns: int) -> int:
        """Begin this instance; returns the wall-clock end of the restart grace period (or 0).

        Clients of an earlier instance may still map blocks it granted. Every
        one of them has fenced itself one lease after its last renewal, on its
        own clock; so for one lease from now every freed block waits in
        quarantine, and blocks the earlier instance left in quarantine (their
        recalls died with it) wait as long. Not needed after a clean stop with
        no lease left (:meth:`record_stop`).
        """
        clean = self.meta.get_meta(LEASES_AT_STOP) == "0"
        grace_end = 0 if clean else self.clock() + lease_ns + GRACE_MARGIN_NS
        with self.meta.transaction():
            self.meta.set_meta(LEASES_AT_STOP, "running")
            for offset, length, until in self.meta.quarantined():
                if until == UNTIL_ACKNOWLEDGED:
                    self.meta.remove_quarantine(offset)
                    self.meta.add_quarantine(offset, length, max(grace_end, self.clock()))
        if grace_end:
            log.info(
                "restart grace: freed blocks wait %.1f s before reuse (earlier sessions fence)",
                (grace_end - self.clock()) / 1e9,
            )
        return grace_end

    def in_grace(self) -> bool:
        return bool(self.grace_until_wall) and self.clock() < self.grace_until_wall

    def record_stop(self) -> None:
        """A clean stop: record whether leases were left, for the next instance's grace.

        Only a lease lets a client map blocks, so a stop with none left (every
        client closed its files, or used only the byte path) needs no grace;
        but a stop inside this instance's own restart grace knows nothing of
        the earlier instance's leases, which may still run (a client frozen
        across a crash and this short life): the next instance takes a whole
        grace again. The simulation found that one (seed 3678637: crash, clean
        stop 21 ms later with no lease of its own, blocks freed at once while
        the frozen client still read them).
        """
        left = "grace" if self.in_grace() else str(len(self.table))
        with self.meta.transaction():
            self.meta.set_meta(LEASES_AT_STOP, left)

    # -- freeing -----------------------------------------------------------------

    def release(
        self, ino: InodeId, piece: Freed, client: ClientId, *, beyond_eof: bool = False
    ) -> None:
        """Give a piece back: at once, or to quarantine while a client may still map it.

        Every lease holder (the caller included: its arrays may map the range)
        gets a recall once the transaction commits, and the blocks stay in
        quarantine until every holder acknowledged or is gone (leases.py). The
        one exception is ``beyond_eof`` for the caller itself: the trim of its
        own preallocation at its last close, which no view of it maps.
        """
        holders = self.table.holders(ino)
        if beyond_eof:
            holders.discard(client)
        if self.in_grace() and not holders:
            # Earlier-instance clients may map anything: time, not recalls, frees it.
            self.allocator.quarantine(piece.region_offset, piece.length, self.grace_until_wall)
            return
        if not holders:
            self.allocator.free(piece.region_offset, piece.length)
            return
        self.allocator.quarantine(piece.region_offset, piece.length, UNTIL_ACKNOWLEDGED)
        self._freed.setdefault(ino, []).append(piece)

    def rollback(self) -> None:
        """The transaction that freed pieces rolled back: no recall for them."""
        self._freed.clear()

    # -- recalls -------------------------------------------------------------------

    def send_recalls(self) -> list[int]:
        """After a commit: one recall per file whose freed extents others may still map."""
        freed, self._freed = self._freed, {}
        started: list[int] = []
        for ino, pieces in freed.items():
            holders = self.table.holders(ino)
            start = min(p.file_offset for p in pieces)
            end = max(p.file_offset + p.length for p in pieces)
            ranges = [PhysRange(p.region_offset, p.length) for p in pieces]
            recall, notices = self.table.start_recall(
                ino, start, end - start, "extents freed", holders, ranges
            )
            log.debug(
                "recall id=%d ino=%d range=[%d,%d) holders=%s",
                recall.id,
                ino,
                start,
                end,
                sorted(holders),
            )
            if not notices:  # the holders' sessions are gone: nobody maps the range
                self.complete([Pending(recall, set(), ranges)])
                continue
            for client, notice in notices:
                self.outbox.deliver(client, notice)
            started.append(recall.id)
        return started

    def complete(self, done: list[Pending]) -> int:
        """Every holder acknowledged (or is gone): quarantined extents go back to the free list."""
        released = 0
        for pending in done:
            for offset, length in pending.ranges:
                if self.in_grace():
                    # Acknowledged by this instance's holders, but an earlier
                    # instance's clients may still map it until the grace ends:
                    # both must hold (seed 4393 of the simulation's long run).
                    self.allocator.requarantine(offset, length, self.grace_until_wall)
                else:
                    released += self.allocator.release_quarantined(offset, length)
        if done:
            self.changed.notify_all()
        return released

    def wait(self, started: list[int]) -> bool:
        """Wait until clients with a live stream acknowledged ``started`` (at most RECALL_WAIT_NS).

        Clients without a stream are not waited for: they get the recall when
        they reattach, and quarantine keeps the blocks until they answer.
        """
        with self.changed:
            done = self.changed.wait_for(
                lambda: not any(self.table.waits_on_attached(r) for r in started),
                RECALL_WAIT_NS / 1e9,
            )
            return done

    def release_due(self) -> int:
        """Quarantine whose time has come (restart grace) goes free; returns bytes released.

        Entries awaiting acknowledgement carry UNTIL_ACKNOWLEDGED: never due.
        """
        return self.allocator.release_quarantine(self.clock())
