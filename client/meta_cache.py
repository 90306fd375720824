"""The client's metadata cache: answers the server may take back (server/cache_grants.py).

A ``GetAttr``/``Lookup`` answer by path (attributes, or the error, such as
ENOENT) is kept per path and caller identity, and served again without a
round trip while the cache is *open*: the session stream is attached (a
``Renewed`` came on it) and the lease is valid. The server tells this client,
before another client's change returns, what the change made stale
(``Invalidate``: inodes, and paths to drop at and under); the reply to this
client's own change says the same in its trailing metadata.

Races are settled by one counter, ``epoch``, moved by every invalidation, by
closing and by opening: an answer is kept only if the epoch did not move
between sending its request and receiving it (an invalidation may overtake the
reply it concerns, as a recall may overtake a layout). Everything else is a
plain dictionary under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from daxfs.shared.attr import Attr
from daxfs.shared.errors import DaxfsError, NoData
from daxfs.shared.permissions import Identity

#: Whom an answer was given to: path, uid, gid, groups (the server checks permissions).
Key = tuple[str, int, int, tuple[int, ...]]

#: Extended attribute namespaces the server reads without a permission check
#: (server/namespace.py ``_may_xattr``): a missing one is ENODATA for anyone.
_UNCHECKED = ("security.", "system.posix_acl_access", "system.posix_acl_default")

#: Answers kept at most; past it the cache starts over (a working set this big
#: is better served by the kernel's cache in front of the mount).
MAX_ENTRIES = 65536


@dataclass(frozen=True, slots=True)
class Answer:
    attr: Attr | None
    error: DaxfsError | None
    #: The names of the inode's extended attributes, when a listing carried them.
    xattr_names: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class XattrAnswer:
    """One extended attribute's value, or the error (ENODATA) that answered it."""

    value: bytes | None
    error: DaxfsError | None


def key_of(path: str, who: Identity) -> Key:
    return (path, who.uid, who.gid, tuple(who.groups))


class CacheListener(Protocol):
    """Another cache of the same answers that must drop what the client's cache drops.

    The FUSE edge registers the kernel's (``Client.cache_listeners``).
    """

    def invalidate(
        self, inos: Iterable[int], paths: Iterable[str], done: Callable[[], None]
    ) -> None:
        """Another guest's change: drop, then call ``done`` (once), which
        acknowledges it to the server; the change returns to its caller then."""

    def invalidate_own(self, inos: Iterable[int]) -> None:
        """This client's own change to ``inos``, made through the listener's front
        end, which took the new state from the reply (the kernel does): drop only
        what the front end cannot have updated itself. Returns at once."""

    def invalidate_all(self) -> None:
        """Drop everything (stream down, new session, a change too long to name)."""


def after_all(n: int, done: Callable[[], None]) -> Callable[[], None]:
    """A callback that calls ``done`` at its ``n``-th call (every listener dropped)."""
    lock = threading.Lock()
    left = [n]

    def one() -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            done()

    return one


class MetaCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[Key, Answer] = {}  # guarded by _lock
        self._by_ino: dict[int, set[Key]] = {}  # guarded by _lock
        #: Extended attributes by name, kept beside the attributes of the same
        #: key and dropped with them (the server changes the inode's attributes
        #: with every xattr change, so the same invalidation names both).
        self._xattrs: dict[Key, dict[str, XattrAnswer]] = {}  # guarded by _lock
        self._open = False  # guarded by _lock
        self.epoch = 0
        """Moves on every invalidation, close and open (read without the lock: an int)."""
        self.hits = 0
        self.invalidations = 0

    def get(self, key: Key) -> Answer | None:
        with self._lock:
            if not self._open:
                return None
            answer = self._answers.get(key)
        if answer is not None:
            self.hits += 1
        return answer

    def put(self, key: Key, answer: Answer, epoch: int) -> None:
        """Keep ``answer`` unless the cache moved since its request was sent at ``epoch``."""
        with self._lock:
            if not self._open or epoch != self.epoch:
                return
            self._put(key, answer)

    def put_many(self, answers: Iterable[tuple[Key, Answer]], epoch: int) -> None:
        """:meth:`put` for a directory listing's entries (asked at ``epoch``)."""
        with self._lock:
            if not self._open or epoch != self.epoch:
                return
            for key, answer in answers:
                self._put(key, answer)

    def _put(self, key: Key, answer: Answer) -> None:
        if len(self._answers) >= MAX_ENTRIES:
            self._answers.clear()
            self._by_ino.clear()
            self._xattrs.clear()
        old = self._answers.get(key)
        if old is not None and (old.attr is None or old.attr != answer.attr):
            self._drop(key)  # and the xattrs kept beside it
        elif old is not None and answer.xattr_names is None:
            answer = Answer(answer.attr, answer.error, old.xattr_names)
        self._answers[key] = answer
        if answer.attr is not None:
            self._by_ino.setdefault(int(answer.attr.ino), set()).add(key)

    def get_xattr(self, key: Key, name: str) -> XattrAnswer | None:
        """The answer kept for ``name``; or ENODATA when the listing that gave the
        attributes named the inode's xattrs without it and no permission
        decides the answer (``security.*``, the POSIX ACLs)."""
        with self._lock:
            if not self._open:
                return None
            answer = self._xattrs.get(key, {}).get(name)
            if answer is None and name.startswith(_UNCHECKED):
                held = self._answers.get(key)
                names = None if held is None else held.xattr_names
                if names is not None and name not in names:
                    answer = XattrAnswer(None, NoData(f"no attribute {name!r}"))
        if answer is not None:
            self.hits += 1
        return answer

    def put_xattr(self, key: Key, name: str, answer: XattrAnswer, epoch: int) -> None:
        """Keep ``answer`` beside the attributes kept for ``key`` (it goes when they
        go; without them it is not kept), unless the cache moved since ``epoch``."""
        with self._lock:
            if not self._open or epoch != self.epoch:
                return
            held = self._answers.get(key)
            if held is None or held.attr is None:
                return
            self._xattrs.setdefault(key, {})[name] = answer

    def invalidate(self, inos: Iterable[int], paths: Iterable[str]) -> None:
        """Drop the attributes of ``inos`` and every answer at or under ``paths``."""
        with self._lock:
            self.epoch += 1
            self.invalidations += 1
            for ino in inos:
                for key in self._by_ino.pop(int(ino), ()):
                    self._answers.pop(key, None)
                    self._xattrs.pop(key, None)
            prefixes = [(p.rstrip("/") or "/", p.rstrip("/") + "/") for p in paths]
            if prefixes:
                for key in [k for k in self._answers if _under(k[0], prefixes)]:
                    self._drop(key)

    def _drop(self, key: Key) -> None:
        answer = self._answers.pop(key)
        self._xattrs.pop(key, None)
        if answer.attr is not None:
            keys = self._by_ino.get(int(answer.attr.ino))
            if keys is not None:
                keys.discard(key)

    def clear(self) -> None:
        """Drop everything, and go on caching."""
        with self._lock:
            self.epoch += 1
            self.invalidations += 1
            self._answers.clear()
            self._by_ino.clear()
            self._xattrs.clear()

    def close(self) -> None:
        """Drop everything; keep nothing until opened (stream down, lease lapsed, new session)."""
        with self._lock:
            self.epoch += 1
            self._open = False
            self._answers.clear()
            self._by_ino.clear()
            self._xattrs.clear()

    def open(self) -> None:
        """The session stream is attached (the server reset our grants): cache from now on."""
        with self._lock:
            self.epoch += 1
            self._open = True

    @property
    def is_open(self) -> bool:
        return self._open

    def __len__(self) -> int:
        return len(self._answers)


def _under(path: str, prefixes: list[tuple[str, str]]) -> bool:
    return any(path == exact or path.startswith(below) for exact, below in prefixes)
