"""Who is on the other end of the unix socket (SO_PEERCRED), which grpc-python does not say.

grpc-python exposes neither the accepted socket nor the peer's credentials
(with local credentials its auth context says only "local", grpc issue
28755). So with ``--peer-credentials`` the public socket is a relay in the
server process: it accepts each connection, asks the kernel who connected
(SO_PEERCRED: pid, uid, gid; supplementary groups from /proc/PID/status, read
at once), and connects onward to gRPC's private socket from a fresh abstract
address it registered for that identity. gRPC reports that address as the
call's peer (``unix-abstract:NAME``) and the edge looks the identity up. Only
the relay can reach the private socket (its directory is 0700, the server's),
so only the relay chooses these names, and a name it did not register means
nothing.

The cost: every byte of every RPC is copied once more, by two threads per
connection. The data path (loads and stores in the region) does not pass
through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import struct
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")
PREFIX = "daxfs-peer-"
CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class Peer:
    """The process that opened a connection, as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]


def groups_of(pid: int, gid: int) -> tuple[int, ...]:
    """Supplementary groups of ``pid`` (empty if it is gone already)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:] if int(g) != gid)
    except OSError:
        pass
    return ()


def peer_of(conn: socket.socket) -> Peer:
    """Who opened the unix socket connection ``conn``, as the kernel saw it at connect()."""
    pid, uid, gid = _UCRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Peer(pid, uid, gid, groups_of(pid, gid))


class PeerTable:
    """Identities of relayed connections, by the abstract name gRPC reports. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Peer] = {}

    def add(self, peer: Peer) -> str:
        name = PREFIX + secrets.token_hex(12)
        with self._lock:
            self._by_name[name] = peer
        return name

    def drop(self, name: str) -> None:
        with self._lock:
            self._by_name.pop(name, None)

    def lookup(self, grpc_peer: str) -> Peer | None:
        """The identity of a call whose ``context.peer()`` is ``grpc_peer``; None if not relayed."""
        kind, _, name = grpc_peer.partition(":")
        if kind != "unix-abstract":
            return None
        with self._lock:
            return self._by_name.get(name)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_name)


class PeerRelay:
    """Accepts on ``listener`` and relays each connection to ``upstream`` under its identity."""

    def __init__(self, listener: socket.socket, upstream: str, table: PeerTable) -> None:
        self._listener = listener
        self._upstream = upstream
        self.table = table
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="daxfs-peer-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                log.exception("peer relay: accept failed")
                continue
            try:
                self._relay(conn)
            except OSError as exc:
                log.warning("peer relay: cannot relay a connection: %s", exc)
                conn.close()

    def _relay(self, conn: socket.socket) -> None:
        peer = peer_of(conn)
        pid, uid, gid = peer.pid, peer.uid, peer.gid
        name = self.table.add(peer)
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            up.bind("\0" + name)
            up.connect(self._upstream)
        except OSError:
            up.close()
            self.table.drop(name)
            raise
        log.debug("peer relay: pid=%d uid=%d gid=%d as %s", pid, uid, gid, name)
        done = threading.Barrier(2, action=lambda: self._finish(name, conn, up))
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(
                target=_pump, args=(a, b, done), name=f"daxfs-relay-{pid}", daemon=True
            ).start()

    def _finish(self, name: str, conn: socket.socket, up: socket.socket) -> None:
        self.table.drop(name)
        conn.close()
        up.close()


def _pump(src: socket.socket, dst: socket.socket, done: threading.Barrier) -> None:
    """Copy until ``src`` ends, then end ``dst``'s writing side."""
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait()


def private_socket_dir(public_path: str) -> str:
    """A fresh 0700 directory beside the public socket for gRPC's private one."""
    import tempfile

    parent = os.path.dirname(os.path.abspath(public_path))
    return tempfile.mkdtemp(prefix=".daxfs-private-", dir=parent)
