"""The queue of a client's releases (client/release_queue.py): sent after close()
returns, in order; on the frame socket they ride with the client's next call,
and only when none comes does the worker send them."""

from __future__ import annotations

import threading
import time

import pytest

from daxfs.client import Client, release_queue
from daxfs.client.release_queue import ReleaseQueue
from daxfs.testing import wait_until


def test_queued_calls_run_in_order_after_the_caller_returns_and_drain_waits_for_them() -> None:
    q = ReleaseQueue()
    gate = threading.Event()
    sent: list[int] = []
    q.defer(lambda: (gate.wait(10), sent.append(1)))
    q.defer(lambda: sent.append(2))
    assert sent == [] and q.pending == 2
    gate.set()
    q.drain()
    assert sent == [1, 2] and q.pending == 0
    q.close()


def test_drain_tells_its_hook_before_it_waits_and_only_then() -> None:
    """The FUSE daemon hands its /dev/fuse descriptor over in ``before_wait``."""
    q = ReleaseQueue()
    waits: list[int] = []
    q.before_wait = lambda: waits.append(q.pending)
    q.drain()
    assert waits == [], "nothing was queued: drain must not wait, nor say it will"
    gate = threading.Event()
    q.defer(lambda: gate.wait(10))
    threading.Timer(0.05, gate.set).start()
    q.drain()
    assert waits == [1] and q.pending == 0
    q.close()


def test_after_close_a_call_is_sent_by_the_caller() -> None:
    q = ReleaseQueue()
    q.close()
    callers: list[threading.Thread] = []
    q.defer(lambda: callers.append(threading.current_thread()))
    assert callers == [threading.current_thread()]


def test_a_queued_release_rides_with_the_next_call_and_is_answered_before_it(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer closed with ``release_later`` (as the FUSE mount closes) then
    unlinked: one round trip, and the blocks are free when the unlink returns
    (a Release dropped on the way would leave the file open, unlinked, its
    blocks held). Order within the frame: test_frames.py."""
    monkeypatch.setattr(release_queue, "CARRY_WAIT_S", 60.0)  # only a call takes it
    conn = client.server.conn
    free = client.statfs().blocks_free
    f = client.open("/f", "wb")
    f.write(b"x" * (1 << 20))
    f.close(release_later=True)
    assert client.server.releases.pending == 1
    trips, carried = conn.framed_calls, conn.carried_calls
    client.unlink("/f")
    assert (conn.framed_calls - trips, conn.carried_calls - carried) == (1, 1)
    assert client.server.releases.pending == 0
    assert client.statfs().blocks_free == free


def test_with_no_call_to_carry_it_the_worker_sends_a_release_alone(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(release_queue, "CARRY_WAIT_S", 0.05)
    conn = client.server.conn
    f = client.open("/f", "wb")
    f.close(release_later=True)
    trips, carried, start = conn.framed_calls, conn.carried_calls, time.monotonic()
    wait_until(lambda: client.server.releases.pending == 0, "the worker to send the release")
    assert time.monotonic() - start >= 0.04, "sent before anything could have carried it"
    assert (conn.framed_calls - trips, conn.carried_calls - carried) == (1, 0)


def test_wait_released_sends_a_waiting_release_at_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(release_queue, "CARRY_WAIT_S", 60.0)
    f = client.open("/f", "wb")
    f.close(release_later=True)
    start = time.monotonic()
    client.wait_released()
    assert client.server.releases.pending == 0 and time.monotonic() - start < 30


def test_drain_waits_for_calls_riding_with_another_until_their_carrier_is_answered() -> None:
    q: ReleaseQueue[str] = ReleaseQueue()
    q.defer(lambda: None, "release 1")
    assert q.take() == ["release 1"] and q.pending == 1
    drained = threading.Event()
    waiter = threading.Thread(target=lambda: (q.drain(), drained.set()))
    waiter.start()
    assert not drained.wait(0.2), "drain returned while the carrier was still out"
    q.carried(1)
    assert drained.wait(10) and q.pending == 0
    waiter.join()
    q.close()
