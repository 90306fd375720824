"""The FUSE file system a user would write instead of daxfs: a naive mfusepy passthrough.

``python -m daxfs.bench.naive_passthrough SOURCE MOUNTPOINT`` mirrors SOURCE
(a tmpfs directory in the benchmark) at MOUNTPOINT, in the foreground, until
unmounted (``fusermount3 -u MOUNTPOINT``). It is mfusepy's loopback example
written plainly: every operation is the matching ``os`` call on the source
path, reads return ``bytes`` and writes receive ``bytes`` (mfusepy copies
between them and the kernel's buffer), and files are opened ``direct_io`` so
that, like daxfs's default mount, no guest page cache hides the request path.
It asks for nothing beyond libfuse's defaults (no ``max_write``), as a first
version would not.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import mfusepy


class Passthrough(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.rwlock = threading.Lock()

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._full(path), amode):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._full(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._full(path), uid, gid)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._full(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._full(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")
        attrs: dict[str, Any] = {k: getattr(st, k) for k in keys}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._full(path), mode)
        return 0

    def open(self, path: str, flags: int) -> int:
        return os.open(self._full(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.rwlock:
            os.lseek(fh, offset, os.SEEK_SET)
            return os.read(fh, size)

    def readdir(self, path: str, fh: int) -> Iterable[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._full(path))

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._full(old), self._full(new))
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._full(path))
        return 0

    def statfs(self, path: str) -> dict[str, Any]:
        stv = os.statvfs(self._full(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        return {k: getattr(stv, k) for k in (*keys, "f_flag", "f_frsize", "f_namemax")}

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._full(target))
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with open(self._full(path), "r+b") as f:
            f.truncate(length)
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._full(path))
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._full(path))
        else:
            os.utime(self._full(path), ns=times)
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.rwlock:
            os.lseek(fh, offset, os.SEEK_SET)
            return os.write(fh, data)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m daxfs.bench.naive_passthrough SOURCE MOUNTPOINT", file=sys.stderr)
        return 2
    mfusepy.FUSE(Passthrough(argv[0]), argv[1], foreground=True, direct_io=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
