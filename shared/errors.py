"""The one error model of daxfs.

Every failure the core can report is a leaf of :class:`DaxfsError`. Leaves mix in
the builtin ``OSError`` subclass that matches their errno, so callers that know
nothing of daxfs can still ``except FileNotFoundError``. The edges translate:
FUSE raises ``FuseOSError(e.errno)``, gRPC aborts with the status code in
``daxfs.server.service.STATUS_FOR`` and carries the errno in trailing metadata,
and the client turns that back into the same leaf with :func:`from_errno`.
:class:`QuietError` stands apart: a user mistake at a command line, which the
CLI prints as one line with no traceback.
"""

from __future__ import annotations

import errno as _errno
from typing import Any, ClassVar


class DaxfsError(Exception):
    """Root of every daxfs error. Unknown failures surface as EIO."""

    code: ClassVar[int] = _errno.EIO

    def __init__(self, message: str, **context: Any) -> None:
        if isinstance(self, OSError):
            super().__init__(self.code, message)
        else:
            super().__init__(message)
        self.message = message
        #: Free-form context (path, offset, ...) for logs; never parsed.
        self.context = context

    def __str__(self) -> str:
        return self.message


class QuietError(Exception):
    """A user mistake (a bad flag, a busy mountpoint): the CLI prints the message and
    exits with ``exit_code``, with no traceback. Not a :class:`DaxfsError`: it never
    crosses an edge."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NotFound(DaxfsError, FileNotFoundError):
    code = _errno.ENOENT


class AlreadyExists(DaxfsError, FileExistsError):
    code = _errno.EEXIST


class NoSpace(DaxfsError, OSError):
    code = _errno.ENOSPC


class InvalidArgument(DaxfsError, OSError):
    code = _errno.EINVAL


class NameTooLong(DaxfsError, OSError):
    code = _errno.ENAMETOOLONG


class NotADirectory(DaxfsError, NotADirectoryError):
    code = _errno.ENOTDIR


class IsADirectory(DaxfsError, IsADirectoryError):
    code = _errno.EISDIR


class DirectoryNotEmpty(DaxfsError, OSError):
    code = _errno.ENOTEMPTY


class PermissionDenied(DaxfsError, PermissionError):
    code = _errno.EACCES


class NotPermitted(DaxfsError, PermissionError):
    code = _errno.EPERM


class FileTooBig(DaxfsError, OSError):
    """An offset or offset + length beyond the largest file daxfs can address."""

    code = _errno.EFBIG


class BadHandle(DaxfsError, OSError):
    """An open-file handle that does not exist or was opened without the needed access."""

    code = _errno.EBADF


class StaleHandle(DaxfsError, OSError):
    """A handle, layout or lease that the server has revoked or no longer knows."""

    code = _errno.ESTALE


class UnknownSession(StaleHandle):
    """A session id the server does not know: it restarted, or the session ended or was evicted.

    The client must fence everything it maps and open a new session; the
    server sends the leaf's name (``daxfs-error``) so the client can tell it
    from a stale file handle, which has the same errno.
    """


class Busy(DaxfsError, OSError):
    code = _errno.EBUSY


class NotSupported(DaxfsError, OSError):
    code = _errno.EOPNOTSUPP


class NoData(DaxfsError, OSError):
    """No such extended attribute."""

    code = _errno.ENODATA


class ArgumentTooBig(DaxfsError, OSError):
    """A value over its limit, such as an extended attribute over 64 KiB."""

    code = _errno.E2BIG


class RangeError(DaxfsError, OSError):
    """A result would not fit the caller's buffer (xattr values)."""

    code = _errno.ERANGE


class ReadOnly(DaxfsError, OSError):
    code = _errno.EROFS


class FormatError(DaxfsError, OSError):
    """A region or metadata file that is not daxfs's, or not this version's, or damaged."""

    code = _errno.EIO


class SuperblockDamaged(FormatError):
    """A region whose superblock is unreadable: bad magic or a checksum mismatch.

    Its own message says only what is wrong. What to do depends on whether a
    metadata file records the region (then ``daxfs fsck --repair`` rewrites the
    superblock and nothing is lost); the volume layer that knows adds the advice.
    """


class VolumeFailed(DaxfsError, OSError):
    """The volume went bad under a running server: its region truncated, removed, replaced
    or overwritten, or its metadata unreadable. The server refuses every call from then on
    (``daxfs.server.failed``); the message says what the operator should do."""

    code = _errno.EIO


class VolumeBusy(Busy):
    """Another live process holds the volume's lock (a server, mkfs or a repairing fsck)."""


class TooManySessions(DaxfsError, OSError):
    """The server holds as many sessions as it accepts (gRPC RESOURCE_EXHAUSTED)."""

    code = _errno.EUSERS


class Unavailable(DaxfsError, ConnectionError):
    """The server cannot be reached or went away."""

    code = _errno.EIO


_BY_ERRNO: dict[int, type[DaxfsError]] = {}
for _cls in (
    NotFound,
    AlreadyExists,
    NoSpace,
    InvalidArgument,
    NameTooLong,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    PermissionDenied,
    NotPermitted,
    FileTooBig,
    BadHandle,
    StaleHandle,
    Busy,
    NotSupported,
    NoData,
    RangeError,
    ReadOnly,
    TooManySessions,
    ArgumentTooBig,
):
    _BY_ERRNO.setdefault(_cls.code, _cls)


#: Leaves sent by name beside their errno, where the errno alone is ambiguous.
BY_NAME: dict[str, type[DaxfsError]] = {cls.__name__: cls for cls in (UnknownSession, VolumeFailed)}


def from_errno(code: int, message: str, name: str | None = None) -> DaxfsError:
    """Rebuild the error leaf for ``code`` (as sent by the server); EIO for unknown codes."""
    named = BY_NAME.get(name or "")
    if named is not None and named.code == code:
        return named(message)
    cls = _BY_ERRNO.get(code, DaxfsError)
    return cls(message)
