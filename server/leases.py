"""Layout leases: which client may still load and store which file's extents, and until when.

Modelled on pNFS layouts. A client that holds a lease may use the extents it
was given until ``expires_ns``; after that it must ask again. The server never
reuses an extent freed from a file while another client's lease on that file
is live: the extent waits in quarantine until the latest such deadline.

Times are wall-clock nanoseconds (``time.time_ns``) because quarantine
deadlines are stored in SQLite and must survive a server restart.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from daxfs.shared.errors import StaleHandle
from daxfs.shared.extent import ClientId, InodeId, LeaseId

#: How long a layout stays valid without renewal. Short enough that a dead
#: guest's extents come back soon, long enough that a busy guest renews rarely.
DEFAULT_LEASE_NS = 30 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Lease:
    id: LeaseId
    client: ClientId
    ino: InodeId
    offset: int
    """First byte of the file range, inclusive."""
    length: int
    """Bytes of the file range."""
    write: bool
    expires_ns: int


class LeaseTable:
    """In-memory lease records; callers hold the namespace lock."""

    def __init__(
        self, duration_ns: int = DEFAULT_LEASE_NS, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.duration_ns = duration_ns
        self._clock = clock
        self._ids = itertools.count(1)
        self._leases: dict[LeaseId, Lease] = {}

    def grant(self, client: ClientId, ino: InodeId, offset: int, length: int, write: bool) -> Lease:
        lease = Lease(
            LeaseId(next(self._ids)),
            client,
            ino,
            offset,
            length,
            write,
            self._clock() + self.duration_ns,
        )
        self._leases[lease.id] = lease
        return lease

    def give_back(self, lease_id: LeaseId, client: ClientId) -> None:
        lease = self._leases.get(lease_id)
        if lease is None or lease.client != client:
            raise StaleHandle(f"lease {lease_id} is not held by this client")
        del self._leases[lease_id]

    def drop_inode(self, ino: InodeId, client: ClientId) -> None:
        """Forget a client's leases on one file (it invalidated them itself)."""
        for lid in [
            lid for lid, le in self._leases.items() if le.ino == ino and le.client == client
        ]:
            del self._leases[lid]

    def drop_client(self, client: ClientId) -> None:
        for lid in [lid for lid, le in self._leases.items() if le.client == client]:
            del self._leases[lid]

    def expire(self) -> None:
        now = self._clock()
        for lid in [lid for lid, le in self._leases.items() if le.expires_ns <= now]:
            del self._leases[lid]

    def reach_deadline(self, ino: InodeId, exclude: ClientId | None) -> int | None:
        """Latest expiry of a live lease on ``ino`` held by another client, or None."""
        self.expire()
        deadlines = [
            le.expires_ns for le in self._leases.values() if le.ino == ino and le.client != exclude
        ]
        return max(deadlines, default=None)

    def __len__(self) -> int:
        return len(self._leases)
