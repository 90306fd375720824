"""The client's side of the layout protocol, without a transport: deadlines, recalls, grants.

What a client must remember to keep the layout safety invariant (server/leases.py),
as one pure class with an injected clock and no threads, gRPC or locks: the
session stream (client/session.py) and the library (client/library.py) drive
it, and so does the deterministic simulation (tests/test_protocol_sim.py).

- **The deadline** is this client's own monotonic clock: a ``Renewed`` answer
  extends the lease by ``lease_ns`` from when the matching ``Renew`` (same
  ``seq``) was *sent*; no clock is ever compared with the server's.
- **The fence point** is a sixth of a lease before the deadline: past it
  without a renewal the client fences every mapping and refuses copies until
  a renewal succeeds again.
- **Recalls seen**: the highest recall sequence number per file in this
  session. A layout granted at a lower number was overtaken by a recall the
  client already obeyed, and must not be used.
- **Session loss** (ESTALE from the server): fenced at once; the new session
  starts with a fresh deadline counted from its ``Hello`` and no recalls seen.

Callers serialise access: the session stream guards the deadline and the
renewals with its lock, the library guards the recall numbers with its fence
lock (the two halves share no state).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from daxfs.shared.extent import InodeId


class LeaseState:
    """One session's lease deadline and recall sequence numbers, on the client's clock."""

    def __init__(self, lease_ns: int, clock: Callable[[], int], *, opened_at: int | None = None):
        self.lease_ns = lease_ns
        self._clock = clock
        #: Our clock when the lease ends unless renewed. Hello counts as a renewal
        #: sent when the session was opened.
        self.deadline_ns = (clock() if opened_at is None else opened_at) + lease_ns
        #: Set at the fence point, cleared by a renewal: copies refuse, views read zeros.
        self.fenced = False
        #: Called when ``fenced`` is set: a copy of the lease's state taken
        #: elsewhere (the mount's compiled READ path) must be dropped.
        self.on_fence: Callable[[], None] | None = None
        self._seq = itertools.count(1)
        self._sent: dict[int, int] = {}
        self._recall_seqs: dict[InodeId, int] = {}

    def now(self) -> int:
        return self._clock()

    # -- the deadline ----------------------------------------------------------

    def renew_sent(self) -> int:
        """A Renew goes out now: returns its ``seq``."""
        seq = next(self._seq)
        self._sent[seq] = self._clock()
        return seq

    def renewed(self, seq: int, lease_ns: int = 0) -> bool:
        """The server answered Renew ``seq``: the deadline moves to its send time + lease.

        Returns False for an answer that is not ours (an earlier stream's, or
        answered already); answers to older renewals are forgotten.
        """
        sent = self._sent.pop(seq, None)
        for old in [s for s in self._sent if s < seq]:
            del self._sent[old]  # answers that will never come (an earlier stream)
        if sent is None:
            return False
        self.deadline_ns = max(self.deadline_ns, sent + (lease_ns or self.lease_ns))
        self.fenced = False
        return True

    def lease_valid(self) -> bool:
        """True while the lease has not run out on our clock and we have not fenced."""
        return not self.fenced and self._clock() < self.deadline_ns

    @property
    def fence_at(self) -> int:
        """Our clock when we fence ourselves unless renewed first."""
        return self.deadline_ns - self.lease_ns // 6

    def due_to_fence(self) -> bool:
        """True once, when the fence point passes unrenewed: the caller fences everything."""
        if not self.fenced and self._clock() >= self.fence_at:
            self.fenced = True
            if self.on_fence is not None:
                self.on_fence()
            return True
        return False

    # -- recalls and grants ----------------------------------------------------

    def recall_seen(self, ino: InodeId, seq: int) -> None:
        """A recall of ``ino`` with sequence number ``seq`` arrived (re-sent ones included)."""
        self._recall_seqs[ino] = max(self._recall_seqs.get(ino, 0), seq)

    def grant_usable(self, ino: InodeId, recall_seq: int) -> bool:
        """May a layout of ``ino`` granted at ``recall_seq`` be cached and used?"""
        return recall_seq >= self._recall_seqs.get(ino, 0)

    # -- session loss ----------------------------------------------------------

    def forget_recalls(self) -> None:
        """Sequence numbers are per session: a new session starts from none seen."""
        self._recall_seqs.clear()

    def lost(self) -> None:
        """The server ended our session: fenced until a new one starts; renewals are void."""
        self.fenced = True
        if self.on_fence is not None:
            self.on_fence()
        self._sent.clear()

    def new_session(self, hello_sent: int) -> None:
        """A new session was opened by a Hello sent at ``hello_sent`` (our clock).

        The recall numbers are the other half's: ``forget_recalls`` (under its own lock).
        """
        self._sent.clear()
        self.deadline_ns = hello_sent + self.lease_ns
        self.fenced = False
