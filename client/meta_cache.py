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

A change this client makes (create, mkdir, mknod, symlink, link, setattr by
path) is granted with its reply, so the reply's attributes are kept as a
lookup's would be (:meth:`MetaCache.change` before the call, :meth:`changed`
after). Its own invalidation, in the reply's trailer, moves the epoch too:
the reply is kept only when nothing but that trailer moved it meanwhile.

That trailer takes away less than another client's invalidation does: the
answers for an inode whose attributes it moved stay as *stale* ones (they
answer no stat, but still say which inode the path names: the walk's grants
did not end), and when the server says the change left the inode's extended
attributes alone (``xattrs_kept``: this client still holds that grant) what
no permission decides of them stays too, so a file this client created
answers ``security.*`` and ACL lookups with ENODATA through its writes,
commits and setattrs.

A directory's whole listing (``Listing``: a listing's names, or a new
directory's none) answers "no such name" for any name it lacks, for a caller
that may search the directory, so a create's lookup of its new name costs no
round trip. The server grants it (``Names`` in server/cache_grants.py) and
takes it back with any change of a name in the directory, naming that name's
path: a listing goes when a path in it, or at or above it, is invalidated.
This client's own creates, removals and renames in the directory update it
instead (the server grants it again with their replies).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from daxfs.shared.attr import Attr
from daxfs.shared.errors import DaxfsError, NoData, NotFound
from daxfs.shared.limits import NAME_MAX
from daxfs.shared.permissions import X_OK, Identity, mode_allows

#: Whom an answer was given to: path, uid, gid, groups (the server checks permissions).
Key = tuple[str, int, int, tuple[int, ...]]

#: Extended attribute namespaces the server reads without a permission check
#: (server/namespace.py ``_may_xattr``): a missing one is ENODATA for anyone.
_UNCHECKED = ("security.", "system.posix_acl_access", "system.posix_acl_default")

#: Epoch moves a change's reply may look back over (:meth:`MetaCache.changed`);
#: more than this many while it was out, and it is not kept.
_MOVES_KEPT = 64

#: Answers kept at most; past it the cache starts over (a working set this big
#: is better served by the kernel's cache in front of the mount).
MAX_ENTRIES = 65536


@dataclass(frozen=True, slots=True)
class Answer:
    attr: Attr | None
    error: DaxfsError | None
    #: The names of the inode's extended attributes, when a listing or a create carried them.
    xattr_names: frozenset[str] | None = None
    #: This client's own change moved the inode's attributes since (a write's
    #: allocation, a commit, a setattr): they answer nothing any more, but the
    #: path still names ``attr.ino`` (the walk's grants did not end) and the
    #: xattr names, if kept, still hold (:meth:`MetaCache.invalidate`).
    stale: bool = False


@dataclass(frozen=True, slots=True)
class XattrAnswer:
    """One extended attribute's value, or the error (ENODATA) that answered it."""

    value: bytes | None
    error: DaxfsError | None


@dataclass(frozen=True, slots=True)
class Listing:
    """Every name of a directory, and what a search of it checks (mode, owner, group)."""

    ino: int
    mode: int
    uid: int
    gid: int
    names: frozenset[str]

    @classmethod
    def empty(cls, attr: Attr) -> Listing:
        return cls(int(attr.ino), attr.mode, attr.uid, attr.gid, frozenset())

    def with_names(self, names: frozenset[str]) -> Listing:
        """The same directory with ``names`` (as ``dataclasses.replace``, which is slower)."""
        return Listing(self.ino, self.mode, self.uid, self.gid, names)


@dataclass(frozen=True, slots=True)
class Pending:
    """A change on its way (:meth:`MetaCache.change`): what its reply may update."""

    sent: int
    """The epoch when the call went out."""
    key: Key
    """The path it changes, as its caller asked."""
    listings: tuple[tuple[Key, Listing], ...]
    """The listings of the directories it changes, as held when the call went out."""


def key_of(path: str, who: Identity) -> Key:
    return (path, who.uid, who.gid, tuple(who.groups))


#: Paths whose split, plainness and ancestors are remembered (each own change
#: asks for the same few paths four or five times: before, after, in its
#: trailer; a create + close + unlink asked 14 times per file, a quarter of the
#: cache's own CPU).
_PATHS_REMEMBERED = 4096


@functools.lru_cache(maxsize=_PATHS_REMEMBERED)
def _split(path: str) -> tuple[str, str] | None:
    """(directory, name) of a plain absolute path; None for the root or an odd path."""
    if not path.startswith("/") or path.endswith("/") or "//" in path:
        return None
    parent, _, name = path.rpartition("/")
    if (
        name in (".", "..")
        or "\0" in name
        or len(name.encode("utf-8", "surrogateescape")) > NAME_MAX
    ):
        return None
    return parent or "/", name


@functools.lru_cache(maxsize=_PATHS_REMEMBERED)
def _plain(path: str) -> bool:
    """A path whose ancestors are its prefixes up to each "/" (what the mount sends)."""
    return path == "/" or (path.startswith("/") and not path.endswith("/") and "//" not in path)


class _PathIndex:
    """Which paths the cache holds something at, and how much lies under each directory.

    Lets :meth:`MetaCache.invalidate` find what is at or under a path without
    scanning every key (every own change of a mount is one invalidation, and
    a cache holds up to MAX_ENTRIES answers). A path that is not plain
    (relative, "//", a trailing "/") has no ancestors to count: while one is
    kept, invalidation scans every key, as it always did. Guarded by the
    cache's lock.
    """

    __slots__ = ("_below", "_keys", "_odd")

    def __init__(self) -> None:
        self._keys: dict[str, set[Key]] = {}
        #: Keys kept strictly under each directory path (plain paths only).
        self._below: dict[str, int] = {}
        #: Keys kept at paths that are not plain.
        self._odd = 0

    def add(self, key: Key) -> None:
        keys = self._keys.setdefault(key[0], set())
        if key in keys:
            return
        keys.add(key)
        if not _plain(key[0]):
            self._odd += 1
            return
        below = self._below
        for d in _ancestors(key[0]):
            below[d] = below.get(d, 0) + 1

    def remove(self, key: Key) -> None:
        keys = self._keys.get(key[0])
        if keys is None or key not in keys:
            return
        keys.discard(key)
        if not keys:
            del self._keys[key[0]]
        if not _plain(key[0]):
            self._odd -= 1
            return
        below = self._below
        for d in _ancestors(key[0]):
            n = below[d] - 1
            if n:
                below[d] = n
            else:
                del below[d]

    def at(self, path: str) -> list[Key]:
        return list(self._keys.get(path, ()))

    def must_scan(self, exact: list[str]) -> bool:
        """True unless every key at or under ``exact`` is one kept at exactly such a path."""
        return bool(self._odd) or any(not _plain(p) or p in self._below for p in exact)

    def clear(self) -> None:
        self._keys.clear()
        self._below.clear()
        self._odd = 0


@functools.lru_cache(maxsize=_PATHS_REMEMBERED)
def _ancestors(path: str) -> tuple[str, ...]:
    """The directories above a plain path, the root first ("/a/b": "/", "/a")."""
    if path == "/":
        return ()
    parts = path.split("/")[1:-1]
    out = ["/"]
    at = ""
    for part in parts:
        at += "/" + part
        out.append(at)
    return tuple(out)


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
        #: Whole listings of directories, by the directory's key.
        self._listings: dict[Key, Listing] = {}  # guarded by _lock
        #: The paths of ``_answers`` and of ``_listings`` (what invalidate looks up).
        self._answer_paths = _PathIndex()  # guarded by _lock
        self._listing_paths = _PathIndex()  # guarded by _lock
        self._open = False  # guarded by _lock
        #: Per thread: the epoch move of the last own invalidation (before,
        #: after), and the epoch a change's reply was kept at.
        self._local = threading.local()
        #: The recent own invalidations of every thread, by the epoch they
        #: moved to: the inodes and paths they named (:meth:`changed`).
        self._own_moves: dict[int, tuple[frozenset[int], tuple[str, ...]]] = {}  # guarded by _lock
        self.epoch = 0
        """Moves on every invalidation, close and open (read without the lock: an int)."""
        self.hits = 0
        self.invalidations = 0

    def get(self, key: Key) -> Answer | None:
        """The answer kept for ``key``: attributes, an error, or ENOENT from the
        listing of its directory."""
        with self._lock:
            if not self._open:
                return None
            answer = self._answers.get(key)
            if answer is None:
                answer = self._absent(key)
            elif answer.stale:
                return None
        if answer is not None:
            self.hits += 1
        return answer

    def inode_at(self, key: Key) -> int | None:
        """The inode ``key``'s path names, as far as a kept answer says, even one
        whose attributes this client's own change made stale (which inode a
        path names depends on the walk's grants, which that change left)."""
        with self._lock:
            if not self._open:
                return None
            answer = self._answers.get(key)
            return None if answer is None or answer.attr is None else int(answer.attr.ino)

    def _absent(self, key: Key) -> Answer | None:
        where = _split(key[0])
        if where is None:
            return None
        listing = self._listings.get((where[0], *key[1:]))
        if listing is None or where[1] in listing.names:
            return None
        _, uid, gid, groups = key
        if not mode_allows(listing.mode, listing.uid, listing.gid, uid, gid, groups, X_OK):
            return None  # the server says which error
        return Answer(None, NotFound(f"no such file or directory: {where[1]!r}"))

    def listing(self, key: Key) -> Listing | None:
        with self._lock:
            return self._listings.get(key) if self._open else None

    def put_listing(self, key: Key, listing: Listing, epoch: int) -> None:
        """Keep a directory's whole listing, unless the cache moved since ``epoch``."""
        with self._lock:
            if self._open and epoch == self.epoch:
                self._listings[key] = listing
                self._listing_paths.add(key)

    def by_ino(self, ino: int) -> Attr | None:
        """The attributes kept for inode ``ino`` under any name (fstat of an open file)."""
        with self._lock:
            if not self._open:
                return None
            for key in self._by_ino.get(int(ino), ()):
                answer = self._answers.get(key)
                if answer is not None and answer.attr is not None and not answer.stale:
                    self.hits += 1
                    return answer.attr
        return None

    # -- this client's own changes -----------------------------------------------

    def change(self, key: Key, *others: str) -> Pending:
        """Before a change of ``key``'s path (and of the paths ``others``, for the
        same caller: a rename's old name) whose reply the server grants."""
        self._local.own = None
        self._local.kept = None  # an earlier change's: not this one's
        with self._lock:
            held: dict[Key, Listing] = {}
            for path in (key[0], *others):
                where = _split(path)
                dir_key = None if where is None else (where[0], *key[1:])
                listing = None if dir_key is None else self._listings.get(dir_key)
                if dir_key is not None and listing is not None:
                    held[dir_key] = listing
            return Pending(self.epoch, key, tuple(held.items()))

    def changed(
        self,
        pending: Pending,
        attr: Attr | None,
        *,
        added: Iterable[str] = (),
        removed: Iterable[str] = (),
        made_dir: bool = False,
        xattr_names: frozenset[str] | None = None,
    ) -> bool:
        """The change's reply: keep its attributes, if it has them, for its path
        (with ``xattr_names``, a create's: the file's extended attribute names);
        the listings held when it went out with the paths ``removed`` gone and
        ``added`` in (the server granted them again: its own change did not end
        them); with ``made_dir``, the new directory's empty listing. Unless
        something other than its own invalidation moved the cache since it
        went out. True when kept (:meth:`take_kept` says at which epoch)."""
        own: tuple[int, int] | None = getattr(self._local, "own", None)
        self._local.own = None
        with self._lock:
            if not self._open or not self._only_own_moves(pending, own, attr):
                return False
            if attr is not None:
                self._put(pending.key, Answer(attr, None, xattr_names))
            listings = dict(pending.listings)
            for path, add in [(p, False) for p in removed] + [(p, True) for p in added]:
                where = _split(path)
                dir_key = None if where is None else (where[0], *pending.key[1:])
                if where is not None and dir_key in listings:
                    was = listings[dir_key]
                    names = was.names | {where[1]} if add else was.names - {where[1]}
                    listings[dir_key] = was.with_names(names)
            self._listings.update(listings)
            for dir_key in listings:
                self._listing_paths.add(dir_key)
            if made_dir and attr is not None:
                self._listings[pending.key] = Listing.empty(attr)
                self._listing_paths.add(pending.key)
            self._local.kept = self.epoch
            return True

    def _only_own_moves(
        self, pending: Pending, own: tuple[int, int] | None, attr: Attr | None
    ) -> bool:
        """Whether every epoch move since ``pending`` went out leaves its reply
        true: this call's own trailer (``own``), or another thread's trailer
        (this client's Release of another file, say) naming nothing the reply
        depends on. Guarded by the caller holding ``self._lock``.

        Another thread's own change either committed before this one (the
        reply describes the state after it: its trailer only drops older
        answers) or after it; then every key of this reply it touched was
        held already (granted with this reply, after this change's commit),
        so its trailer names it: the reply's inode, its path or one above
        it, or a name in a directory whose listing this reply updates. A
        trailer naming none of those changed nothing the reply says.
        Anything else that moved the epoch (another client's invalidation,
        a clear, the stream going down) is not known to be harmless.
        """
        first, last = pending.sent, self.epoch
        if last - first > _MOVES_KEPT:
            return False
        dirs = {k[0] for k, _ in pending.listings}
        parents = dirs | {pending.key[0]}  # and a new directory's (empty) listing
        for epoch in range(first + 1, last + 1):
            if own is not None and epoch == own[1]:
                continue
            move = self._own_moves.get(epoch)
            if move is None:
                return False
            inos, paths = move
            if attr is not None and int(attr.ino) in inos:
                return False
            prefixes = [(p.rstrip("/") or "/", p.rstrip("/") + "/") for p in paths]
            if _under(pending.key[0], prefixes) or any(_under(d, prefixes) for d in dirs):
                return False
            for path in paths:
                where = _split(path.rstrip("/") or "/")
                if where is not None and where[0] in parents:
                    return False
        return True

    def take_kept(self) -> int | None:
        """The epoch this thread's last kept change was kept at (once), else None."""
        kept: int | None = getattr(self._local, "kept", None)
        self._local.kept = None
        return kept

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
            self._forget_all()
        old = self._answers.get(key)
        if old is not None and not _same_inode(old, answer):
            self._drop(key)  # and the xattrs kept beside it
        elif old is not None and answer.xattr_names is None:
            # What is kept of the xattrs stays: the grant they hold by
            # (Xattrs(ino) on the server) did not end, or an invalidation
            # naming the inode would have dropped them (and, coming before
            # this answer, moved the epoch its caller checked).
            answer = Answer(answer.attr, answer.error, old.xattr_names)
        self._answers[key] = answer
        self._answer_paths.add(key)
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

    def invalidate(
        self,
        inos: Iterable[int],
        paths: Iterable[str],
        *,
        own: bool = False,
        xattrs_kept: Iterable[int] = (),
    ) -> None:
        """Drop the attributes of ``inos`` and every answer at or under ``paths``,
        and the listings of the directories holding ``paths``. ``own``: the
        trailer of this thread's call (:meth:`changed` tells it apart); its
        answers for ``inos`` stay as stale ones (:attr:`Answer.stale`: which
        inode the path names), and for ``xattrs_kept`` with what no
        permission decides of their xattrs (the names, the values of
        ``security.*`` and the POSIX ACLs; the others may depend on the mode
        the change moved)."""
        paths = list(paths)
        with self._lock:
            before = self.epoch
            self.epoch += 1
            if own:
                self._local.own = (before, self.epoch)
                self._own_moves[self.epoch] = (frozenset(int(i) for i in inos), tuple(paths))
                if len(self._own_moves) > 2 * _MOVES_KEPT:
                    floor = self.epoch - _MOVES_KEPT
                    self._own_moves = {e: m for e, m in self._own_moves.items() if e > floor}
            self.invalidations += 1
            kept = {int(i) for i in xattrs_kept} if own else set()
            for ino in inos:
                if own:
                    self._stale(int(ino), int(ino) in kept)
                    continue
                for key in self._by_ino.pop(int(ino), ()):
                    if self._answers.pop(key, None) is not None:
                        self._answer_paths.remove(key)
                    self._xattrs.pop(key, None)
            prefixes = [(p.rstrip("/") or "/", p.rstrip("/") + "/") for p in paths]
            if prefixes:
                exact = [e for e, _ in prefixes]
                # By the path index; every key only when something lies under
                # one of the paths (a directory's) or a path is not plain.
                if self._answer_paths.must_scan(exact):
                    gone = [k for k in self._answers if _under(k[0], prefixes)]
                else:
                    gone = [k for e in exact for k in self._answer_paths.at(e)]
                for key in gone:
                    if key in self._answers:
                        self._drop(key)
                dirs = {w[0] for p in paths if (w := _split(p.rstrip("/") or "/")) is not None}
                if self._listing_paths.must_scan(exact):
                    gone = [k for k in self._listings if k[0] in dirs or _under(k[0], prefixes)]
                else:
                    gone = [k for d in (*exact, *dirs) for k in self._listing_paths.at(d)]
                for key in gone:
                    if self._listings.pop(key, None) is not None:
                        self._listing_paths.remove(key)

    def _stale(self, ino: int, keep_xattrs: bool) -> None:
        """Own change of inode ``ino``: its answers stay as stale ones.

        Never more than was held: a trailer only takes away. An invalidation
        on the session stream for the same inode (another client's xattr
        change, say) drops everything whether it comes before this trailer
        or after it; before, there is nothing left here to keep (and the
        server, which revoked our Xattrs(ino) then, did not list the inode
        as kept); after, it drops what this kept.
        """
        for key in self._by_ino.get(ino, ()):
            answer = self._answers.get(key)
            if answer is None:
                continue
            names = answer.xattr_names if keep_xattrs else None
            self._answers[key] = Answer(answer.attr, answer.error, names, stale=True)
            xattrs = self._xattrs.pop(key, None)
            if keep_xattrs and xattrs:
                unchecked = {n: a for n, a in xattrs.items() if n.startswith(_UNCHECKED)}
                if unchecked:
                    self._xattrs[key] = unchecked

    def _drop(self, key: Key) -> None:
        answer = self._answers.pop(key)
        self._answer_paths.remove(key)
        self._xattrs.pop(key, None)
        if answer.attr is not None:
            keys = self._by_ino.get(int(answer.attr.ino))
            if keys is not None:
                keys.discard(key)

    def clear(self, *, own: bool = False) -> None:
        """Drop everything, and go on caching (``own``: as for :meth:`invalidate`)."""
        with self._lock:
            before = self.epoch
            self.epoch += 1
            if own:
                self._local.own = (before, self.epoch)
            self.invalidations += 1
            self._forget_all()

    def close(self) -> None:
        """Drop everything; keep nothing until opened (stream down, lease lapsed, new session)."""
        with self._lock:
            self.epoch += 1
            self._open = False
            self._forget_all()

    def _forget_all(self) -> None:
        self._answers.clear()
        self._by_ino.clear()
        self._xattrs.clear()
        self._listings.clear()
        self._answer_paths.clear()
        self._listing_paths.clear()

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


def _same_inode(old: Answer, new: Answer) -> bool:
    """Whether ``new`` may replace ``old`` and keep what is kept beside it: the
    same attributes, or a stale answer's inode (its attributes moved by this
    client's own change, and ``new`` says what they are now)."""
    if old.attr is None or new.attr is None:
        return False
    if old.attr == new.attr:
        return True
    return old.stale and (old.attr.ino, old.attr.generation) == (
        new.attr.ino,
        new.attr.generation,
    )


def _under(path: str, prefixes: list[tuple[str, str]]) -> bool:
    return any(path == exact or path.startswith(below) for exact, below in prefixes)
