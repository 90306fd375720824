"""Property tests of the extent allocator against a block-array model (issue 2).

A Hypothesis state machine drives one ``Allocator`` on a real SQLite metadata
file in /dev/shm, every call inside a metadata transaction as the namespace
does it, and mirrors each call in a ``bytearray`` with one byte per block
(free, used or quarantined). After every step it checks that the allocator's
free list is exactly the model's free runs (hence sorted and coalesced), that
the byte counters agree, that SQLite holds what memory holds, and that a fresh
``Allocator`` rebuilt from SQLite sees the same state. ``NoSpace`` must come
exactly when the model says the request cannot fit, and then change nothing.

``DAXFS_HYPOTHESIS_EXAMPLES`` raises the number of examples for a long run;
``DAXFS_HYPOTHESIS_RANDOM=1`` draws new examples each run instead of the
fixed (derandomized) ones that ``make test`` uses. A long run needs pytest's
own limit lifted: ``DAXFS_HYPOTHESIS_RANDOM=1 DAXFS_HYPOTHESIS_EXAMPLES=2000
pytest --timeout=0 -o faulthandler_timeout=0 tests/test_allocator_props.py``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from daxfs.server.allocator import Allocator
from daxfs.server.metadata import Metadata
from daxfs.shared.errors import NoSpace

BS = 4096
DATA_OFFSET = BS  # block 0 is the superblock, as in a real region
NBLOCKS = 40
REGION_SIZE = DATA_OFFSET + NBLOCKS * BS

FREE, USED, QUARANTINED = 0, 1, 2

EXAMPLES = int(os.environ.get("DAXFS_HYPOTHESIS_EXAMPLES", "60"))
DERANDOMIZE = not os.environ.get("DAXFS_HYPOTHESIS_RANDOM")


def _tmpdir() -> str:
    return tempfile.mkdtemp(
        prefix="daxfs-alloc-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )


def _off(block: int) -> int:
    return DATA_OFFSET + block * BS


def _block(offset: int) -> int:
    assert (offset - DATA_OFFSET) % BS == 0, f"offset {offset} is not block aligned"
    return (offset - DATA_OFFSET) // BS


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the allocator owns, in memory and in SQLite."""

    free_list: list[tuple[int, int]]
    free_bytes: int
    quarantined_bytes: int
    stored_free: list[tuple[int, int]]
    stored_quarantine: list[tuple[int, int, int]]


class AllocatorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = _tmpdir()
        self.meta = Metadata(os.path.join(self.dir, "meta"))
        self.meta.create_schema({})
        self.alloc = Allocator(self.meta, DATA_OFFSET, REGION_SIZE, BS)
        with self.meta.transaction():
            self.alloc.format()
        self.blocks = bytearray(NBLOCKS)  # FREE / USED / QUARANTINED per block
        # Extents handed out and not yet freed: (first block, number of blocks).
        self.owned: list[tuple[int, int]] = []
        # Quarantined extents: first block -> (blocks, deadline).
        self.parked: dict[int, tuple[int, int]] = {}
        self.now = 0

    def teardown(self) -> None:
        self.meta.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- model helpers -------------------------------------------------------

    def free_runs(self) -> list[tuple[int, int]]:
        """Maximal runs of free blocks as (first block, blocks)."""
        runs: list[tuple[int, int]] = []
        start = None
        for i, b in enumerate([*self.blocks, USED]):
            if b == FREE and start is None:
                start = i
            elif b != FREE and start is not None:
                runs.append((start, i - start))
                start = None
        return runs

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.alloc.free_extents(),
            self.alloc.free_bytes,
            self.alloc.quarantined_bytes,
            self.meta.free_extents(),
            self.meta.quarantined(),
        )

    def mark(self, first: int, n: int, old: int, new: int) -> None:
        for b in range(first, first + n):
            assert self.blocks[b] == old, f"block {b} is {self.blocks[b]}, model expected {old}"
            self.blocks[b] = new

    # -- rules ---------------------------------------------------------------

    @initialize(pre=st.lists(st.integers(1, 6), max_size=6))
    def fragment(self, pre: list[int]) -> None:
        """Start from a fragmented free list: allocate some runs and free every other one."""
        for i, n in enumerate(pre):
            if self.blocks.count(FREE) < n:
                break
            with self.meta.transaction():
                pieces = self.alloc.allocate(n * BS)
            for off, length in pieces:
                self.mark(_block(off), length // BS, FREE, USED)
                if i % 2:
                    with self.meta.transaction():
                        self.alloc.free(off, length)
                    self.mark(_block(off), length // BS, USED, FREE)
                else:
                    self.owned.append((_block(off), length // BS))

    @rule(
        n=st.integers(1, NBLOCKS + 2),
        goal_kind=st.sampled_from(["none", "free-start", "after-owned", "any-block"]),
        pick=st.integers(0, 1000),
        contiguous=st.booleans(),
    )
    def allocate(self, n: int, goal_kind: str, pick: int, contiguous: bool) -> None:
        runs = self.free_runs()
        goal: int | None = None
        if goal_kind == "free-start" and runs:
            goal = _off(runs[pick % len(runs)][0])
        elif goal_kind == "after-owned" and self.owned:
            first, blocks = self.owned[pick % len(self.owned)]
            goal = _off(first + blocks)
        elif goal_kind == "any-block":
            goal = _off(pick % NBLOCKS)
        free_blocks = self.blocks.count(FREE)
        largest = max((r for _, r in runs), default=0)
        fits = largest >= n if contiguous else free_blocks >= n

        before = self.snapshot()
        try:
            with self.meta.transaction():
                pieces = self.alloc.allocate(n * BS, goal=goal, contiguous=contiguous)
        except NoSpace:
            assert not fits, (
                f"NoSpace for {n} blocks (contiguous={contiguous}) with {free_blocks} free, "
                f"largest run {largest}"
            )
            # The allocator promises that a refused request changes nothing, in
            # memory as well as in SQLite (the transaction rolled back anyway).
            assert self.snapshot() == before
            return
        assert fits, f"allocated {n} blocks (contiguous={contiguous}) the model cannot fit"

        assert sum(length for _, length in pieces) == n * BS
        for off, length in pieces:
            assert length > 0 and length % BS == 0 and off % BS == 0
            assert off >= DATA_OFFSET and off + length <= REGION_SIZE
            # mark() asserts every block was free: no overlap with any allocation.
            self.mark(_block(off), length // BS, FREE, USED)
            self.owned.append((_block(off), length // BS))
        if contiguous:
            assert len(pieces) == 1
        # Policy: the goal is honoured when it starts a free run that may be used…
        goal_run = next((r for s, r in runs if goal is not None and _off(s) == goal), None)
        if goal_run is not None and (not contiguous or goal_run >= n):
            assert pieces[0][0] == goal
        elif any(r >= n for _, r in runs):
            # …otherwise best fit: one piece, from a smallest run that holds it all.
            assert len(pieces) == 1
            best = min(r for _, r in runs if r >= n)
            assert pieces[0][0] in {_off(s) for s, r in runs if r == best}

    @precondition(lambda self: self.owned)
    @rule(pick=st.integers(0, 1000), lo=st.integers(0, 1000), hi=st.integers(0, 1000))
    def free(self, pick: int, lo: int, hi: int) -> None:
        """Free all or part of an allocated extent."""
        first, n = self.owned.pop(pick % len(self.owned))
        a, b = sorted((lo % (n + 1), hi % (n + 1)))
        if a == b:
            a, b = 0, n
        with self.meta.transaction():
            self.alloc.free(_off(first + a), (b - a) * BS)
        self.mark(first + a, b - a, USED, FREE)
        if a:
            self.owned.append((first, a))
        if b < n:
            self.owned.append((first + b, n - b))

    @precondition(lambda self: FREE in self.blocks)
    @rule(pick=st.integers(0, 1000), extra=st.integers(0, 3))
    def double_free_is_refused(self, pick: int, extra: int) -> None:
        """Freeing a range that overlaps the free list is an error and changes nothing."""
        runs = self.free_runs()
        first, n = runs[pick % len(runs)]
        start = max(0, first - extra)
        length = min(NBLOCKS - start, n + 2 * extra)
        before = self.snapshot()
        with pytest.raises(ValueError, match="double free"), self.meta.transaction():
            self.alloc.free(_off(start), length * BS)
        assert self.snapshot() == before

    @precondition(lambda self: self.owned)
    @rule(pick=st.integers(0, 1000), delay=st.integers(0, 5))
    def quarantine(self, pick: int, delay: int) -> None:
        first, n = self.owned.pop(pick % len(self.owned))
        with self.meta.transaction():
            self.alloc.quarantine(_off(first), n * BS, self.now + delay)
        self.mark(first, n, USED, QUARANTINED)
        self.parked[first] = (n, self.now + delay)

    @rule(advance=st.integers(0, 4), force=st.booleans())
    def release(self, advance: int, force: bool) -> None:
        self.now += advance
        with self.meta.transaction():
            released = self.alloc.release_quarantine(self.now, force=force)
        due = [f for f, (_, until) in self.parked.items() if force or until <= self.now]
        expected = 0
        for first in due:
            n, _ = self.parked.pop(first)
            self.mark(first, n, QUARANTINED, FREE)
            expected += n * BS
        assert released == expected

    @precondition(lambda self: self.parked or self.owned)
    @rule(pick=st.integers(0, 1000), parked=st.booleans())
    def release_one(self, pick: int, parked: bool) -> None:
        """A recall completed: one quarantined extent is freed early; anything else is a no-op."""
        if parked and self.parked:
            first = sorted(self.parked)[pick % len(self.parked)]
            n, _ = self.parked.pop(first)
            with self.meta.transaction():
                assert self.alloc.release_quarantined(_off(first), n * BS) == n * BS
            self.mark(first, n, QUARANTINED, FREE)
        elif self.owned:
            first, n = self.owned[pick % len(self.owned)]
            before = self.snapshot()
            with self.meta.transaction():
                assert self.alloc.release_quarantined(_off(first), n * BS) == 0
            assert self.snapshot() == before

    @rule()
    def reload(self) -> None:
        """What a rollback does: rebuild from SQLite; nothing may change."""
        before = self.snapshot()
        self.alloc.reload()
        assert self.snapshot() == before

    # -- invariants ----------------------------------------------------------

    @invariant()
    def free_list_is_the_models_free_runs(self) -> None:
        free = self.alloc.free_extents()
        starts = [o for o, _ in free]
        assert starts == sorted(starts), f"free list not sorted: {free}"
        for (a, an), (b, _) in itertools.pairwise(free):
            assert a + an < b, f"free extents [{a}, +{an}) and {b} overlap or touch (not coalesced)"
        assert free == [(_off(s), n * BS) for s, n in self.free_runs()]

    @invariant()
    def counters_match(self) -> None:
        assert self.alloc.free_bytes == self.blocks.count(FREE) * BS
        assert self.alloc.quarantined_bytes == self.blocks.count(QUARANTINED) * BS
        assert self.alloc.largest_free() == max((n * BS for _, n in self.free_runs()), default=0)

    @invariant()
    def owned_extents_do_not_overlap(self) -> None:
        seen = bytearray(NBLOCKS)
        for first, n in self.owned:
            for b in range(first, first + n):
                assert not seen[b], f"block {b} handed out twice"
                seen[b] = 1
        assert seen.count(1) == self.blocks.count(USED)

    @invariant()
    def sqlite_holds_what_memory_holds(self) -> None:
        assert self.meta.free_extents() == self.alloc.free_extents()
        assert self.meta.quarantined() == [
            (_off(f), n * BS, until) for f, (n, until) in sorted(self.parked.items())
        ]
        fresh = Allocator(self.meta, DATA_OFFSET, REGION_SIZE, BS)
        assert fresh.free_extents() == self.alloc.free_extents()
        assert fresh.free_bytes == self.alloc.free_bytes
        assert fresh.quarantined_bytes == self.alloc.quarantined_bytes


AllocatorMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    derandomize=DERANDOMIZE,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_allocator_against_block_model = AllocatorMachine.TestCase


def test_format_frees_the_whole_data_area() -> None:
    d = _tmpdir()
    meta = Metadata(os.path.join(d, "meta"))
    try:
        meta.create_schema({})
        alloc = Allocator(meta, DATA_OFFSET, REGION_SIZE, BS)
        with meta.transaction():
            alloc.format()
        assert alloc.free_extents() == [(DATA_OFFSET, NBLOCKS * BS)]
        with pytest.raises(ValueError, match="whole blocks"):
            alloc.allocate(BS + 1)
        with pytest.raises(ValueError, match="outside the data area"):
            alloc.free(0, BS)
    finally:
        meta.close()
        shutil.rmtree(d, ignore_errors=True)
