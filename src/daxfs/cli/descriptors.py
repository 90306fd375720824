"""The descriptors a long-running daxfs process inherited, and dropping them.

A daemon keeps every descriptor it has for its whole life. One inherited from
the shell that started it (``exec 3< /mnt/daxfs/f``, a redirection, a pipe)
keeps whatever it points to alive: a file on a FUSE mount keeps that mount
busy for ``umount`` until the daemon exits, though the shell closed its own
copy long ago. So ``daxfs server`` and ``daxfs mount --foreground`` close
them first, as daemons do.

Inherited means without close-on-exec: a descriptor that had the flag did
not survive the exec that started this process, and every descriptor Python
and gRPC open themselves has it (PEP 446), so nothing of this process's own
is touched.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Iterable

log = logging.getLogger(__name__)

#: A path that names an inherited descriptor (``--token-file <(...)`` gives /dev/fd/63).
_FD_PATH = re.compile(r"^/(?:dev|proc/self)/fd/(\d+)$")


def named_descriptors(paths: Iterable[str | None]) -> set[int]:
    """The descriptors that command-line paths such as /dev/fd/63 refer to."""
    return {int(m.group(1)) for p in paths if p and (m := _FD_PATH.match(p))}


def close_inherited(keep: Iterable[int] = ()) -> list[int]:
    """Close every inherited descriptor but stdin, stdout, stderr and ``keep``;
    returns the ones closed. Call it only from a process's own command line,
    never from a library call: it acts on the whole process."""
    kept = {0, 1, 2, *keep}
    closed = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in kept:
            continue
        try:
            inherited = not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        except OSError:
            continue  # the listing's own descriptor, gone by now
        if inherited:
            os.close(fd)
            closed.append(fd)
    if closed:
        log.debug("closed inherited descriptors %s", closed)
    return closed
