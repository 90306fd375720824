"""``/dev/fuse`` and mount(2): the kernel end of the daemon.

A :class:`Channel` is one open ``/dev/fuse`` descriptor. :meth:`Channel.mount`
attaches it to a mountpoint with mount(2) (needs CAP_SYS_ADMIN; other users
go through libfuse, ``--backend libfuse``, until fusermount3's fd passing is
wired here). Several threads may :meth:`receive` on one channel at once: the
kernel hands each request to exactly one reader. :meth:`receive` returns 0
once the file system is unmounted (ENODEV), which ends every serving thread.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daxfs.shared.errors import InvalidArgument
from daxfs.shared.mman import libc

log = logging.getLogger(__name__)

DEVICE = "/dev/fuse"

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

#: -o options that are mount(2) flags: name -> (flag, set it).
_FLAG_OPTIONS: Mapping[str, tuple[int, bool]] = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True),
    "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True),
    "noatime": (MS_NOATIME, True),
    "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True),
    "diratime": (MS_NODIRATIME, False),
    "relatime": (MS_RELATIME, True),
    "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True),
    "lazytime": (MS_LAZYTIME, True),
}
#: Options libfuse knows that mean nothing to this daemon (its threads, its
#: caches): accepted, so one ``-o`` line serves both backends.
_LIBFUSE_ONLY = frozenset(
    {"max_threads", "max_idle_threads", "clone_fd", "use_ino", "hard_remove", "auto_cache",
     "kernel_cache", "direct_io", "debug", "big_writes", "large_read", "auto_unmount"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MountOptions:
    """What mount(2) is told. libfuse's defaults: nosuid, nodev, no allow_other."""

    #: The mount's source, as /proc/mounts shows it.
    fsname: str = "daxfs"
    #: The type is ``fuse.SUBTYPE``.
    subtype: str = "daxfs"
    #: MS_* flags.
    flags: int = MS_NOSUID | MS_NODEV
    #: Let users other than the mounting one in (the kernel refuses them otherwise).
    allow_other: bool = False
    #: The kernel checks mode bits itself before asking the daemon.
    default_permissions: bool = False
    #: Extra ``key=value`` options passed to the kernel as given (max_read, blksize).
    extra: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> MountOptions:
        """From ``daxfs.client.fuse.mount.parse_options`` output ({"allow_other": True, ...})."""
        flags = MS_NOSUID | MS_NODEV
        kw: dict[str, Any] = {}
        extra: list[tuple[str, str]] = []
        for key, value in options.items():
            if key in _FLAG_OPTIONS:
                bit, on = _FLAG_OPTIONS[key]
                flags = flags | bit if on else flags & ~bit
            elif key in ("allow_other", "default_permissions"):
                kw[key] = True
            elif key in ("fsname", "subtype") and isinstance(value, str):
                kw[key] = value
            elif key in ("max_read", "blksize") and isinstance(value, str):
                extra.append((key, value))
            elif key in _LIBFUSE_ONLY:
                log.debug("mount option %s is libfuse's; ignored", key)
            else:
                raise InvalidArgument(f"unknown mount option {key!r}")
        return cls(flags=flags, extra=tuple(extra), **kw)

    def data(self, fd: int, rootmode: int, uid: int, gid: int) -> str:
        """The option string mount(2) hands the fuse file system."""
        opts = [f"fd={fd}", f"rootmode={rootmode:o}", f"user_id={uid}", f"group_id={gid}"]
        if self.allow_other:
            opts.append("allow_other")
        if self.default_permissions:
            opts.append("default_permissions")
        opts.extend(f"{k}={v}" for k, v in self.extra)
        return ",".join(opts)


class Channel:
    """One open ``/dev/fuse``; thread-safe (each read and write is one system call)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls) -> Channel:
        return cls(os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC))

    def mount(self, mountpoint: str, options: MountOptions) -> None:
        """mount(2) this channel at ``mountpoint`` (a directory); raises OSError."""
        st = os.stat(mountpoint)
        data = options.data(self.fd, stat.S_IFMT(st.st_mode), os.getuid(), os.getgid())
        rc = libc.mount(
            options.fsname.encode(),
            os.fsencode(mountpoint),
            f"fuse.{options.subtype}".encode(),
            ctypes.c_ulong(options.flags),
            data.encode(),
        )
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), mountpoint)

    def receive(self, buf: Any) -> int:
        """Read one request into ``buf`` (writable, >= max_write + 4 KiB); 0 once unmounted."""
        while True:
            try:
                return os.readv(self.fd, [buf])
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    return 0
                # EINTR: a signal; ENOENT: the request was interrupted before we read it.
                if exc.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue
                raise

    def send(self, iov: Sequence[bytes | memoryview] | Iterable[Any]) -> None:
        """Write one reply (or notification) from the buffers ``iov``."""
        try:
            os.writev(self.fd, list(iov))
        except OSError as exc:
            # ENOENT: the request was interrupted and the kernel no longer waits
            # for it; ENODEV: unmounted meanwhile. Neither is the daemon's error.
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
