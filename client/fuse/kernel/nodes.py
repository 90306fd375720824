"""The node table: the kernel's node ids as paths, with their lookup counts.

The kernel names a file by a node id that the daemon handed out in a LOOKUP,
CREATE, MKDIR, MKNOD, SYMLINK or LINK reply, and it counts those replies: the
daemon must remember a node until FORGET has returned as many lookups as were
given. daxfs's operations are path-based (like libfuse's high-level API), so
the table keeps each node as (parent, name), exactly as libfuse's high-level
layer does, and builds a path by walking up to the root.

Contract:
- :meth:`NodeTable.lookup` finds or creates the node for (parent, name) and
  adds one lookup; every reply that carries an entry must come from it (a
  READDIRPLUS record with a node id too).
- :meth:`NodeTable.forget` drops lookups; the node goes when none remain.
- A removed name detaches its node (:meth:`NodeTable.detach`): the node lives
  on for the kernel (an open file), but has no path any more, so path-based
  calls on it fail with ENOENT and handle-based ones (read, write, fstat)
  still work. The server keeps an unlinked file's inode while a handle is
  open, so this is libfuse's ``hard_remove`` without its ESTALE.
- Node ids are never reused (a 64-bit counter), so entry generations are 0.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from daxfs.client.fuse.kernel.protocol import ROOT_ID
from daxfs.shared.errors import NotFound


@dataclass(slots=True)
class _Node:
    """One node the kernel knows. Guarded by ``NodeTable._lock``."""

    #: The parent's node id and this node's name in it; None once detached.
    parent: int | None
    name: str | None
    #: Lookups handed out and not yet forgotten.
    lookups: int
    #: The server's inode number, once an entry reply carried it (0: unknown).
    ino: int = 0


class NodeTable:
    """Node ids to paths. Thread-safe: guarded by ``self._lock``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # guarded by self._lock
        self._nodes: dict[int, _Node] = {ROOT_ID: _Node(None, None, 1)}
        self._names: dict[tuple[int, str], int] = {}
        self._by_ino: dict[int, set[int]] = {}
        self._ids = itertools.count(ROOT_ID + 1)

    def __len__(self) -> int:
        with self._lock:
            return len(self._nodes)

    def path(self, nodeid: int) -> str | None:
        """The node's path, or None when it was detached (or an ancestor was)."""
        with self._lock:
            return self._path(nodeid)

    def _path(self, nodeid: int) -> str | None:
        parts: list[str] = []
        while nodeid != ROOT_ID:
            node = self._nodes.get(nodeid)
            if node is None or node.parent is None or node.name is None:
                return None
            parts.append(node.name)
            nodeid = node.parent
        return "/" + "/".join(reversed(parts))

    def child(self, parent: int, name: str) -> str:
        """The path of ``name`` in directory ``parent``; NotFound if the directory is gone."""
        base = self.path(parent)
        if base is None:
            raise NotFound(f"directory node {parent} has no path (removed)")
        return f"{base.rstrip('/')}/{name}"

    def lookup(self, parent: int, name: str) -> int:
        """The node of (parent, name), created if new, with one more lookup."""
        with self._lock:
            nodeid = self._names.get((parent, name))
            if nodeid is not None:
                self._nodes[nodeid].lookups += 1
                return nodeid
            nodeid = next(self._ids)
            self._nodes[nodeid] = _Node(parent, name, 1)
            self._names[(parent, name)] = nodeid
            return nodeid

    def find(self, parent: int, name: str) -> int | None:
        """The node of (parent, name) if the kernel holds one (no lookup added)."""
        with self._lock:
            return self._names.get((parent, name))

    def forget(self, nodeid: int, count: int) -> None:
        """The kernel dropped ``count`` lookups of ``nodeid``."""
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None or nodeid == ROOT_ID:
                return
            node.lookups -= count
            if node.lookups > 0:
                return
            del self._nodes[nodeid]
            self._unlink_ino(nodeid, node.ino)
            if node.parent is not None and node.name is not None:
                key = (node.parent, node.name)
                if self._names.get(key) == nodeid:
                    del self._names[key]

    def set_ino(self, nodeid: int, ino: int) -> None:
        """The server's inode number of ``nodeid`` (from an entry or attribute reply)."""
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None or node.ino == ino or not ino:
                return
            self._unlink_ino(nodeid, node.ino)
            node.ino = ino
            self._by_ino.setdefault(ino, set()).add(nodeid)

    def _unlink_ino(self, nodeid: int, ino: int) -> None:
        nodes = self._by_ino.get(ino)
        if nodes is not None:
            nodes.discard(nodeid)
            if not nodes:
                del self._by_ino[ino]

    def nodes_of(self, ino: int) -> list[int]:
        """The nodes the kernel knows for server inode ``ino`` (hard links: several)."""
        with self._lock:
            return sorted(self._by_ino.get(ino, ()))

    def entry_of(self, path: str) -> tuple[int, str, int | None] | None:
        """(parent node, name, node or None) of ``path`` as the kernel knows it, if it does.

        None when the kernel knows no node for the parent directory (then it
        caches nothing under it either). The root has no entry.
        """
        parts = [p for p in path.split("/") if p]
        if not parts:
            return None
        with self._lock:
            parent = ROOT_ID
            for name in parts[:-1]:
                child = self._names.get((parent, name))
                if child is None:
                    return None
                parent = child
            return parent, parts[-1], self._names.get((parent, parts[-1]))

    def known(self) -> list[tuple[int, int | None, str | None]]:
        """Every node: (node, parent, name); for dropping everything the kernel caches."""
        with self._lock:
            return [(n, node.parent, node.name) for n, node in self._nodes.items()]

    def detach(self, parent: int, name: str) -> None:
        """(parent, name) was removed: its node, if any, keeps its id but loses its path."""
        with self._lock:
            self._detach(parent, name)

    def _detach(self, parent: int, name: str) -> None:
        nodeid = self._names.pop((parent, name), None)
        if nodeid is not None:
            node = self._nodes[nodeid]
            node.parent = node.name = None

    def rename(
        self, parent: int, name: str, new_parent: int, new_name: str, exchange: bool
    ) -> None:
        """(parent, name) moved to (new_parent, new_name); with ``exchange`` the two swapped."""
        with self._lock:
            moved = self._names.pop((parent, name), None)
            if exchange:
                other = self._names.pop((new_parent, new_name), None)
                if other is not None:
                    self._names[(parent, name)] = other
                    self._nodes[other].parent, self._nodes[other].name = parent, name
            else:
                self._detach(new_parent, new_name)  # the replaced file, if any
            if moved is not None:
                self._names[(new_parent, new_name)] = moved
                self._nodes[moved].parent, self._nodes[moved].name = new_parent, new_name
