"""Numbers and names the server and its clients must agree on, declared once.

Each is part of the contract between the two sides (the gRPC wire, the
metadata keys, the flag bits carried as they are): change one here and both
sides change together. The growth chunk a writer asks for is not here: it
lives in ``shared/growth.py``.

Two limits share a shape but not a meaning:

* :data:`MAX_RPC_IO` (16 MiB) is the most bytes one ``Read`` or ``Write`` RPC
  (the byte path) carries; the server refuses more with EINVAL and callers
  split larger transfers. It is a server limit every client must respect.
* The FUSE mount's kernel request size (``client/fuse/operations.py``
  ``MAX_KERNEL_REQUEST``, 1 MiB: ``max_write`` and readahead) is a different
  limit, between the kernel and the mount only. Mapped files never go through
  the byte path, so it needs no agreement with the server; it is merely kept
  no larger than :data:`MAX_RPC_IO`.
"""

from __future__ import annotations

from daxfs.shared.format import MIB

#: Largest gRPC message either side sends or accepts (channel and server
#: options): a :data:`MAX_RPC_IO` payload plus generous room for the envelope.
MAX_MESSAGE = 64 * MIB
#: Largest ``Read``/``Write`` payload (bytes); bigger requests are refused and
#: the caller splits them.
MAX_RPC_IO = 16 * MIB
assert MAX_RPC_IO < MAX_MESSAGE
#: Longest directory entry name in bytes (Linux's NAME_MAX): the server refuses
#: longer names with ENAMETOOLONG, and a client's cache never asks about one.
NAME_MAX = 255

#: Trailing-metadata key whose value is the POSIX errno (decimal) of a failed
#: call: the client rebuilds the same error leaf from it (``from_errno``).
ERRNO_KEY = "daxfs-errno"
#: Trailing-metadata key naming the error leaf where the errno alone is
#: ambiguous (``errors.BY_NAME``: an unknown session vs a stale handle).
ERROR_KEY = "daxfs-error"
#: Trailing metadata of a reply to a client's own change: JSON {"inos": [...],
#: "paths": [...]} naming what of its own metadata cache the change made stale
#: (the same content as a SessionEvent.invalidate; binary because paths are UTF-8),
#: or {"all": true}: drop everything (what changed would not fit in metadata).
INVALIDATED_KEY = "daxfs-invalidated-bin"

#: Call metadata carrying the token, as ``authorization: Bearer <token>``.
AUTHORIZATION_KEY = "authorization"
AUTH_SCHEME = "Bearer"

#: renameat2(2) flags, Linux's values; the Rename RPC carries them as they are.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

#: fallocate(2) mode bits, Linux's values (<linux/falloc.h>).
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
