"""The queue of a client's releases (client/release_queue.py): sent after close()
returns, in order, on one worker; the client's next call waits for them."""

from __future__ import annotations

import threading

from daxfs.client.release_queue import ReleaseQueue


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
