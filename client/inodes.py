"""What one client knows of each file it has open, shared by all its open files of that file.

A client may hold one file open many times: the FUSE mount opens it once per
open(2), a program may hold several :class:`~daxfs.client.daxfile.DaxFile`
objects. What the client knows of the file is the same for every one of them,
so it is kept here once per inode, not per open file:

- **size**: the size as this client sees it, its own writes past EOF
  included (bytes). Every open file reads up to it, appends at it, seeks
  from it and reports it; so does ``Client.stat``.
- **published**: the size the server has as far as this client knows (its
  last CommitLayout, truncate, fallocate, open or GetAttr). Invariant:
  ``published <= size``; ``size > published`` is growth the next flush,
  fsync or close publishes (through any open file of the inode that may
  write). A truncate through any open file, or by path, publishes first.
- **epoch**: the layout recalls of the file that ``size`` reflects. A recall
  means some client freed part of the file (a truncate, a punched hole):
  once the client has received more recalls of it than ``epoch``
  (:meth:`Inodes.recall_count`), the size must be learnt from the server
  again, once for the inode (one GetAttr), not once per open file.
- **written**: the byte ranges written since the last fsync, for an fsync
  that makes only those durable (the FUSE mount's).
- mode and gid as last seen: a write by anyone but root clears the set-id bits.

The module is state only: it makes no RPC and knows no transport.
``DaxFile`` and ``Client`` (daxfile.py, library.py) make the calls and report
their results here. The table is per session: when the server ends the
session, files opened before keep their (void) inode and new opens start a
fresh one.
"""

from __future__ import annotations

import itertools
import stat
import threading
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, replace
from operator import attrgetter

from daxfs.shared.attr import Attr
from daxfs.shared.extent import InodeId
from daxfs.shared.permissions import Identity

#: Written ranges kept per inode before they are merged into one covering span
#: (bounds the bookkeeping; fsync then persists the span).
MAX_WRITTEN_SPANS = 256


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes [start, end) of a file."""

    start: int
    end: int


_SPAN_START = attrgetter("start")


@dataclass(frozen=True, slots=True)
class Publication:
    """What one CommitLayout must tell the server (:meth:`Inode.to_publish`)."""

    new_size: int | None
    """The size to publish (bytes), or None: the server's is not smaller; mtime only."""
    size: int
    """The size the inode had when planned: published once the call succeeds."""
    version: int
    """The inode's change count then: if nothing changed since, the inode is clean after."""


class Inode:
    """One file as this client knows it. Thread-safe: fields guarded by ``self._lock``.

    ``publishing`` serialises, per inode, the calls that publish through an
    open file or end one that may write (CommitLayout, and the removal of a
    writer before its Release), so a publish on behalf of the whole inode
    (a truncate by path) always finds a writer the server still knows. It is
    held across that one RPC; never take it while holding ``_lock``.
    ``appending`` serialises appends through this client, so that two never
    start at the same end.
    """

    __slots__ = (
        "_dirty",
        "_lock",
        "_version",
        "_written",
        "appending",
        "epoch",
        "gid",
        "ino",
        "mode",
        "on_change",
        "opens",
        "published",
        "publishing",
        "session",
        "size",
        "writers",
    )

    def __init__(self, attr: Attr, *, epoch: int, session: int, opens: int = 0) -> None:
        self.ino = InodeId(attr.ino)
        #: The client's session this inode belongs to (``Client.session_epoch``).
        self.session = session
        self._lock = threading.Lock()
        self.publishing = threading.Lock()
        self.appending = threading.Lock()
        #: Bytes, as this client sees the file (unpublished growth included).
        self.size = attr.size
        #: Bytes, the server's size as far as this client knows; <= size.
        self.published = attr.size
        #: Recalls of this file that ``size`` reflects.
        self.epoch = epoch
        #: st_mode and st_gid as last seen.
        self.mode = attr.mode
        self.gid = attr.gid
        #: Open files of this client on the inode (in this session).
        self.opens = opens
        #: Server handles of those that may write (CommitLayout goes through one);
        #: changed under ``_lock``, removed only with ``publishing`` held too.
        self.writers: set[int] = set()
        #: Written since the last publication (the server sets mtime at CommitLayout).
        self._dirty = False
        #: Ranges written since the last fsync, sorted and disjoint.
        self._written: list[Span] = []
        #: Moves at every change of the size model (a publication or a refresh
        #: that raced with one keeps what changed meanwhile).
        self._version = 0
        #: Called (under ``_lock``) after ``size`` or ``mode`` changed: a copy of
        #: them taken elsewhere (the mount's compiled data path) must be dropped.
        self.on_change: Callable[[], None] | None = None

    # -- writes ----------------------------------------------------------------

    def wrote(self, start: int, end: int) -> None:
        """Bytes [start, end) were stored through an open file of this client."""
        with self._lock:
            self._version += 1
            if end > self.size:
                self.size = end
                self._notify_change()
            self._mark_written(start, end)

    def overwrote(self, start: int, end: int) -> None:
        """Bytes [start, end) were stored, and the size was not to change (a
        compiled copy path's writes, taken after the fact: a truncate since
        then may have cut them, so they are clipped to the size)."""
        with self._lock:
            end = min(end, self.size)
            if start >= end:
                return
            self._version += 1
            self._mark_written(start, end)

    def _mark_written(self, start: int, end: int) -> None:
        """Dirty (mtime at the next publication), and [start, end) for the next fsync."""
        self._dirty = True
        if not _covered(self._written, start, end):
            self._written = _merged(self._written, Span(start, end))

    def grew(self, size: int) -> None:
        """A view was made over [0, size): the file is at least that large now."""
        with self._lock:
            if size > self.size:
                self._version += 1
                self._dirty = True
                self.size = size
                self._notify_change()

    def _notify_change(self, before: int | None = None) -> None:
        """Tell ``on_change``: the size (or the mode) moved; with ``before``, only
        if the size is not ``before`` any more (a GetAttr of an open file
        confirms the size mostly, and each call drops every copy)."""
        if self.on_change is not None and (before is None or before != self.size):
            self.on_change()

    # -- publishing ------------------------------------------------------------

    def to_publish(self) -> Publication | None:
        """What a CommitLayout must say now, or None if the server knows everything."""
        with self._lock:
            if not self._dirty and self.size <= self.published:
                return None
            grows = self.size > self.published
            return Publication(self.size if grows else None, self.size, self._version)

    def published_as(self, done: Publication) -> None:
        """The CommitLayout planned as ``done`` succeeded."""
        with self._lock:
            if self._version == done.version:
                self._dirty = False
            self._version += 1
            self.published = min(max(self.published, done.size), self.size)

    def lost(self) -> None:
        """The session ended before the growth was published: it is gone."""
        with self._lock:
            self._version += 1
            self._dirty = False
            before, self.size = self.size, self.published
            self._notify_change(before)

    # -- what the server said --------------------------------------------------

    def truncated(self, size: int) -> None:
        """The server's size became ``size`` through this client (truncate, O_TRUNC)."""
        with self._lock:
            self._version += 1
            before, self.size = self.size, size
            self.published = size
            self._notify_change(before)
            self._written = [
                Span(s.start, min(s.end, size)) for s in self._written if s.start < size
            ]

    def allocated(self, server_size: int) -> None:
        """A fallocate through this client left the server's size at ``server_size``."""
        with self._lock:
            self._version += 1
            self.published = server_size
            before, self.size = self.size, max(self.size, server_size)
            self._notify_change(before)

    def learn(self, server_size: int) -> None:
        """The server reported ``server_size`` (an open, a GetAttr) and no recall is pending.

        While this client has growth to publish its size wins (the larger of
        the two); otherwise the server's does, so a truncate by another guest
        shows.
        """
        with self._lock:
            self._version += 1
            before = self.size
            self.size = max(self.size, server_size) if self.size > self.published else server_size
            self.published = server_size
            self._notify_change(before)

    def unsure(self) -> None:
        """The size may be stale (a recall overtook the reply it came with): learn it again."""
        with self._lock:
            self.epoch = -1

    def stale(self, recalls: int) -> bool:
        """True when recalls the size does not reflect arrived (``recalls``: the count now)."""
        with self._lock:
            return recalls != self.epoch

    def version(self) -> int:
        """The change count, taken before a GetAttr whose answer :meth:`refreshed` applies."""
        with self._lock:
            return self._version

    def refreshed(self, server_size: int, epoch: int, version: int) -> None:
        """A GetAttr sent after ``epoch`` recalls (and at change count ``version``) answered.

        The server's size is the truth after a recall: another client freed part
        of the file, and growth not published here is dropped (as the server
        never saw it). Growth made while the GetAttr was in flight is kept.
        """
        with self._lock:
            before = self.size
            if self._version == version:
                self.size = server_size
            else:
                self.size = max(self.size, server_size)
            self._version += 1
            self.published = server_size
            self._notify_change(before)
            self.epoch = max(self.epoch, epoch)

    def add_writer(self, handle: int) -> None:
        with self._lock:
            self.writers.add(handle)

    def drop_writer(self, handle: int) -> None:
        """No publication on behalf of the inode goes through ``handle`` from now (call with
        ``publishing`` held, before the handle's Release)."""
        with self._lock:
            self.writers.discard(handle)

    def any_writer(self) -> int | None:
        """A server handle to publish through (call with ``publishing`` held), or None."""
        with self._lock:
            return min(self.writers, default=None)

    def saw(self, attr: Attr) -> None:
        """Mode and group as the server reported them (a set-id bit may be gone)."""
        with self._lock:
            changed = attr.mode != self.mode
            self.mode, self.gid = attr.mode, attr.gid
            if changed:
                self._notify_change()  # a copy took the set-id bits into account

    # -- fsync -----------------------------------------------------------------

    def take_written(self) -> list[Span]:
        """The ranges written since the last fsync, forgotten here (put back on failure)."""
        with self._lock:
            spans, self._written = self._written, []
            return [Span(s.start, min(s.end, self.size)) for s in spans if s.start < self.size]

    def put_back(self, spans: list[Span]) -> None:
        with self._lock:
            for span in spans:
                self._written = _merged(self._written, span)

    # -- set-id bits -------------------------------------------------------------

    def setid_to_clear(self, writer: Identity) -> int:
        """The set-id bits a write by ``writer`` clears, as Linux does (0 for none).

        S_ISUID goes; S_ISGID goes too when group execute is set or the
        writer is not in the file's group (setattr_should_drop_sgid). Root
        clears nothing.
        """
        with self._lock:
            mode, gid = self.mode, self.gid
        if writer.uid == 0 or not mode & (stat.S_ISUID | stat.S_ISGID):
            return 0
        kill = mode & stat.S_ISUID
        in_group = gid == writer.gid or gid in writer.groups
        if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not in_group):
            kill |= stat.S_ISGID
        return kill

    def has_setid(self) -> bool:
        with self._lock:
            return bool(self.mode & (stat.S_ISUID | stat.S_ISGID))


def _covered(spans: list[Span], start: int, end: int) -> bool:
    """Whether one of the sorted, disjoint ``spans`` holds [start, end) (a rewrite:
    every 4 KiB write through the mount asks, and most change nothing)."""
    i = bisect_right(spans, start, key=_SPAN_START) - 1
    return i >= 0 and spans[i].end >= end


def _merged(spans: list[Span], new: Span) -> list[Span]:
    start, end = new.start, new.end
    out: list[Span] = []
    for s in spans:
        if s.end < start or s.start > end:
            out.append(s)
        else:
            start, end = min(s.start, start), max(s.end, end)
    out.append(Span(start, end))
    out.sort(key=lambda s: s.start)
    if len(out) > MAX_WRITTEN_SPANS:
        out = [Span(out[0].start, out[-1].end)]
    return out


class Inodes:
    """The inodes one client has open, and the recalls it received per file. Thread-safe.

    The table is guarded by ``self._lock`` (taken after the client's own lock,
    never before an inode's ``publishing``). ``recalls`` is written by the
    session stream under the fence's exclusive lock and read without a lock
    (a counter that only grows: a stale read costs one refresh later).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[InodeId, Inode] = {}
        self._recalls: dict[InodeId, int] = {}
        self._recalled = itertools.count(1)
        #: Recalls received so far, all files (a GetAttr's answer that raced with
        #: one does not stand for the size after it).
        self.recalls_total = 0
        #: Given to each inode this table opens (``Inode.on_change``).
        self.on_change: Callable[[], None] | None = None

    # -- recalls ---------------------------------------------------------------

    def recalled(self, ino: InodeId) -> None:
        """A recall of ``ino`` arrived (call under the fence's exclusive lock)."""
        self._recalls[ino] = self._recalls.get(ino, 0) + 1
        self.recalls_total = next(self._recalled)

    def recall_count(self, ino: InodeId) -> int:
        return self._recalls.get(ino, 0)

    # -- open files ------------------------------------------------------------

    def open(
        self, attr: Attr, session: int, *, truncated: bool, writer: int | None = None
    ) -> Inode:
        """An open file of ``attr.ino`` starts (``writer``: its server handle if it may write).

        ``attr`` is what the open returned; ``truncated``: the open truncated
        the file (O_TRUNC), so no growth this client had is left to publish.
        """
        ino = InodeId(attr.ino)
        with self._lock:
            inode = self._open.get(ino)
            if inode is None or inode.session != session:
                inode = Inode(attr, epoch=self.recall_count(ino), session=session)
                inode.on_change = self.on_change
                self._open[ino] = inode
            elif truncated:
                inode.truncated(attr.size)
            else:
                inode.learn(attr.size)
            inode.saw(attr)
            inode.opens += 1
            if writer is not None:
                inode.add_writer(writer)
        return inode

    def close(self, inode: Inode) -> bool:
        """An open file of ``inode`` ended; True if it was this client's last of the file.

        Take ``inode.publishing`` first and remove the writer (``inode.writers``)
        under it, before the server's Release.
        """
        with self._lock:
            inode.opens -= 1
            if inode.opens > 0:
                return False
            current = self._open.get(inode.ino)
            if current is inode:
                del self._open[inode.ino]
                return True
            # A file of an ended session: last unless the new session opened it again.
            return current is None

    def get(self, ino: InodeId) -> Inode | None:
        with self._lock:
            return self._open.get(ino)

    def has_writers(self) -> bool:
        """True while some open file of this client may write."""
        with self._lock:
            return any(inode.writers for inode in self._open.values())

    def new_session(self) -> None:
        """The server ended the session: files opened before keep their inode, void."""
        with self._lock:
            self._open.clear()

    # -- attributes ------------------------------------------------------------

    def seen(self, attr: Attr, *, recalls_before: int | None = None) -> Attr:
        """``attr`` as this client sees it: the size its own open files know.

        ``recalls_before``: the server answered ``attr`` just now, to a call sent
        when :attr:`recalls_total` was this; the inode learns from it (a
        recall it reflects then costs no GetAttr of its own). None: ``attr``
        is older (a cached answer, a reply kept for later): it is only
        reported, with this client's size.
        """
        if not stat.S_ISREG(attr.mode):
            return attr
        inode = self.get(InodeId(attr.ino))
        if inode is None:
            return attr
        if recalls_before is not None:
            inode.saw(attr)
            recalls = self.recall_count(inode.ino)
            if not inode.stale(recalls):
                inode.learn(attr.size)
            elif recalls_before == self.recalls_total:
                # No recall arrived while the call was in flight: the answer
                # postdates every recall counted, so it is the size after them.
                inode.refreshed(attr.size, recalls, inode.version())
        size = inode.size
        return attr if size == attr.size else replace(attr, size=size)
