"""The open-file table: which client holds which inode open, and how.

A handle names one open of one inode by one client session, with the access
it was opened for. Handles count up from this server's boot time (ms << 16),
so a handle from before a restart never names another client's new state; a
client that presents such a handle gets ESTALE and reopens. (Session ids are
random: see leases.py.) An inode's open count keeps an unlinked inode alive
until its last close.

Not thread-safe by itself: the namespace's lock guards every call.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from daxfs.shared import errors
from daxfs.shared.attr import Attr
from daxfs.shared.extent import ClientId, FileHandle, InodeId


@dataclass(slots=True)
class OpenFile:
    """A file opened by one client; layouts and data calls go through it."""

    handle: FileHandle
    client: ClientId
    ino: InodeId
    generation: int
    readable: bool
    writable: bool
    append: bool


@dataclass(frozen=True, slots=True)
class Opened:
    """What open and create return: the new handle and the file's attributes."""

    handle: FileHandle
    attr: Attr
    xattr_names: tuple[str, ...] | None = None
    """Create, for a caching client: the file's extended attribute names (None: not sent)."""


class OpenFiles:
    """Every open file of the server, by handle, and how many opens each inode has."""

    def __init__(self) -> None:
        self._opens: dict[FileHandle, OpenFile] = {}
        self._count: Counter[InodeId] = Counter()
        boot = (time.time_ns() // 1_000_000) << 16
        self._handles = itertools.count(boot + 1)

    def add(
        self,
        client: ClientId,
        ino: InodeId,
        generation: int,
        *,
        readable: bool,
        writable: bool,
        append: bool,
    ) -> FileHandle:
        fh = FileHandle(next(self._handles))
        self._opens[fh] = OpenFile(fh, client, ino, generation, readable, writable, append)
        self._count[ino] += 1
        return fh

    def get(self, fh: FileHandle, client: ClientId) -> OpenFile:
        """``client``'s open file ``fh``; ESTALE when it has none by that handle."""
        of = self._opens.get(fh)
        if of is None or of.client != client:
            # ESTALE, as NFS says: typically a handle from before a server restart.
            raise errors.StaleHandle(f"file handle {fh} is not open for this client; reopen it")
        return of

    def remove(self, of: OpenFile) -> bool:
        """Close ``of``; True when it was its inode's last open."""
        del self._opens[of.handle]
        self._count[of.ino] -= 1
        if self._count[of.ino] > 0:
            return False
        del self._count[of.ino]
        return True

    def count(self, ino: InodeId) -> int:
        """How many opens ``ino`` has."""
        return self._count[ino]

    def of_client(self, client: ClientId) -> list[OpenFile]:
        """``client``'s open files, oldest first."""
        return [of for of in self._opens.values() if of.client == client]

    def writes(self, client: ClientId, ino: InodeId) -> bool:
        """Whether ``client`` holds ``ino`` open for writing (its stores may lie past EOF)."""
        return any(
            of.writable and of.client == client and of.ino == ino for of in self._opens.values()
        )

    def __iter__(self) -> Iterator[OpenFile]:
        return iter(list(self._opens.values()))

    def __len__(self) -> int:
        return len(self._opens)
