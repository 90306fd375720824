"""Layout leases and recalls: which client may still load and store which file's extents.

Modelled on pNFS layouts (LAYOUTGET / CB_LAYOUTRECALL / LAYOUTRETURN). A client
holds at most one lease per file; every GetLayout refreshes it, and the
client's session stream renews all of its leases at once (like an NFSv4
client lease). A client that cannot renew must stop using its mappings before
the lease ends (self-fencing, see ``daxfs.client.session``).

When extents of a file are freed (truncate, unlink, rename over it), every
client holding a lease on that file is sent a :class:`Recall` and the extents
wait in quarantine. They return to the free list as soon as every recalled
client has acknowledged (it fenced its mappings), or when the last such lease
expires, whichever comes first. So no client ever sees another file's bytes
through a stale mapping, and a dead client delays reuse by one lease at most.

Times are wall-clock nanoseconds because quarantine deadlines are stored in
SQLite and must survive a server restart. Callers hold the namespace lock.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from daxfs.shared.errors import StaleHandle
from daxfs.shared.extent import ClientId, InodeId, LeaseId

#: How long a layout stays valid without renewal. Short enough that a dead
#: guest's extents come back soon, long enough that renewals are rare.
DEFAULT_LEASE_NS = 30 * 1_000_000_000


@dataclass(slots=True)
class Lease:
    id: LeaseId
    client: ClientId
    ino: InodeId
    expires_ns: int
    """Wall-clock ns; after it the client must not touch the file's extents."""


@dataclass(frozen=True, slots=True)
class Recall:
    """Sent to a client: stop using file ``ino``'s extents in [offset, offset + length)."""

    id: int
    ino: InodeId
    offset: int
    """First file byte recalled."""
    length: int
    """Bytes recalled; the range covers every freed block."""
    reason: str


@dataclass(slots=True)
class _Pending:
    recall: Recall
    waiting: set[ClientId]
    ranges: list[tuple[int, int]] = field(default_factory=list)
    """(region offset, length) pieces in quarantine for this recall."""


class LeaseTable:
    def __init__(
        self, duration_ns: int = DEFAULT_LEASE_NS, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.duration_ns = duration_ns
        self._clock = clock
        self._ids = itertools.count(1)
        self._recall_ids = itertools.count(1)
        self._leases: dict[tuple[ClientId, InodeId], Lease] = {}
        self._by_id: dict[LeaseId, Lease] = {}
        self._pending: dict[int, _Pending] = {}
        #: Deadline of each client session (NFSv4-style client lease): a client
        #: that neither renews nor calls for a whole lease is presumed dead.
        self._clients: dict[ClientId, int] = {}

    def client_seen(self, client: ClientId) -> None:
        if client:
            self._clients[client] = self._clock() + self.duration_ns

    def forget_client(self, client: ClientId) -> None:
        self._clients.pop(client, None)

    def grace(self) -> None:
        """The server itself stalled: give every client a full lease to renew before expiry.

        Extending deadlines only delays reuse of quarantined extents, which is
        the safe direction; clients fence themselves on their own deadline.
        """
        expires = self._clock() + self.duration_ns
        for client in self._clients:
            self._clients[client] = max(self._clients[client], expires)
        for lease in self._leases.values():
            lease.expires_ns = max(lease.expires_ns, expires)

    def dead_clients(self) -> list[ClientId]:
        """Clients whose session lease ran out; the caller releases their state."""
        now = self._clock()
        dead = [c for c, deadline in self._clients.items() if deadline <= now]
        for c in dead:
            del self._clients[c]
        return dead

    def __len__(self) -> int:
        return len(self._leases)

    # -- grants ----------------------------------------------------------------

    def grant(self, client: ClientId, ino: InodeId) -> Lease:
        """The client's lease on ``ino``, created or refreshed."""
        expires = self._clock() + self.duration_ns
        lease = self._leases.get((client, ino))
        if lease is None:
            lease = Lease(LeaseId(next(self._ids)), client, ino, expires)
            self._leases[(client, ino)] = lease
            self._by_id[lease.id] = lease
        else:
            lease.expires_ns = expires
        return lease

    def renew(self, client: ClientId) -> int:
        """Extend every lease of ``client``; returns the new deadline."""
        expires = self._clock() + self.duration_ns
        self._clients[client] = expires
        for lease in self._leases.values():
            if lease.client == client:
                lease.expires_ns = expires
        return expires

    def give_back(self, lease_id: LeaseId, client: ClientId) -> list[_Pending]:
        """LAYOUTRETURN; returns recalls that this completed."""
        lease = self._by_id.get(lease_id)
        if lease is None or lease.client != client:
            raise StaleHandle(f"lease {lease_id} is not held by this client")
        self._drop(lease)
        return self._forget_waiter(client, lease.ino)

    def _drop(self, lease: Lease) -> None:
        del self._leases[(lease.client, lease.ino)]
        del self._by_id[lease.id]

    def drop_client(self, client: ClientId) -> list[_Pending]:
        """A client left or died: drop its leases; returns recalls that completed."""
        done: list[_Pending] = []
        for lease in [le for le in self._leases.values() if le.client == client]:
            self._drop(lease)
            done += self._forget_waiter(client, lease.ino)
        return done

    def expire(self) -> list[_Pending]:
        """Drop leases past their deadline; returns recalls that completed."""
        now = self._clock()
        done: list[_Pending] = []
        for lease in [le for le in self._leases.values() if le.expires_ns <= now]:
            self._drop(lease)
            done += self._forget_waiter(lease.client, lease.ino)
        return done

    def holders(self, ino: InodeId) -> dict[ClientId, int]:
        """Clients with a live lease on ``ino`` and their deadlines."""
        now = self._clock()
        return {
            le.client: le.expires_ns
            for le in self._leases.values()
            if le.ino == ino and le.expires_ns > now
        }

    # -- recalls ---------------------------------------------------------------

    def start_recall(
        self,
        ino: InodeId,
        offset: int,
        length: int,
        reason: str,
        holders: set[ClientId],
        ranges: list[tuple[int, int]],
    ) -> Recall:
        recall = Recall(next(self._recall_ids), ino, offset, length, reason)
        self._pending[recall.id] = _Pending(recall, set(holders), list(ranges))
        return recall

    def recall_done(self, client: ClientId, recall_id: int) -> list[_Pending]:
        """A client fenced what a recall asked; returns the recall if that completed it."""
        pending = self._pending.get(recall_id)
        if pending is None:
            return []  # completed already (expiry) or from before a restart
        pending.waiting.discard(client)
        if pending.waiting:
            return []
        del self._pending[recall_id]
        return [pending]

    def _forget_waiter(self, client: ClientId, ino: InodeId) -> list[_Pending]:
        done = []
        for rid, pending in list(self._pending.items()):
            if pending.recall.ino == ino and client in pending.waiting:
                pending.waiting.discard(client)
                if not pending.waiting:
                    del self._pending[rid]
                    done.append(pending)
        return done

    def is_pending(self, recall_id: int) -> bool:
        return recall_id in self._pending

    @property
    def pending_recalls(self) -> int:
        return len(self._pending)
