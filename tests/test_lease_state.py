"""The client's protocol core (client/lease_state.py): its own deadlines, recalls, grants."""

from __future__ import annotations

from daxfs.client.lease_state import LeaseState
from daxfs.shared.extent import InodeId

LEASE = 30_000
INO = InodeId(7)


class Clock:
    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_a_new_session_holds_one_lease_from_its_hello() -> None:
    clock = Clock()
    core = LeaseState(LEASE, clock, opened_at=clock.now - 100)
    assert core.deadline_ns == clock.now - 100 + LEASE
    assert core.lease_valid()
    clock.now = core.deadline_ns
    assert not core.lease_valid()


def test_a_renewal_counts_from_when_it_was_sent_not_answered() -> None:
    clock = Clock()
    core = LeaseState(LEASE, clock)
    seq = core.renew_sent()
    sent = clock.now
    clock.now += 20_000  # the answer is slow
    assert core.renewed(seq, LEASE)
    assert core.deadline_ns == sent + LEASE


def test_an_answer_that_is_not_ours_moves_nothing() -> None:
    clock = Clock()
    core = LeaseState(LEASE, clock)
    before = core.deadline_ns
    assert not core.renewed(42, LEASE)
    assert core.deadline_ns == before


def test_an_answer_forgets_older_renewals_that_will_never_be_answered() -> None:
    clock = Clock()
    core = LeaseState(LEASE, clock)
    first = core.renew_sent()
    clock.now += 5
    second = core.renew_sent()
    assert core.renewed(second, LEASE)
    assert not core.renewed(first, LEASE)


def test_a_late_answer_never_moves_the_deadline_back() -> None:
    clock = Clock()
    core = LeaseState(LEASE, clock)
    old = core.renew_sent()
    clock.now += 10_000
    new = core.renew_sent()
    assert core.renewed(new, LEASE)
    deadline = core.deadline_ns
    core._sent[old] = clock.now - 20_000  # an answer for an older renewal, reordered
    core.renewed(old, LEASE)
    assert core.deadline_ns == deadline


def test_the_fence_point_is_a_sixth_of_a_lease_before_the_deadline_and_fires_once() -> None:
    clock = Clock()
    core = LeaseState(LEASE, clock)
    assert core.fence_at == core.deadline_ns - LEASE // 6
    clock.now = core.fence_at - 1
    assert not core.due_to_fence()
    clock.now = core.fence_at
    assert core.due_to_fence()
    assert not core.lease_valid()  # fenced, although the deadline has not come
    assert not core.due_to_fence()


def test_a_renewal_after_fencing_unfences() -> None:
    clock = Clock()
    core = LeaseState(LEASE, clock)
    clock.now = core.fence_at
    assert core.due_to_fence()
    seq = core.renew_sent()
    assert core.renewed(seq, LEASE)
    assert core.lease_valid()


def test_a_grant_older_than_a_recall_seen_is_not_usable() -> None:
    core = LeaseState(LEASE, Clock())
    assert core.grant_usable(INO, 0)
    core.recall_seen(INO, 3)
    assert not core.grant_usable(INO, 2)
    assert core.grant_usable(INO, 3)
    assert core.grant_usable(InodeId(8), 0)  # another file


def test_a_resent_recall_never_lowers_what_was_seen() -> None:
    core = LeaseState(LEASE, Clock())
    core.recall_seen(INO, 5)
    core.recall_seen(INO, 2)
    assert not core.grant_usable(INO, 4)


def test_losing_the_session_fences_and_forgets_then_a_new_one_starts_afresh() -> None:
    clock = Clock()
    core = LeaseState(LEASE, clock)
    core.recall_seen(INO, 5)
    seq = core.renew_sent()
    core.lost()
    assert not core.lease_valid()
    assert not core.renewed(seq, LEASE)  # the old session's answer
    clock.now += 1_000
    core.forget_recalls()
    core.new_session(clock.now - 10)
    assert core.lease_valid()
    assert core.deadline_ns == clock.now - 10 + LEASE
    assert core.grant_usable(INO, 0)  # sequence numbers are per session
