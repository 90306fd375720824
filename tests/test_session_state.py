"""What each session event does to what a client holds (client/session.py ``SessionState``).

Without a server: the state is driven with the values the session stream
hands it (``Recall``, an own change's trailer) and a ``say_hello`` that stands
for the server's answer to a new session. The wire under it (``rpc.Server``)
is real but never called.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator

import pytest

from daxfs.client.rpc import Connection, Hello, Server
from daxfs.client.session import Recall, SessionState
from daxfs.shared.attr import Attr
from daxfs.shared.extent import ClientId, Extent, InodeId
from daxfs.shared.permissions import Identity

INO = InodeId(5)
FIRST = Hello(ClientId(7), 1, 4096, 30 * 10**9, "region-a", "/dev/shm/r")


class Hellos:
    """The server's answers to the Hellos of new sessions, in order."""

    def __init__(self, *answers: Hello) -> None:
        self.answers = list(answers)
        self.said = 0

    def __call__(self) -> Hello:
        self.said += 1
        return self.answers.pop(0)


@pytest.fixture
def server() -> Iterator[Server]:
    conn = Connection("unix:/nonexistent/daxfs.sock")
    wire = Server(conn, Identity(0, 0))
    wire.adopt(FIRST.client_id)
    yield wire
    conn.close()


def state_of(server: Server, say_hello: Callable[[], Hello] | None = None) -> SessionState:
    hello = say_hello or Hellos()
    return SessionState(server, FIRST, say_hello=hello, stream=False, cache_metadata=False)


def _attr(ino: InodeId) -> Attr:
    return Attr(ino, 1, 0o100644, 1, 0, 0, 8192, 8192, 0, 0, 0, 4096)


def test_a_recall_drops_the_files_layouts_and_voids_grants_it_overtook(server: Server) -> None:
    state = state_of(server)
    state.layouts.insert(INO, [Extent(0, 8192, 1 << 20)], 0, 8192)
    state.inodes.open(_attr(INO), state.epoch, truncated=False, writer=None)
    state.recalled(Recall(recall_id=1, ino=INO, offset=0, length=8192, seq=3))
    assert state.layouts.lookup(INO, 0, 8192) is None
    assert state.inodes.recall_count(INO) == 1
    # A grant made before the recall (a lower recall_seq) names blocks it took back.
    assert not state.lease_state.grant_usable(INO, 2)
    assert state.lease_state.grant_usable(INO, 3)


def test_a_lost_session_voids_what_it_held_and_calls_go_out_in_the_new_one(
    server: Server,
) -> None:
    hellos = Hellos(Hello(ClientId(8), 2, 4096, 30 * 10**9, "region-a", "/dev/shm/r"))
    state = state_of(server, hellos)
    state.layouts.insert(INO, [Extent(0, 4096, 1 << 20)], 0, 4096)
    state.got_lease(INO, 11)
    assert state.session_lost(FIRST.client_id)
    assert (server.client_id, server.caller.client_id, state.server_instance) == (8, 8, 2)
    assert state.epoch == 1  # files opened before are void (ESTALE)
    assert state.layouts.lookup(INO, 0, 4096) is None
    # A call of the old session that finds out later recovers nothing twice...
    assert state.recover(FIRST.client_id) and hellos.said == 1
    # ...and a session that was never ours is not recovered at all.
    assert not state.recover(ClientId(99))


@pytest.mark.client_log("now serves region region-b")
def test_a_server_that_now_serves_another_region_gets_no_new_session(server: Server) -> None:
    state = state_of(server, Hellos(Hello(ClientId(8), 2, 4096, 10**9, "region-b", "/r")))
    assert not state.session_lost(FIRST.client_id)
    assert server.client_id == FIRST.client_id
    assert state.epoch == 1  # what the old session held is void all the same


class Listener:
    def __init__(self) -> None:
        self.dropped: list[object] = []

    def invalidate(
        self, inos: Iterable[int], paths: Iterable[str], done: Callable[[], None]
    ) -> None:
        self.dropped.append((list(inos), list(paths)))
        done()

    def invalidate_own(self, inos: Iterable[int]) -> None:
        self.dropped.append(list(inos))

    def invalidate_all(self) -> None:
        self.dropped.append("all")


def test_an_own_change_tells_the_caches_behind_the_client_what_to_drop(server: Server) -> None:
    state = state_of(server)
    listener = Listener()
    state.cache_listeners.append(listener)
    state.own_change(json.dumps({"inos": [5, 6], "paths": ["/a"]}).encode())
    state.own_change(json.dumps({"all": True}).encode())
    assert listener.dropped == [[5, 6], "all"]
