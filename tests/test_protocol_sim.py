"""A deterministic simulation of the layout protocol hunts for breaches of its invariant (issue 11).

    A byte of a block that now belongs to file Y is never read or written
    through a layout, view, handle or copy that was granted for another file.

As FoundationDB and TigerBeetle test theirs: the REAL server core (Namespace
and LeaseTable on a small real volume in /dev/shm) and the REAL client core
(daxfs.client.lease_state.LeaseState) run over a simulated clock and network
that one seeded random generator drives:

- time: the server's monotonic and wall clocks, and one monotonic clock per
  client that drifts a little (±100 ppm) from an arbitrary origin;
- unary calls whose requests and replies arrive after random delays, in any
  order, sometimes not at all; requests in flight reach a restarted server;
- one ordered session stream per client, which can break (what is in flight
  on it is lost; the server notices a little later) and be reattached; recalls
  the server pushes through ``Namespace.notify`` travel on it;
- faults: server crash and restart (close and reopen the volume: a new
  Namespace that runs the restart grace), clean server stop, clients frozen
  and thawed (their timers stop; their stream stays up), clients killed
  (stream closed) or vanished (stream left up; the operator evicts them),
  sweeps, evictions;
- workload: create/open, read and write layouts, copies in pieces, numpy
  views, truncate, unlink, rename over a file and RPC writes by any client, so
  blocks are freed and reused all the time.

Simulated clients model what client/library.py does around the core: a cache
of layout tiles per inode, views (registered mappings that fencing turns into
zero pages, block by block), copies that hold the library's shared I/O lock
(a recall or the deadline fence, which take it exclusively, wait for them),
writes that check the lease before every piece and reads validated at their
end, RecallDone after fencing, self-fencing at the fence point, ESTALE ->
fence everything, forget everything, new session.

**What is not modelled** (the protocol's stated residual risk, server/leases.py):
a piece of a copy is atomic with respect to freezing, and a client that thaws
runs its deadline check before anything else. A client frozen in the *middle*
of a piece, with its stream down, for longer than its lease, can finish that
one piece into a reused block; the simulation does not look for that.

After every step, every block a client touches through a grant for file X
(a copy piece, a view access) must belong to X, or be in quarantine; a block
of another file, or a free one (it may be reused at any moment), is a breach
(a read only counts if its copy then validates). After every schedule, fsck
of the volume must be clean.

``DAXFS_SIM_SCHEDULES`` sets the number of schedules (``make test`` runs 1,000;
a million is a long run: ``DAXFS_SIM_SCHEDULES=1000000 pytest --timeout=0
tests/test_protocol_sim.py``). ``DAXFS_SIM_SEED=<n>`` replays one seed and
prints its trace. A failure prints the seed and the step trace.

Speed: schedules run without a trace (a breach is replayed with it). The
metadata is the real SQLite store on a database held in memory
(``MemoryMetadata``: loaded from an image of the template once per process,
saved at each server stop or crash, checked by fsck while the server holds it);
the region is mapped once per process (nothing here reads its bytes); the
ownership map is rebuilt only when the metadata changed; ``step`` lists
tuples, not closures; the garbage collector waits for the end of a schedule.
Most of the time left is the real server core's own.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import shutil
import sqlite3
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from daxfs.client.lease_state import LeaseState
from daxfs.server.cache_grants import Invalidation
from daxfs.server.fsck import check_open
from daxfs.server.leases import LeaseTable, RecallNotice
from daxfs.server.metadata import Metadata
from daxfs.server.namespace import Caller, Namespace
from daxfs.server.volume import check_pairing, format_volume
from daxfs.shared import errors
from daxfs.shared.extent import ClientId, InodeId
from daxfs.shared.format import KIB, MIB
from daxfs.shared.region import Region

BS = 4 * KIB
#: Small, so that freed blocks are reused soon.
REGION_SIZE = 1 * MIB
SECOND = 1_000_000_000
LEASE_NS = 30 * SECOND
PATHS = ("/a", "/b", "/c")
CLIENTS = 3
STEPS = 200
#: The server sweeps this often (daemon: every second or so).
SWEEP_NS = 4 * SECOND
#: How far one step moves time: mostly little, sometimes past a renewal or a lease.
ADVANCES = (1_000_000, 20_000_000, 200_000_000, 200_000_000, 1 * SECOND, 3 * SECOND, 12 * SECOND)
#: Largest file offset the workload touches (blocks).
FILE_BLOCKS = 12

SCHEDULES = int(os.environ.get("DAXFS_SIM_SCHEDULES", "1000"))
REPLAY = os.environ.get("DAXFS_SIM_SEED")


logging.getLogger("daxfs").setLevel(logging.ERROR)


class Breach(AssertionError):
    """The invariant failed (or fsck did): the message says where."""


# -- clocks --------------------------------------------------------------------


class SimClock:
    """Simulated time ``t`` (ns since the schedule began) and the clocks derived from it."""

    def __init__(self) -> None:
        self.t = 0

    def mono(self) -> int:
        return 5 * 10**12 + self.t

    def wall(self) -> int:
        return 1_700_000_000 * SECOND + self.t


@dataclass
class ClientClock:
    sim: SimClock
    origin: int
    ppm: int

    def __call__(self) -> int:
        t = self.sim.t
        return self.origin + t + t * self.ppm // 1_000_000

    def when(self, reading: int) -> int:
        """The simulated time at which this clock first shows ``reading``."""
        t = max(0, (reading - self.origin) * 1_000_000 // (1_000_000 + self.ppm))
        while self.origin + t + t * self.ppm // 1_000_000 < reading:
            t += 1
        return t


# -- the server ------------------------------------------------------------------


class SimNamespace(Namespace):
    """The real core; a call that freed blocks does not block the simulation.

    ``_wait_recalls`` only makes truncate and unlink answer after live streams
    acknowledged (liveness); quarantine, not the wait, keeps the blocks from
    reuse, so skipping the wait hides no breach.
    """

    def _wait_recalls(self, started: list[int]) -> bool:
        return True


@dataclass
class Stream:
    """One session stream: two ordered queues; ``alive`` False once broken."""

    client: int
    sid: int
    to_server: deque[tuple[Any, ...]] = field(default_factory=deque)
    to_client: deque[tuple[Any, ...]] = field(default_factory=deque)
    alive: bool = True
    attached: bool = False
    """The server has taken its first message (attach ran)."""
    session: ClientId = ClientId(0)  # noqa: RUF009


@dataclass
class Grant:
    """Which file a cached tile was granted for."""

    ino: InodeId
    gen: int


@dataclass
class FileRec:
    fh: int
    ino: InodeId
    gen: int
    writable: bool
    epoch: int


@dataclass
class Copy:
    write: bool
    fh: int
    blocks: list[tuple[int, Grant]]
    done: int = 0
    foreign: list[str] = field(default_factory=list)


@dataclass
class View:
    ino: InodeId
    blocks: dict[int, tuple[int, Grant]]
    """file block -> (region offset, grant); fenced blocks are removed."""


class SimClient:
    def __init__(self, world: World, idx: int, make_core: Callable[..., LeaseState]) -> None:
        self.w = world
        self.idx = idx
        self.clock = ClientClock(
            world.clock, world.rng.randrange(10**15), world.rng.randint(-100, 100)
        )
        self.make_core = make_core
        self.frozen = False
        self.dead = False
        self.session = ClientId(0)
        self.core: LeaseState = make_core(LEASE_NS, self.clock)
        self.epoch = 0
        self.stream: Stream | None = None
        self.files: dict[int, FileRec] = {}
        self.layouts: dict[InodeId, dict[int, tuple[int, Grant]]] = {}
        self.lease_ids: dict[InodeId, int] = {}
        self.views: list[View] = []
        #: Calls in flight per handle: the user does not close a file under them.
        self.busy: dict[int, int] = {}
        self.copies: list[Copy] = []
        self.next_renew = 0
        self.deadline_fence_pending = False
        self.hello()

    @property
    def caller(self) -> Caller:
        return Caller(client=self.session)

    def log(self, msg: str) -> None:
        if self.w.tracing:
            self.w.trace.append(f"[{self.w.clock.t / SECOND:9.3f}s] c{self.idx}: {msg}")

    def hello(self) -> None:
        sent = self.clock()
        s = self.w.server.ns.hello(credential="sim", name=f"c{self.idx}")
        self.session = s.id
        self.core.new_session(sent)
        self.next_renew = sent + LEASE_NS // 3
        self.log(f"hello -> session {s.id}")

    # -- fencing -------------------------------------------------------------

    def fence_all(self) -> None:
        self.layouts.clear()
        for v in self.views:
            v.blocks.clear()

    def session_lost(self) -> None:
        """ESTALE: fence everything, forget everything, open a new session."""
        self.log("ESTALE: fence all, new session")
        self.core.lost()
        self.fence_all()
        self.core.forget_recalls()
        self.views.clear()
        self.lease_ids.clear()
        self.files.clear()
        self.copies.clear()  # each fails with ESTALE (reads are discarded)
        self.epoch += 1
        if self.stream is not None:
            self.w.break_stream(self, quiet=True)
        self.hello()

    def timers(self) -> None:
        """The renew thread: renew when due, fence at the fence point."""
        if self.frozen or self.dead:
            return
        now = self.clock()
        if now >= self.next_renew:
            self.next_renew = now + LEASE_NS // 3
            if self.stream is not None and self.stream.alive:
                seq = self.core.renew_sent()
                self.stream.to_server.append(("renew", seq))
        if self.core.due_to_fence():
            self.log("fence point passed unrenewed: fencing")
            # Views at once (SessionState.deadline_passed), layouts after copies.
            for v in self.views:
                v.blocks.clear()
            self.deadline_fence_pending = True
        if self.deadline_fence_pending and not self.copies:
            self.deadline_fence_pending = False
            self.fence_all()

    def next_timer(self) -> int:
        """Simulated time of this client's next timer event."""
        at = self.next_renew
        if not self.core.fenced:
            at = min(at, self.core.fence_at)
        return self.clock.when(at)

    # -- stream events -------------------------------------------------------

    def on_event(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "renewed":
            self.core.renewed(ev[1], ev[2])
        elif kind == "estale":
            self.session_lost()
        elif kind == "recall":
            notice: RecallNotice = ev[1]
            r = notice.recall
            self.core.recall_seen(r.ino, notice.seq)
            self.layouts.pop(r.ino, None)
            for v in self.views if self.w.view_fence_on_recall else ():
                if v.ino == r.ino:
                    for fb in [
                        fb
                        for fb in v.blocks
                        if fb * BS < r.offset + r.length and (fb + 1) * BS > r.offset
                    ]:
                        del v.blocks[fb]
            self.log(
                f"recall {r.id} ino={r.ino} [{r.offset},+{r.length}) seq={notice.seq}: fenced, done"
            )
            assert self.stream is not None
            self.stream.to_server.append(("recall_done", r.id))

    def deliverable(self, ev: tuple[Any, ...]) -> bool:
        """A recall needs the I/O lock exclusively: it waits for copies in flight."""
        return not (ev[0] == "recall" and self.copies)


@dataclass
class MetaFile:
    """The metadata file between server instances: the image of its SQLite database."""

    image: bytes


class MemoryMetadata(Metadata):
    """The real metadata store (SQLite, the same schema and statements) on a database
    held in memory, loaded from and saved to a :class:`MetaFile` when it opens and
    closes, as a process's connection to a file would. The simulation's crashes are
    process crashes between two calls, so what a crash keeps is what was committed.
    """

    def __init__(self, path: str, file: MetaFile) -> None:
        super().__init__(":memory:", scratch=True)
        self.path = path
        self.file = file
        self._conn.deserialize(file.image)

    def close(self) -> None:
        assert self.depth == 0, "a crash between calls leaves no transaction open"
        self.file.image = self._conn.serialize()
        super().close()


class SimServer:
    def __init__(
        self, world: World, leases: Callable[..., LeaseTable], ns: type[Namespace]
    ) -> None:
        self.w = world
        self.leases = leases
        self.ns_type = ns
        self.hub: dict[ClientId, Stream] = {}
        self.ns = self.open()

    def open(self) -> Namespace:
        w = self.w
        meta = MemoryMetadata(w.meta_path, w.meta_file)
        meta.check_schema()
        check_pairing(w.region_path, meta)
        table = self.leases(LEASE_NS, clock=w.clock.mono, new_id=lambda: w.rng.getrandbits(63))
        ns = self.ns_type(region(w.region_path), meta, leases=table, clock=w.clock.wall)
        ns.reclaim_orphans()
        ns.connect(self)
        self.hub = {}
        return ns

    def deliver(self, client: ClientId, notice: RecallNotice) -> None:
        s = self.hub.get(client)
        if s is not None and s.alive:
            s.to_client.append(("recall", notice))

    def deliver_invalidation(self, client: ClientId, invalidation: Invalidation) -> None:
        pass  # simulated clients cache no metadata

    def restart(self, clean: bool) -> None:
        if clean:
            self.ns.shutdown()  # close_volume, but the region stays mapped (see region())
        self.ns.meta.close()
        self.ns = self.open()

    def close(self) -> None:
        self.ns.meta.close()


#: Region file -> its mapping, one per process: a region is memory that outlives a
#: server process, and the simulation never reads its bytes (the metadata says who
#: owns a block), so server instances and schedules share one mapping of it.
_regions: dict[str, Region] = {}


def region(path: str) -> Region:
    mapped = _regions.get(path)
    if mapped is None:
        mapped = _regions[path] = Region(path)
    return mapped


# -- the world -------------------------------------------------------------------


class World:
    def __init__(
        self,
        seed: int,
        root: str,
        *,
        leases: Callable[..., LeaseTable] = LeaseTable,
        ns: type[Namespace] = SimNamespace,
        core: Callable[..., LeaseState] = LeaseState,
        view_fence_on_recall: bool = True,
        check_session_epoch: bool = True,
        tracing: bool = False,
        meta: bytes | None = None,
    ) -> None:
        """``meta``: the image of the metadata to start from (else read from ``root``)."""
        self.seed = seed
        self.tracing = tracing
        """Keep the trace; off in bulk runs (a breach is replayed with it on)."""
        self.rng = random.Random(seed)
        self.trace: list[str] = []
        self.clock = SimClock()
        self.region_path = os.path.join(root, "region")
        self.meta_path = self.region_path + ".meta"
        self.meta_file = MetaFile(meta_image(self.meta_path) if meta is None else meta)
        self.view_fence_on_recall = view_fence_on_recall
        self.check_session_epoch = check_session_epoch
        self.server = SimServer(self, leases, ns)
        self.unary: list[tuple[str, int, Callable[[], None]]] = []
        """Calls in flight: (kind, client, action) — requests to the server, replies to clients."""
        self.unary_requests = 0
        self.unary_replies = [0] * CLIENTS
        """How many of ``unary`` are requests, and replies to each client."""
        self.clients = [SimClient(self, i, core) for i in range(CLIENTS)]
        self.stream_ids = 0
        self.detaching: list[Stream] = []
        self._owners: dict[int, str] = {}
        self._owners_at: tuple[Metadata | None, int] = (None, 0)
        """The metadata and its ``changes`` count ``_owners`` was computed from."""
        self.next_sweep = SWEEP_NS

    def log(self, msg: str) -> None:
        if self.tracing:
            self.trace.append(f"[{self.clock.t / SECOND:9.3f}s] {msg}")

    # -- ownership -------------------------------------------------------------

    def owners(self) -> dict[int, str]:
        """Region block -> 'ino:gen' or 'quarantine'; blocks not listed are free.

        Recomputed only when the metadata changed since (or the server restarted).
        """
        meta = self.server.ns.meta
        at = (meta, meta.changes)
        if self._owners_at[0] is not meta or self._owners_at[1] != at[1]:
            self._owners_at = at
            owners: dict[int, str] = {}
            gens: dict[int, int] = {}
            for ino, ext in meta.all_extents():
                if ino not in gens:
                    row = meta.get_inode(ino)
                    gens[ino] = row.generation if row is not None else -1
                assert ext.region_offset is not None
                for b in range(ext.region_offset, ext.region_offset + ext.length, BS):
                    owners[b] = f"{ino}:{gens[ino]}"
            for off, length, _until in meta.quarantined():
                for b in range(off, off + length, BS):
                    owners[b] = "quarantine"
            self._owners = owners
        return self._owners

    def foreign(self, block: int, grant: Grant) -> str | None:
        owner = self.owners().get(block, "free")
        if owner in ("quarantine", f"{grant.ino}:{grant.gen}"):
            return None
        return f"block {block} granted for {grant.ino}:{grant.gen} is now {owner}"

    def breach(self, msg: str) -> None:
        self.log("BREACH " + msg)
        raise Breach(msg)

    # -- plumbing ------------------------------------------------------------

    def call(
        self,
        c: SimClient,
        what: str,
        fn: Callable[[], Any],
        reply: Callable[[Any], None],
        fh: int = 0,
    ) -> None:
        """A unary call: the request runs at the server later, the reply comes later still."""
        epoch, session = c.epoch, c.session
        c.busy[fh] = c.busy.get(fh, 0) + 1

        def at_server() -> None:
            ns = self.server.ns
            try:
                ns.check_session(Caller(client=session))
                result: Any = fn()
            except errors.DaxfsError as exc:
                result = exc
            if self.rng.random() < 0.03:
                c.busy[fh] -= 1
                return  # the reply is lost: the client sees UNAVAILABLE and moves on
            self.unary.append(("reply", c.idx, lambda: at_client(result)))
            self.unary_replies[c.idx] += 1

        def at_client(result: Any) -> None:
            c.busy[fh] -= 1
            if c.dead:
                return
            if isinstance(result, errors.UnknownSession):
                if c.epoch == epoch:
                    c.session_lost()
                return
            if isinstance(result, errors.DaxfsError):
                c.log(f"{what} -> {type(result).__name__}")
                return
            reply(result)

        c.log(f"call {what}")
        self.unary.append(("request", c.idx, at_server))
        self.unary_requests += 1

    def break_stream(self, c: SimClient, *, quiet: bool = False) -> None:
        s = c.stream
        if s is None:
            return
        s.alive = False
        s.to_client.clear()
        s.to_server.clear()
        c.stream = None
        self.detaching.append(s)  # the server notices later
        if not quiet:
            c.log(f"stream {s.sid} broken")

    def attach(self, c: SimClient) -> None:
        self.stream_ids += 1
        s = Stream(c.idx, self.stream_ids, session=c.session)
        seq = c.core.renew_sent()
        s.to_server.append(("renew", seq))
        c.stream = s
        c.log(f"stream {s.sid} opened")

    def server_takes(self, s: Stream) -> None:
        """The server reads one message from stream ``s``."""
        ns = self.server.ns
        msg = s.to_server.popleft()
        try:
            if not s.attached:
                s.attached = True
                self.server.hub[s.session] = s
                for notice in ns.attach(s.session):
                    s.to_client.append(("recall", notice))
            if msg[0] == "renew":
                ns.renew(s.session)
                s.to_client.append(("renewed", msg[1], LEASE_NS))
            elif msg[0] == "recall_done":
                ns.recall_done(s.session, msg[1])
        except errors.StaleHandle:
            s.to_client.append(("estale",))
            s.to_server.clear()

    def server_notices_end(self, s: Stream) -> None:
        if self.server.hub.get(s.session) is s:
            del self.server.hub[s.session]
            self.server.ns.detach(s.session)

    # -- the schedule ----------------------------------------------------------

    def live(self) -> list[SimClient]:
        return [c for c in self.clients if not c.dead and not c.frozen]

    def advance(self, dt: int, *, stall: bool = False) -> None:
        """Move time by ``dt``, firing every client's timers and the server's sweeps when due.

        ``stall``: the server sleeps through it (no sweeps; its next sweep sees the stall).
        """
        end = self.clock.t + dt
        while True:
            due = [(c.next_timer(), c.idx) for c in self.live()]
            if not stall:
                due.append((self.next_sweep, -1))
            at = min(due, default=(end + 1, -1))
            if at[0] > end:
                break
            self.clock.t = max(self.clock.t, at[0])
            if at[1] < 0:
                self.sweep()
            else:
                self.clients[at[1]].timers()
        self.clock.t = end

    def step(self) -> None:
        """Pick one possible event, weighted, and run it.

        Hot: it runs 200 times a schedule, so it lists (weight, action, argument)
        tuples (the same choices, in the same order, drawn with the same random
        numbers as a list of closures would be).
        """
        rng = self.rng
        choices: list[tuple[float, Callable[[Any], None], Any]] = []
        add = choices.append
        for c in self.clients:
            if c.dead or c.frozen:
                continue
            add((3, self.client_op, c))
            s = c.stream
            if s is None:
                add((1.5, self.attach, c))
            else:
                add((0.12, self.break_stream, c))
                if s.to_server:
                    add((4, self.server_takes, s))
                if s.to_client and c.deliverable(s.to_client[0]):
                    add((4, self.stream_event, c))
            if c.copies:
                add((4, self.copy_piece, c))
            for v in c.views:
                if v.blocks:
                    add((2, self.view_access, c))
                    break
            add((0.08, self.freeze, c))
            add((0.02, self.kill_vanishing if rng.random() < 0.3 else self.kill, c))
        for c in self.clients:
            if c.frozen and not c.dead:
                add((0.6, self.thaw, c))
                # A frozen client's stream still takes messages (the kernel's buffers).
                if c.stream is not None and c.stream.to_server:
                    add((1, self.server_takes, c.stream))
            if c.dead and c.stream is not None and c.stream.alive and c.stream.to_server:
                add((1, self.server_takes, c.stream))
        if self.unary_requests or any(
            n and not c.frozen for n, c in zip(self.unary_replies, self.clients, strict=True)
        ):
            add((6, self.deliver_some_unary, None))
        if self.detaching:
            add((1, self.notice_end, None))
        add((1.5, self.advance_some, None))
        add((0.05, self.stall, None))
        add((1, self.sweep_now, None))
        add((0.03, self.crash_or_stop, None))
        dead = [c for c in self.clients if c.dead and c.session]
        if dead:
            add((0.3, self.evict_one, dead))
        x = rng.random() * sum([w for w, _, _ in choices])
        for w, fn, arg in choices:
            x -= w
            if x <= 0:
                fn(arg)
                return
        fn(arg)  # the last one (rounding)

    def advance_some(self, _: None) -> None:
        self.advance(self.rng.choice(ADVANCES))

    def stall(self, _: None) -> None:
        self.advance(self.rng.choice((12, 25, 40)) * SECOND, stall=True)

    def sweep_now(self, _: None) -> None:
        self.sweep()

    def crash_or_stop(self, _: None) -> None:
        self.restart(clean=self.rng.random() < 0.3)

    def evict_one(self, dead: list[SimClient]) -> None:
        self.evict(self.rng.choice(dead))

    def kill_vanishing(self, c: SimClient) -> None:
        self.kill(c, vanish=True)

    def deliver_some_unary(self, _: None = None) -> None:
        """Deliver one message in flight; a frozen client takes no replies."""
        ready = [
            i
            for i, (kind, idx, _fn) in enumerate(self.unary)
            if kind == "request" or not self.clients[idx].frozen
        ]
        kind, idx, fn = self.unary.pop(self.rng.choice(ready))
        if kind == "request":
            self.unary_requests -= 1
        else:
            self.unary_replies[idx] -= 1
        fn()

    def stream_event(self, c: SimClient) -> None:
        assert c.stream is not None
        c.on_event(c.stream.to_client.popleft())

    def notice_end(self, _: None = None) -> None:
        s = self.detaching.pop(self.rng.randrange(len(self.detaching)))
        self.server_notices_end(s)

    def sweep(self) -> None:
        self.next_sweep = self.clock.t + SWEEP_NS
        self.server.ns.sweep()

    def restart(self, clean: bool) -> None:
        self.log(f"server {'stops cleanly and ' if clean else 'crashes and '}restarts")
        self.server.restart(clean)
        for c in self.clients:
            if c.stream is not None:
                s = c.stream
                s.alive = False
                s.to_client.clear()
                s.to_server.clear()
                c.stream = None
        self.detaching.clear()

    def evict(self, c: SimClient) -> None:
        try:
            self.server.ns.evict(c.session, Caller())
            self.log(f"operator evicts dead c{c.idx} (session {c.session})")
        except errors.StaleHandle:
            pass
        c.session = ClientId(0)

    def freeze(self, c: SimClient) -> None:
        c.frozen = True
        c.log("frozen")

    def thaw(self, c: SimClient) -> None:
        c.frozen = False
        c.log("thawed")
        c.timers()  # modelled: the deadline check runs before anything else

    def kill(self, c: SimClient, *, vanish: bool = False) -> None:
        c.dead = True
        c.copies.clear()
        c.views.clear()
        if vanish:
            c.log("vanished (its stream stays up until the operator evicts it)")
        else:
            c.log("killed")
            self.break_stream(c, quiet=True)

    # -- the client's workload -----------------------------------------------

    def client_op(self, c: SimClient) -> None:
        rng = self.rng
        op = rng.random()
        files = [f for f in c.files.values() if f.epoch == c.epoch]
        if op < 0.1 or not files:
            if c.busy.get(0) or len(files) >= 3:
                return
            path = rng.choice(PATHS)

            def opened(o: Any, c: SimClient = c, path: str = path, epoch: int = c.epoch) -> None:
                if epoch != c.epoch:
                    return
                c.files[o.handle] = FileRec(o.handle, o.attr.ino, o.attr.generation, True, epoch)
                c.layouts.pop(o.attr.ino, None)  # close-to-open: Client.open forgets the cache
                c.log(f"opened {path} fh={o.handle} ino={o.attr.ino}:{o.attr.generation}")

            caller = c.caller
            self.call(
                c, f"create {path}", lambda: self.server.ns.create(path, 0o644, caller), opened, 0
            )
            return
        f = rng.choice(files)
        if op < 0.35:
            self.get_layout(c, f, write=rng.random() < 0.6)
        elif op < 0.55:
            self.start_copy(c, f, write=rng.random() < 0.5)
        elif op < 0.62:
            self.map_view(c, f)
        elif op < 0.66:
            if c.views:
                c.views.pop(rng.randrange(len(c.views)))
        elif op < 0.72:
            self.close(c, f)
        elif op < 0.80:
            path, size = rng.choice(PATHS), rng.randrange(FILE_BLOCKS) * BS + rng.choice((0, 100))
            caller = c.caller
            self.call(
                c,
                f"truncate {path} {size}",
                lambda: self.server.ns.setattr(path, caller, size=size),
                lambda _r: None,
            )
        elif op < 0.86:
            path = rng.choice(PATHS)
            caller = c.caller
            self.call(
                c, f"unlink {path}", lambda: self.server.ns.unlink(path, caller), lambda _r: None
            )
        elif op < 0.90:
            a, b = rng.sample(PATHS, 2)
            caller = c.caller
            self.call(
                c, f"rename {a} {b}", lambda: self.server.ns.rename(a, b, caller), lambda _r: None
            )
        else:
            off, n = rng.randrange(FILE_BLOCKS) * BS, rng.randint(1, 3) * BS
            caller, fh = c.caller, f.fh
            self.call(
                c,
                f"write fh={fh} [{off},+{n})",
                lambda: self.server.ns.write(fh, off, b"w" * n, caller),
                lambda _r: None,
                fh,
            )

    def get_layout(self, c: SimClient, f: FileRec, *, write: bool) -> None:
        rng = self.rng
        start = rng.choice((0, rng.randrange(FILE_BLOCKS)))
        end = min(FILE_BLOCKS, start + rng.randint(1, 6))
        if not c.core.lease_valid():
            return  # _check_lease: StaleHandle before asking
        caller, fh = c.caller, f.fh

        def granted(lay: Any, c: SimClient = c, f: FileRec = f) -> None:
            # As DaxFile._layout: drop a reply that outlived its session, discard a
            # grant a recall overtook, else cache it.
            if f.epoch != c.epoch and self.check_session_epoch:
                c.log(f"layout ino={f.ino} from an ended session: ESTALE")
                return
            # The lease carries this grant's id whether or not the layout is kept.
            c.lease_ids[f.ino] = max(c.lease_ids.get(f.ino, 0), lay.lease_id)
            if not c.core.grant_usable(f.ino, lay.recall_seq):
                c.log(f"layout ino={f.ino} seq={lay.recall_seq} overtaken by a recall: discarded")
                return
            cache = c.layouts.setdefault(f.ino, {})
            grant = Grant(f.ino, f.gen)
            for t in lay.extents:
                if t.region_offset is None:
                    continue
                for k in range(0, t.length, BS):
                    cache[(t.file_offset + k) // BS] = (t.region_offset + k, grant)
            if self.tracing:
                c.log(f"cached layout ino={f.ino} seq={lay.recall_seq} blocks={sorted(cache)}")

        self.call(
            c,
            f"get_layout fh={fh} [{start},{end}) {'w' if write else 'r'}",
            lambda: self.server.ns.get_layout(
                fh, start * BS, (end - start) * BS, caller, write=write
            ),
            granted,
            fh,
        )

    def cached_run(self, c: SimClient, f: FileRec) -> list[tuple[int, Grant]]:
        cache = c.layouts.get(f.ino, {})
        if not cache:
            return []
        start = self.rng.choice(sorted(cache))
        run: list[tuple[int, Grant]] = []
        fb = start
        while fb in cache and len(run) < self.rng.randint(1, 4):
            run.append(cache[fb])
            fb += 1
        return run

    def start_copy(self, c: SimClient, f: FileRec, *, write: bool) -> None:
        if not c.core.lease_valid():
            return  # _check_lease
        blocks = self.cached_run(c, f)
        if not blocks:
            self.get_layout(c, f, write=write)
            return
        c.copies.append(Copy(write, f.fh, blocks))
        c.log(f"{'write' if write else 'read'} copy of {len(blocks)} blocks starts")

    def copy_piece(self, c: SimClient) -> None:
        cp = self.rng.choice(c.copies)
        if cp.write and not c.core.lease_valid():
            c.copies.remove(cp)
            c.log("write stopped: lease lapsed (ESTALE)")
            if not c.copies:
                c.timers()  # a deadline fence that waited for the I/O lock runs now
            return
        block, grant = cp.blocks[cp.done]
        cp.done += 1
        bad = self.foreign(block, grant)
        if bad is not None:
            if cp.write:
                self.breach(f"c{c.idx} wrote: {bad}")
            cp.foreign.append(bad)
        if cp.done == len(cp.blocks):
            c.copies.remove(cp)
            if not cp.write:
                if c.core.lease_valid():
                    if cp.foreign:
                        self.breach(f"c{c.idx} read and kept: {cp.foreign[0]}")
                else:
                    c.log("read discarded: lease may have lapsed (ESTALE)")
            if not c.copies:
                c.timers()  # a deadline fence that waited for the I/O lock runs now

    def map_view(self, c: SimClient, f: FileRec) -> None:
        if not c.core.lease_valid():
            return
        cache = c.layouts.get(f.ino, {})
        n = 0
        while n in cache:
            n += 1
        if not n:
            self.get_layout(c, f, write=False)
            return
        n = self.rng.randint(1, n)
        # array() of a writable file publishes its size first: a view never maps
        # past EOF (modelled as one call that returns at once).
        try:
            self.server.ns.commit_layout(f.fh, c.caller, new_size=n * BS)
        except errors.DaxfsError as exc:
            c.log(f"commit for a view -> {type(exc).__name__}")
            return
        c.views.append(View(f.ino, {fb: cache[fb] for fb in range(n)}))
        c.log(f"view of ino={f.ino} blocks [0,{n})")

    def view_access(self, c: SimClient) -> None:
        v = self.rng.choice([v for v in c.views if v.blocks])
        fb = self.rng.choice(sorted(v.blocks))
        block, grant = v.blocks[fb]
        bad = self.foreign(block, grant)
        if bad is not None:
            self.breach(f"c{c.idx} view of ino={v.ino} block {fb}: {bad}")

    def close(self, c: SimClient, f: FileRec) -> None:
        if c.busy.get(f.fh) or any(cp.fh == f.fh for cp in c.copies):
            return
        del c.files[f.fh]
        caller, fh = c.caller, f.fh
        self.call(
            c, f"release fh={fh}", lambda: self.server.ns.release(fh, caller), lambda _r: None
        )
        if any(g.ino == f.ino for g in c.files.values()):
            return
        if any(v.ino == f.ino and v.blocks for v in c.views):
            return  # return-on-close waits for the views (SessionState.closed_file)
        c.layouts.pop(f.ino, None)
        lease = c.lease_ids.pop(f.ino, None)
        if lease is not None:
            self.call(
                c,
                f"return_layout {lease}",
                lambda: self.server.ns.return_layout(lease, caller),
                lambda _r: None,
            )

    # -- one schedule --------------------------------------------------------

    def run(self, steps: int = STEPS) -> None:
        try:
            for _ in range(steps):
                self.step()
            # fsck of what the server committed (no call is under way: it is what a
            # crash now would leave).
            report = check_open(self.region_path, self.server.ns.meta)
        finally:
            self.server.close()
        if not report.clean:
            self.log("fsck: " + "; ".join(report.problems))
            raise Breach("fsck: " + "; ".join(report.problems))


# -- running schedules -------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> Iterator[str]:
    """One formatted volume; each schedule starts from a copy of it."""
    root = tempfile.mkdtemp(prefix="daxfs-sim-", dir="/dev/shm")
    format_volume(os.path.join(root, "region"), os.path.join(root, "region.meta"), REGION_SIZE, BS)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_schedule(
    template: str, seed: int, *, tracing: bool = False, **mutation: Any
) -> World | None:
    """Run one schedule; returns the world if it found a breach, else None.

    Runs without a trace; a breach is replayed (schedules are deterministic)
    with the trace on, and that world is returned. Every schedule starts from
    the template's metadata (an image read once per process) and a copy of its
    region made once per process: the simulation never reads region bytes
    (ownership is the metadata's), and nothing writes the superblock.
    """
    root = os.path.join(template, f"run-{os.getpid()}")
    image = _images.get(root)
    if image is None:
        os.makedirs(root, exist_ok=True)
        shutil.copyfile(os.path.join(template, "region"), os.path.join(root, "region"))
        image = _images[root] = meta_image(os.path.join(template, "region.meta"))
    world = World(seed, root, tracing=tracing, meta=image, **mutation)
    # A schedule's objects all die with it, most of them in reference cycles (a
    # world and its clients): one collection after it costs less than many during.
    gc.disable()
    try:
        world.run()
    except Breach:
        if tracing:
            return world
        return run_schedule(template, seed, tracing=True, **mutation) or world
    finally:
        gc.enable()
    return None


#: Scratch folder (one per template and process) -> the image of the template's metadata.
_images: dict[str, bytes] = {}


def meta_image(path: str) -> bytes:
    """The database image of the metadata file at ``path``, for :class:`MemoryMetadata`."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        image = bytearray(conn.serialize())
    finally:
        conn.close()
    image[18] = image[19] = 1  # file format versions 2 (WAL): in memory it is a rollback journal
    return bytes(image)


def explain(world: World) -> str:
    return (
        f"seed {world.seed} breached the layout invariant; replay with "
        f"DAXFS_SIM_SEED={world.seed} pytest tests/test_protocol_sim.py -k replay\n"
        + "\n".join(world.trace[-80:])
    )


CHUNKS = 10


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules_keep_the_invariant(template: str, chunk: int) -> None:
    for seed in range(chunk, SCHEDULES, CHUNKS):
        world = run_schedule(template, seed)
        if world is not None:
            pytest.fail(explain(world), pytrace=False)


@pytest.mark.skipif(REPLAY is None, reason="set DAXFS_SIM_SEED=<n> to replay one schedule")
def test_replay(template: str) -> None:
    assert REPLAY is not None
    world = run_schedule(template, int(REPLAY))
    if world is not None:
        pytest.fail(explain(world), pytrace=False)


#: Seeds the long run (seeds 1,000 to 168,000 of 1,000,000) found breaching, each
#: fixed since and kept as a regression: a truncate during the restart grace freed
#: blocks at the grace's end although a current holder had not acknowledged; and
#: the model fenced views only after copies in flight, as the library no longer
#: does; and (seed 59638) a ReturnLayout in flight ended the lease that a later
#: grant of the same file to the same client had refreshed, so the next truncate
#: freed the blocks without recalling it: each grant now gives the lease a new id,
#: and a return naming an older one is refused. The 10^6-schedule soak of session
#: 6 found seed 3678637: a clean stop inside a restart grace recorded "no lease
#: left" (its own table was empty), so the next instance skipped the grace while
#: a client frozen across the crash still read blocks of the first instance.
FOUND_SEEDS = (
    4393,
    16134,
    32427,
    42488,
    50641,
    59002,
    59638,
    60971,
    67669,
    88185,
    96569,
    109275,
    122793,
    135738,
    139476,
    140983,
    143937,
    151562,
    3678637,
)


@pytest.mark.parametrize("seed", FOUND_SEEDS)
def test_seeds_the_long_run_found_keep_the_invariant(template: str, seed: int) -> None:
    world = run_schedule(template, seed)
    if world is not None:
        pytest.fail(explain(world), pytrace=False)


# -- mutations: each removes one safeguard; the simulation must notice --------------


class AcceptsOvertakenGrants(LeaseState):
    """A client core that caches a layout even when a recall it obeyed overtook it."""

    def grant_usable(self, ino: InodeId, recall_seq: int) -> bool:
        return True


class GoneWhenStreamCloses(LeaseTable):
    """Drops a session as soon as its stream is down, without waiting for its lease to end."""

    def gone_sessions(self) -> list[ClientId]:
        return [s.id for s in self.sessions() if not s.attached]


class GoneByTimerOnly(LeaseTable):
    """Drops a session whose lease ran out on the server's clock, stream or no stream."""

    def gone_sessions(self) -> list[ClientId]:
        now = self.now()
        return [s.id for s in self.sessions() if s.deadline_ns <= now]


class NoRestartGrace(SimNamespace):
    """A restarted server that reuses freed blocks at once."""

    def _start_instance(self) -> int:
        return 0


class ForgetsRecalls(LeaseTable):
    """Does not re-send unacknowledged recalls on a reattach."""

    def attach(self, client: ClientId) -> list[RecallNotice]:
        super().attach(client)
        return []


#: Each must show a breach within MUTATION_SEEDS schedules. Two weakened rules
#: are kept out because the others still cover them, which the simulation
#: confirms (no breach in hundreds of schedules): ``ForgetsRecalls`` only loses
#: space (the blocks stay quarantined until an acknowledgement that never comes),
#: and ``GoneByTimerOnly`` drops a frozen client whose stream is up, which
#: fences itself on thawing before it touches anything (one piece of a copy is
#: atomic here: the residual risk the protocol states).
MUTATIONS: dict[str, dict[str, Any]] = {
    "client accepts overtaken grants": {"core": AcceptsOvertakenGrants},
    "a session is gone when its stream closes": {"leases": GoneWhenStreamCloses},
    "no restart grace": {"ns": NoRestartGrace},
    "a recall does not fence views": {"view_fence_on_recall": False},
}

#: Seeds a mutation may take before the simulation must have found its breach.
MUTATION_SEEDS = 400


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_simulation_finds_a_breach_when_a_safeguard_is_removed(
    template: str, mutation: str
) -> None:
    for seed in range(MUTATION_SEEDS):
        world = run_schedule(template, seed, **MUTATIONS[mutation])
        if world is not None:
            assert world.trace[-1].split("] ", 1)[1].startswith("BREACH")
            return
    pytest.fail(f"{mutation}: no breach found in {MUTATION_SEEDS} schedules")
