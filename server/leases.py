"""Sessions, layout leases and recalls: which client may still load and store which extents.

The invariant this module exists for (README, "The layout safety invariant"):

    A byte of a block that now belongs to file Y is never read or written
    through a layout, view, handle or copy that was granted for another file.

Shared memory cannot be fenced from the storage side (there is no SCSI
PREEMPT AND ABORT for a load instruction), so the server keeps the invariant
by never *reusing* a block while a client may still use it, and prefers losing
space to leaking bytes. The protocol, after pNFS and NFSv4.1 (RFC 8881 §12):

- **Sessions are capabilities.** ``open_session`` draws a random 63-bit id and
  binds it to the credential that opened it; every later call must name a
  live session of the same credential. An id the server does not know (a
  guess, a session from before a restart, an evicted or departed one) gets
  ESTALE, and the client must fence everything before it asks for a new
  session. Id 0 names no session and creates nothing.
- **A lease** (client, file) lives from the first layout until it is returned
  (ReturnLayout, last close) or its client is dropped. Each grant gives it a
  new, larger id (a lease id names one grant): a ReturnLayout naming an older
  id, one that crossed a newer grant, is refused with ESTALE and ends nothing,
  so the lease that newer grant renewed still gets its recalls. Its validity in time
  is the client's business: the client counts its own deadline on its own
  monotonic clock from when it *sent* the renewal, and fences itself before
  it ends (see ``daxfs.client.session``). The server never compares clocks.
- **Recalls are durable until acknowledged.** Freeing blocks under other
  leases parks them in quarantine and queues a :class:`Recall` per holder,
  stamped with that client's recall sequence number. Unacknowledged recalls
  are re-sent every time the client (re)attaches its session stream, before
  anything else on it. Layout grants carry the client's sequence number at
  grant time, so a client can discard a grant that a recall overtook.
- **Quarantine ends only on proof.** Blocks leave quarantine when every holder
  has acknowledged, or has been *dropped*: a clean Goodbye, a new session
  that declares the old one fenced (``Hello.fenced_session``), an operator's
  ``daxfs evict``, or a session whose stream is gone *and* whose lease has
  run out (a process that exited closes its stream; a live client that lost
  its stream fences itself at its deadline). A frozen client keeps its stream
  open and so keeps its blocks out of reuse until it thaws and acknowledges,
  or is evicted.
- **Restarts.** A new server instance knows none of the earlier sessions, so
  their ids get ESTALE at once. Until one lease has passed since the start
  (the earlier instance's clients have fenced themselves by then, on their own
  clocks), every freed block waits in quarantine: the restart grace period.

Residual risk, stated with its bound: a client whose session stream is down,
that is frozen in the middle of a copy for longer than its lease, and then
resumes, finishes that one copy. A read is validated after it finishes and
fails ESTALE (see ``daxfs.client.daxfile``); a write can land in a block that
was reused meanwhile. The client library splits writes into pieces of at most
``daxfs.client.daxfile.COPY_PIECE`` (4 MiB) with a deadline check before
each, so at most one piece per writing thread is exposed.

Callers hold the namespace lock. Times are this server's monotonic clock, in ns.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from daxfs.shared.errors import (
    InvalidArgument,
    NotPermitted,
    StaleHandle,
    TooManySessions,
    UnknownSession,
)
from daxfs.shared.extent import ClientId, InodeId, LeaseId, PhysRange

#: How long a layout stays valid without renewal. Short enough that a dead
#: guest's extents come back soon, long enough that renewals are rare.
DEFAULT_LEASE_NS = 30 * 1_000_000_000
#: Sessions one server accepts at once; the next Hello gets RESOURCE_EXHAUSTED.
DEFAULT_MAX_SESSIONS = 1024


@dataclass(slots=True)
class Lease:
    id: LeaseId
    client: ClientId
    ino: InodeId
    granted_seq: int
    """The client's recall sequence number when the lease was last granted."""


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


@dataclass(frozen=True, slots=True)
class RecallNotice:
    """One recall as one client sees it: with that client's sequence number."""

    recall: Recall
    seq: int
    """The client's recall counter after this recall (1, 2, ...)."""


@dataclass(slots=True)
class Session:
    """A client's session: its capability, its clock on our side, its undelivered recalls."""

    id: ClientId
    credential: str
    """Who opened it (the auth layer's name for the connection's credential)."""
    name: str
    deadline_ns: int
    """Our monotonic clock: when its lease ends unless renewed."""
    attached: int = 0
    """Open session streams (0 or 1; a reattach replaces the old stream)."""
    recall_seq: int = 0
    """Recalls issued to this client so far."""
    outstanding: dict[int, RecallNotice] = field(default_factory=dict)
    """Recalls sent but not acknowledged, by recall id, in the order issued."""


@dataclass(slots=True)
class Pending:
    recall: Recall
    waiting: set[ClientId]
    ranges: list[PhysRange] = field(default_factory=list)
    """Pieces of the region in quarantine for this recall."""


class LeaseTable:
    def __init__(
        self,
        duration_ns: int = DEFAULT_LEASE_NS,
        clock: Callable[[], int] = time.monotonic_ns,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        new_id: Callable[[], int] = lambda: secrets.randbits(63),
    ) -> None:
        self.duration_ns = duration_ns
        self.max_sessions = max_sessions
        self._clock = clock
        self._new_id = new_id
        self._ids = itertools.count(1)
        self._recall_ids = itertools.count(1)
        self._leases: dict[tuple[ClientId, InodeId], Lease] = {}
        self._by_id: dict[LeaseId, Lease] = {}
        self._pending: dict[int, Pending] = {}
        self._sessions: dict[ClientId, Session] = {}

    def now(self) -> int:
        """This table's clock (monotonic ns unless a test or simulation injects one)."""
        return self._clock()

    # -- sessions --------------------------------------------------------------

    def open_session(self, credential: str, name: str = "") -> Session:
        """A new session with an unguessable id, bound to ``credential``."""
        if len(self._sessions) >= self.max_sessions:
            raise TooManySessions(
                f"this server holds its limit of {self.max_sessions} sessions; "
                "close idle clients or raise daxfs server --max-sessions"
            )
        while True:
            client = ClientId(self._new_id())
            if client and client not in self._sessions:
                break
        session = Session(client, credential, name, self._clock() + self.duration_ns)
        self._sessions[client] = session
        return session

    def session(self, client: ClientId, credential: str | None = None) -> Session:
        """The live session ``client`` names; ESTALE for an unknown one.

        ``credential`` None skips the binding check (calls made by the core itself).
        """
        if not client:
            raise InvalidArgument("this call needs a session: say Hello and pass its client_id")
        session = self._sessions.get(client)
        if session is None:
            raise UnknownSession(
                f"session {client} is not known to this server (it restarted, or the "
                "session ended or was evicted): fence its layouts and say Hello again"
            )
        if credential is not None and credential != session.credential:
            raise NotPermitted(f"session {client} belongs to another credential")
        return session

    def session_or_none(self, client: ClientId) -> Session | None:
        return self._sessions.get(client)

    def known(self, client: ClientId) -> bool:
        return client in self._sessions

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def renew(self, client: ClientId) -> Session:
        """Extend the session's lease (and so every layout it holds) by one duration."""
        session = self.session(client)
        session.deadline_ns = self._clock() + self.duration_ns
        return session

    def attach(self, client: ClientId) -> list[RecallNotice]:
        """A session stream opened; returns the recalls to send on it first, in order."""
        session = self.session(client)
        session.attached = 1
        return list(session.outstanding.values())

    def detach(self, client: ClientId) -> None:
        session = self._sessions.get(client)
        if session is not None:
            session.attached = 0

    def attached(self, client: ClientId) -> bool:
        session = self._sessions.get(client)
        return session is not None and session.attached > 0

    def grace(self) -> None:
        """The server itself stalled: give every session a full lease before it can be dropped.

        Extending deadlines only delays reuse of quarantined extents, which is
        the safe direction; clients fence themselves on their own deadline.
        """
        expires = self._clock() + self.duration_ns
        for session in self._sessions.values():
            session.deadline_ns = max(session.deadline_ns, expires)

    def gone_sessions(self) -> list[ClientId]:
        """Sessions proven gone by time: stream closed and lease run out. Not yet dropped."""
        now = self._clock()
        return [s.id for s in self._sessions.values() if not s.attached and s.deadline_ns <= now]

    def drop_session(self, client: ClientId) -> list[Pending]:
        """A session ended (goodbye, eviction, proven gone): returns recalls that completed.

        Its leases and unacknowledged recalls go with it. The caller closes its files.
        """
        done: list[Pending] = []
        for lease in [le for le in self._leases.values() if le.client == client]:
            self._drop(lease)
        for rid, pending in list(self._pending.items()):
            if client in pending.waiting:
                pending.waiting.discard(client)
                if not pending.waiting:
                    del self._pending[rid]
                    done.append(pending)
        self._sessions.pop(client, None)
        return done

    def __len__(self) -> int:
        return len(self._leases)

    # -- grants ----------------------------------------------------------------

    def grant(self, client: ClientId, ino: InodeId) -> Lease:
        """The client's lease on ``ino``, created or refreshed: a new id, and its recall seq."""
        session = self.session(client)
        lease = self._leases.get((client, ino))
        if lease is None:
            lease = Lease(LeaseId(next(self._ids)), client, ino, session.recall_seq)
            self._leases[(client, ino)] = lease
            self._by_id[lease.id] = lease
        else:
            # A new id per grant: a ReturnLayout that crossed this grant names
            # the older one and is refused, instead of ending the lease the
            # client now relies on (seed 59638 of the simulation's long run).
            del self._by_id[lease.id]
            lease.id = LeaseId(next(self._ids))
            self._by_id[lease.id] = lease
            lease.granted_seq = session.recall_seq
        return lease

    def give_back(self, lease_id: LeaseId, client: ClientId) -> list[Pending]:
        """LAYOUTRETURN; returns recalls that this completed.

        Returning a lease does not acknowledge a recall the client has not
        answered: the client may still be copying; only RecallDone says it stopped.
        """
        lease = self._by_id.get(lease_id)
        if lease is None or lease.client != client:
            raise StaleHandle(f"lease {lease_id} is not held by this client")
        self._drop(lease)
        return []

    def _drop(self, lease: Lease) -> None:
        del self._leases[(lease.client, lease.ino)]
        del self._by_id[lease.id]

    def holders(self, ino: InodeId) -> set[ClientId]:
        """Clients holding a lease on ``ino``, expired or not: only they may map its blocks."""
        return {le.client for le in self._leases.values() if le.ino == ino}

    # -- recalls ---------------------------------------------------------------

    def start_recall(
        self,
        ino: InodeId,
        offset: int,
        length: int,
        reason: str,
        holders: set[ClientId],
        ranges: list[PhysRange],
    ) -> tuple[Recall, list[tuple[ClientId, RecallNotice]]]:
        """Queue a recall for every holder; returns it and the notices to deliver now."""
        recall = Recall(next(self._recall_ids), ino, offset, length, reason)
        notices: list[tuple[ClientId, RecallNotice]] = []
        waiting: set[ClientId] = set()
        for client in sorted(holders):
            session = self._sessions.get(client)
            if session is None:
                continue
            session.recall_seq += 1
            notice = RecallNotice(recall, session.recall_seq)
            session.outstanding[recall.id] = notice
            notices.append((client, notice))
            waiting.add(client)
        if waiting:  # else nobody can map the range: the caller frees it at once
            self._pending[recall.id] = Pending(recall, waiting, list(ranges))
        return recall, notices

    def recall_done(self, client: ClientId, recall_id: int) -> list[Pending]:
        """A client fenced what a recall asked; returns the recall if that completed it."""
        session = self._sessions.get(client)
        if session is None or session.outstanding.pop(recall_id, None) is None:
            return []  # not ours, acknowledged already, or from an earlier instance
        pending = self._pending.get(recall_id)
        if pending is None:
            return []
        pending.waiting.discard(client)
        if pending.waiting:
            return []
        del self._pending[recall_id]
        return [pending]

    def is_pending(self, recall_id: int) -> bool:
        return recall_id in self._pending

    def waits_on_attached(self, recall_id: int) -> bool:
        """True while a client with a live stream has yet to acknowledge ``recall_id``.

        Waiting for a client without a stream is pointless: it gets the recall
        when it reattaches, and quarantine keeps the blocks until then.
        """
        pending = self._pending.get(recall_id)
        return pending is not None and any(self.attached(c) for c in pending.waiting)

    @property
    def pending_recalls(self) -> int:
        return len(self._pending)
