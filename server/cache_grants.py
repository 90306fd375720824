"""Cache grants: which client may answer which metadata question from its own cache.

A client that opts in (``Hello.cache_metadata``) may keep the attributes and
name lookups the server answered, and serve them again without asking, until
the server invalidates them. This is how NFSv4 read delegations and Lustre's
lookup/attribute locks let clients cache while staying coherent:

    Once a call that changed an inode or a directory entry returns, no other
    client answers from a cache a question whose answer that call changed.

The server keeps, per opted-in session, the *keys* its answers depended on:

- ``Attr(ino)``: every attribute of an inode (the target of a stat or lookup);
- ``Perm(ino)``: the mode, owner and group of a directory the path walked
  through (search permission), nothing else, so that a directory's mtime
  changing on every create does not invalidate the paths below it;
- ``Entry(dir, name)``: one name in a directory, present or absent (a
  negative lookup is cached too);
- ``Xattrs(ino)``: the names and values of an inode's extended attributes
  (what a getxattr, a listing's or a create's ``xattr_names`` answered).
  Every xattr change touches ``Attr(ino)`` too (the ctime), but a change of
  the attributes alone leaves this key alone: a client whose own write,
  commit or setattr ended its ``Attr(ino)`` keeps what it knows of the
  xattrs (``Namespace._invalidate``: the reply's trailer says so);
- ``Names(dir)``: every name of a directory, so that its holder answers
  "no such name" for any name it does not list, without asking. A change of
  any ``Entry(dir, name)`` takes it back, and is sent to its holder as that
  entry (the path ``dir/name``: the client drops its listing of ``dir`` and
  whatever it or its kernel kept at that path).

A call's own reply is granted too (create, mkdir, mknod, symlink, link,
setattr, a listing): the namespace records the keys it depended on after the
commit's invalidations are out, under the same lock, so no change can come in
between the state the reply describes and the grant (``Namespace._txn``).

A committed change touches keys (``daxfs.server.metadata`` records them as it
writes). Every *other* session holding a touched key gets an ``Invalidate``
on its session stream, naming the inodes and the paths to drop, and the call
does not return until each has acknowledged, or until the lease it held when
the invalidation was sent has run out: a client serves from its cache only
while its lease is valid on its own clock, which ends before the server's
deadline. The caller's own cached answers are named in the reply's trailing
metadata instead (``daxfs-invalidated-bin``), so it drops them before the call
returns to it. A client drops its whole cache whenever its session stream
ends or its lease lapses, before anything else, so a reattaching stream
acknowledges everything outstanding. Grants end with the invalidation that
names them: the client asks again, and the answer grants again.

Pure bookkeeping: no I/O, no clock of its own. Callers hold the namespace lock.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Self

from daxfs.shared.extent import ClientId, InodeId

# The keys are immutable values like the dataclasses elsewhere, but tuples
# underneath: a call hashes and compares a few dozen of them (its walk's
# grants, what it touched, the revocations), and a tuple does both in C where
# a dataclass runs its generated ``__hash__`` and ``__eq__`` in Python. Each
# kind's first item is its own tag, so keys of different kinds never compare
# equal (``Attr(5) != Perm(5)``).


class _OneInode(tuple[int, InodeId]):
    """A key naming one inode: (its kind's tag, the inode)."""

    __slots__ = ()
    #: The kind's tag, its first item (unique per kind).
    _TAG: ClassVar[int]
    #: What the inode is to the key, in its repr ("ino", "dir").
    _FIELD: ClassVar[str] = "ino"

    def __new__(cls, ino: InodeId) -> Self:
        return super().__new__(cls, (cls._TAG, ino))

    def __getnewargs__(self) -> tuple[InodeId]:
        return (self[1],)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._FIELD}={self[1]!r})"


class _OfInode(_OneInode):
    __slots__ = ()

    @property
    def ino(self) -> InodeId:
        return self[1]


class Attr(_OfInode):
    """All attributes of inode ``ino``."""

    __slots__ = ()
    _TAG = 0


class Perm(_OfInode):
    """Mode, owner and group of directory ``ino`` (what a path walk checks)."""

    __slots__ = ()
    _TAG = 1


class Entry(tuple[int, InodeId, str]):
    """The name ``name`` in directory ``dir``: which inode it names, or that it is absent."""

    __slots__ = ()

    def __new__(cls, dir: InodeId, name: str) -> Entry:
        return super().__new__(cls, (2, dir, name))

    def __getnewargs__(self) -> tuple[InodeId, str]:
        return (self[1], self[2])

    @property
    def dir(self) -> InodeId:
        return self[1]

    @property
    def name(self) -> str:
        return self[2]

    def __repr__(self) -> str:
        return f"Entry(dir={self[1]!r}, name={self[2]!r})"


class Xattrs(_OfInode):
    """The extended attributes of inode ``ino``: which names it has, and their values."""

    __slots__ = ()
    _TAG = 3


class Names(_OneInode):
    """Every name in directory ``dir``: its holder knows a name it does not list is absent."""

    __slots__ = ()
    _TAG = 4
    _FIELD = "dir"

    @property
    def dir(self) -> InodeId:
        return self[1]


Key = Attr | Perm | Entry | Names | Xattrs


@dataclass(frozen=True, slots=True)
class Invalidation:
    """What one client must drop: attributes of ``inos``, answers at or under ``paths``."""

    id: int
    inos: tuple[InodeId, ...]
    paths: tuple[str, ...]


@dataclass(slots=True)
class Outstanding:
    """An invalidation sent and not yet acknowledged."""

    invalidation: Invalidation
    client: ClientId
    until_ns: int
    """The client's lease deadline when it was sent: waiting ends there at the latest."""


@dataclass(slots=True)
class CacheGrants:
    _clients: set[ClientId] = field(default_factory=set)
    """Sessions that cache (said so in Hello)."""
    _holders: dict[Key, set[ClientId]] = field(default_factory=dict)
    _held: dict[ClientId, set[Key]] = field(default_factory=dict)
    _outstanding: dict[int, Outstanding] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def enable(self, client: ClientId) -> None:
        self._clients.add(client)

    def caches(self, client: ClientId) -> bool:
        return client in self._clients

    def grant(self, client: ClientId, keys: Iterable[Key]) -> None:
        """``client`` may now answer from its cache what depends on ``keys``."""
        if client not in self._clients:
            return
        held = self._held.setdefault(client, set())
        for key in keys:
            held.add(key)
            self._holders.setdefault(key, set()).add(client)

    def holds(self, client: ClientId, key: Key) -> bool:
        return key in self._held.get(client, ())

    def holders(self, keys: Iterable[Key]) -> dict[ClientId, set[Key]]:
        """Who holds which of ``keys``; a holder of ``Names(dir)`` holds every ``Entry(dir, _)``."""
        out: dict[ClientId, set[Key]] = {}
        for key in keys:
            for client in self._holders.get(key, ()):
                out.setdefault(client, set()).add(key)
            if isinstance(key, Entry):
                for client in self._holders.get(Names(key.dir), ()):
                    out.setdefault(client, set()).add(key)
        return out

    def revoke(self, client: ClientId, keys: Iterable[Key]) -> None:
        """The grants on ``keys`` end (the client is told to drop what depends on them).

        An entry's end ends the listing of its directory too (``Names``).
        """
        held = self._held.get(client)
        ended: list[Key] = list(keys)
        ended += [Names(k.dir) for k in ended if isinstance(k, Entry)]
        for key in ended:
            if held is not None:
                held.discard(key)
            holders = self._holders.get(key)
            if holders is not None:
                holders.discard(client)
                if not holders:
                    del self._holders[key]

    def send(
        self, client: ClientId, inos: Iterable[InodeId], paths: Iterable[str], until_ns: int
    ) -> Invalidation:
        """Record an invalidation for ``client``, outstanding until acknowledged or ``until_ns``."""
        inv = Invalidation(next(self._ids), tuple(sorted(set(inos))), tuple(sorted(set(paths))))
        self._outstanding[inv.id] = Outstanding(inv, client, until_ns)
        return inv

    def done(self, client: ClientId, invalidation_id: int) -> bool:
        """The client dropped what the invalidation named; False if it was not outstanding."""
        out = self._outstanding.get(invalidation_id)
        if out is None or out.client != client:
            return False
        del self._outstanding[invalidation_id]
        return True

    def waiting(self, ids: Iterable[int], now_ns: int) -> bool:
        """True while one of ``ids`` is unacknowledged and its client's lease may still run."""
        for i in ids:
            out = self._outstanding.get(i)
            if out is not None and now_ns < out.until_ns:
                return True
        return False

    def forget(self, ids: Iterable[int]) -> None:
        """Waiting is over for ``ids`` (acknowledged, or the lease ran out)."""
        for i in ids:
            self._outstanding.pop(i, None)

    def reset(self, client: ClientId) -> None:
        """The client dropped its whole cache (its stream ended): its grants and waits end."""
        for key in self._held.pop(client, set()):
            holders = self._holders.get(key)
            if holders is not None:
                holders.discard(client)
                if not holders:
                    del self._holders[key]
        for i in [i for i, o in self._outstanding.items() if o.client == client]:
            del self._outstanding[i]

    def drop(self, client: ClientId) -> None:
        """The session ended."""
        self.reset(client)
        self._clients.discard(client)

    def outstanding(self) -> int:
        return len(self._outstanding)
