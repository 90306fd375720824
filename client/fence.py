"""Fencing: what keeps a client from touching extents the server took back.

Two mechanisms, both driven by recalls and by lease expiry:

- **Copies** (read/write/pread/pwrite) hold the fence's shared lock while they
  copy to or from the region; a recall takes it exclusively before it
  acknowledges, so no copy from a recalled extent can still be in flight when
  the server reuses it.
- **Mappings** (``DaxFile.array`` views) are registered here. Fencing a file
  range maps anonymous private pages over the view with MAP_FIXED: loads then
  read zeros and stores land in private memory that is thrown away, and never
  in the region. A numpy view cannot return an error, so zeros are the
  closest thing to EIO it can give; the file object raises StaleHandle.

When the client cannot renew its leases before they end (the server is gone
or unreachable), it fences everything it maps (self-fencing).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from daxfs.shared.extent import InodeId, align_down, align_up
from daxfs.shared.mman import map_anonymous_over

log = logging.getLogger(__name__)


class SharedExclusiveLock:
    """Many copiers or one fencer. Copiers never wait for each other."""

    def __init__(self) -> None:
        # The copy paths take ``_mutex`` directly: a Condition's own ``with``
        # is two Python-level calls (it guards the same lock).
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._shared = 0  # guarded by self._cond
        self._exclusive = False  # guarded by self._cond

    def acquire_shared(self) -> None:
        """Take the shared side; pair with :meth:`release_shared` (the per-request
        copy paths call these two directly: a generator-based ``with`` costs more
        than the 4 KiB copy it guards)."""
        with self._mutex:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1

    def release_shared(self) -> None:
        with self._mutex:
            self._shared -= 1
            if not self._shared and self._exclusive:
                self._cond.notify_all()  # the fencer waits for the last copier

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._shared:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@dataclass(slots=True)
class _View:
    ref: weakref.ref[mmap.mmap]
    ino: InodeId
    base: int
    """Address of file offset 0 of the view."""
    span: int
    """Bytes mapped, page aligned."""
    fenced: bool = False


class Fence:
    def __init__(self) -> None:
        self.io = SharedExclusiveLock()
        self._lock = threading.Lock()
        self._views: list[_View] = []  # guarded by self._lock

    def register(self, ino: InodeId, reserve: mmap.mmap, base: int, span: int) -> None:
        with self._lock:
            self._views = [v for v in self._views if v.ref() is not None]
            self._views.append(_View(weakref.ref(reserve), ino, base, span))

    def live_views(self, ino: InodeId | None = None) -> int:
        with self._lock:
            return sum(
                1 for v in self._views if v.ref() is not None and (ino is None or v.ino == ino)
            )

    def fence(self, ino: InodeId | None, offset: int = 0, length: int | None = None) -> int:
        """Fence views of ``ino`` (all files if None) over file range [offset, offset+length)."""
        count = 0
        with self._lock:
            for view in self._views:
                reserve = view.ref()
                if reserve is None or reserve.closed or (ino is not None and view.ino != ino):
                    continue  # a dead view's address range may belong to someone else now
                lo = align_down(max(offset, 0), mmap.PAGESIZE)
                hi = view.span if length is None else align_up(offset + length, mmap.PAGESIZE)
                hi = min(hi, view.span)
                if lo >= hi:
                    continue
                err = map_anonymous_over(view.base + lo, hi - lo)
                if err:
                    # map_anonymous_over took all access away instead.
                    log.error("fencing a view failed (errno %d): access revoked", err)
                view.fenced = True
                count += 1
                del reserve
        return count
