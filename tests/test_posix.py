"""POSIX behaviours on a real mount, each one a case pjdfstest, fsx or a real program hit.

Every test mounts for real against a real server (the ``server`` fixture fscks
the volume after it stopped) and asserts exact errnos through ``os.*``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.client import Client, connect
from daxfs.shared import errors
from daxfs.shared.extent import MAX_FILE_SIZE
from daxfs.testing import ServerProc, fuse_mount, wait_until

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing: no FUSE in this machine"
    ),
]

NOBODY = 65534
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture
def mnt(server: ServerProc, workdir: Path) -> Iterator[Path]:
    os.chmod(workdir, 0o755)  # let uid 65534 reach the mountpoint
    with fuse_mount(server.address, workdir / "mnt", "-o", "allow_other"):
        yield workdir / "mnt"


def errno_of(fn: object, *args: object, **kwargs: object) -> int:
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"{fn} did not fail")


def as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    """Run Python code as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "/usr/bin/python3", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


# -- size and allocation changes see this mount's unpublished writes -------


def test_fallocate_keeps_writes_not_yet_published(mnt: Path) -> None:
    """fsx's READ BAD DATA: fallocate past the server's EOF zeroed unpublished writes."""
    data = bytes(range(256)) * 256  # 64 KiB
    fd = os.open(mnt / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.posix_fallocate(fd, 8192, 131072)
        assert os.fstat(fd).st_size == 8192 + 131072
        assert os.pread(fd, len(data), 0) == data
        assert os.pread(fd, 8192 + 131072, 0) == data + bytes(8192 + 131072 - len(data))
    finally:
        os.close(fd)
    assert (mnt / "f").read_bytes()[: len(data)] == data


def test_library_allocate_publishes_growth_first(client: Client) -> None:
    with client.open("/f", "w+b") as f:
        f.write(b"w" * 10000)
        f.allocate(4096, 65536)
        assert f.pread(10000, 0) == b"w" * 10000
        assert f.size == 4096 + 65536


def test_fallocate_keep_size_keeps_writes_not_yet_published(mnt: Path) -> None:
    data = b"k" * 10000
    fd = os.open(mnt / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, data, 0)
        _fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 1 << 20)
        assert os.fstat(fd).st_size == len(data)
        assert os.pread(fd, 2 * len(data), 0) == data
    finally:
        os.close(fd)


def test_truncate_of_another_descriptor_keeps_writes_not_yet_published(mnt: Path) -> None:
    """Write through one descriptor, grow and shrink through another and by path."""
    fd = os.open(mnt / "f", os.O_CREAT | os.O_RDWR, 0o644)
    fd2 = os.open(mnt / "f", os.O_RDWR)
    try:
        os.pwrite(fd, b"a" * 20000, 0)
        os.ftruncate(fd2, 30000)
        assert os.pread(fd, 40000, 0) == b"a" * 20000 + bytes(10000)
        os.pwrite(fd, b"b" * 5000, 30000)
        os.truncate(mnt / "f", 40000)
        assert os.pread(fd2, 50000, 0) == b"a" * 20000 + bytes(10000) + b"b" * 5000 + bytes(5000)
        os.pwrite(fd2, b"c" * 100, 45000)
        os.ftruncate(fd, 45050)
        assert os.pread(fd, 50000, 40000) == bytes(5000) + b"c" * 50
    finally:
        os.close(fd)
        os.close(fd2)
    assert os.stat(mnt / "f").st_size == 45050


def test_rename_over_and_o_trunc_with_writes_not_yet_published(mnt: Path) -> None:
    fd = os.open(mnt / "a", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"x" * 9000, 0)
        (mnt / "b").write_bytes(b"old")
        os.rename(mnt / "a", mnt / "b")  # the open file is now b
        os.pwrite(fd, b"y" * 100, 9000)
        assert (mnt / "b").read_bytes() == b"x" * 9000 + b"y" * 100
        (mnt / "c").write_bytes(b"z" * 3)
        os.rename(mnt / "c", mnt / "b")  # b is replaced while open: its bytes stay readable
        assert os.pread(fd, 10000, 0) == b"x" * 9000 + b"y" * 100
    finally:
        os.close(fd)
    assert (mnt / "b").read_bytes() == b"zzz"
    fd = os.open(mnt / "d", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"q" * 9000, 0)
        fd2 = os.open(mnt / "d", os.O_RDWR | os.O_TRUNC)
        try:
            assert os.fstat(fd).st_size == 0
            os.pwrite(fd2, b"r" * 10, 0)
        finally:
            os.close(fd2)
        assert os.pread(fd, 100, 0) == b"r" * 10
    finally:
        os.close(fd)
    assert (mnt / "d").read_bytes() == b"r" * 10


# -- set-id bits and handle-based calls ------------------------------------


def test_ftruncate_uses_the_descriptor_not_the_mode_bits(mnt: Path) -> None:
    """pjdfstest ftruncate/00.t: O_CREAT|O_RDWR with mode 0, then ftruncate."""
    os.chmod(mnt, 0o777)
    out = as_nobody(
        "import os\n"
        f"fd = os.open({str(mnt / 'f')!r}, os.O_CREAT | os.O_RDWR, 0)\n"
        "os.ftruncate(fd, 1234)\n"
        "os.fchmod(fd, 0o640)\n"
        "os.utime(fd, ns=(5, 6))\n"
        "os.close(fd)\n"
    )
    assert out.returncode == 0, out.stderr
    st = os.stat(mnt / "f")
    assert (st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (1234, 0o640, 6)


def test_write_by_non_root_clears_setuid_and_setgid(mnt: Path) -> None:
    f = mnt / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o6777)
    out = as_nobody(f"open({str(f)!r}, 'r+b').write(b'y')")
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o777
    assert f.read_bytes() == b"y"
    # Without group execute S_ISGID stays for a member of the file's group
    # (it marks mandatory locking), and goes for anyone else.
    os.chown(f, 0, NOBODY)
    os.chmod(f, 0o6766)
    out = as_nobody(f"open({str(f)!r}, 'r+b').write(b'z')")
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o2766
    os.chown(f, 0, 0)
    os.chmod(f, 0o6766)
    out = as_nobody(f"open({str(f)!r}, 'r+b').write(b'z')")
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o766
    # Root keeps them (CAP_FSETID).
    os.chmod(f, 0o6777)
    with open(f, "r+b") as fh:
        fh.write(b"w")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6777


def test_truncate_by_a_non_owner_writer_clears_setuid(mnt: Path) -> None:
    f = mnt / "f"
    f.write_bytes(b"x" * 100)
    os.chmod(f, 0o4666)
    out = as_nobody(f"import os; os.truncate({str(f)!r}, 10)")
    assert out.returncode == 0, out.stderr
    st = os.stat(f)
    assert (st.st_size, stat.S_IMODE(st.st_mode)) == (10, 0o666)
    # A non-owner may not otherwise chmod. (Without default_permissions the
    # server cannot tell chmod(2) from the kernel's set-id kill, so a writer
    # may drop set-id bits; nothing else.)
    os.chmod(f, 0o4666)
    out = as_nobody(f"import os; os.chmod({str(f)!r}, 0o4664)")
    assert "Operation not permitted" in out.stderr, out


def test_chown_clears_setuid_as_linux(mnt: Path) -> None:
    f = mnt / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o6555)
    os.chown(f, NOBODY, NOBODY)
    st = os.stat(f)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o555, NOBODY, NOBODY)
    os.chmod(f, 0o6545)  # no group execute: S_ISGID stays
    os.chown(f, 0, 0)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o2545
    d = mnt / "d"
    d.mkdir()
    os.chmod(d, 0o6755)  # directories keep theirs
    os.chown(d, NOBODY, NOBODY)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o6755


# -- the largest file ------------------------------------------------------


def test_largest_file_size_and_efbig_past_it(mnt: Path) -> None:
    """A size of 2^63-1 was accepted and the file could then not be read (EIO)."""
    f = mnt / "f"
    f.write_bytes(b"abc")
    os.truncate(f, MAX_FILE_SIZE)
    fd = os.open(f, os.O_RDWR)
    try:
        assert os.fstat(fd).st_size == MAX_FILE_SIZE
        assert os.pread(fd, 10, 0) == b"abc" + bytes(7)
        assert os.pread(fd, 10, MAX_FILE_SIZE - 4) == bytes(4)
        assert os.pwrite(fd, b"tail", MAX_FILE_SIZE - 4) == 4
        assert os.pread(fd, 10, MAX_FILE_SIZE - 4) == b"tail"
        assert os.pwrite(fd, b"xyz", MAX_FILE_SIZE - 1) == 1  # the part that fits
        assert errno_of(os.pwrite, fd, b"x", MAX_FILE_SIZE) == errno.EFBIG
        assert errno_of(os.ftruncate, fd, MAX_FILE_SIZE + 1) == errno.EFBIG
        assert errno_of(os.posix_fallocate, fd, MAX_FILE_SIZE - 4096, 8192) == errno.EFBIG
        assert errno_of(os.truncate, f, (1 << 63) - 1) == errno.EFBIG
        assert os.fstat(fd).st_size == MAX_FILE_SIZE
    finally:
        os.close(fd)
    assert os.stat(f).st_size == MAX_FILE_SIZE
    os.truncate(f, 3)
    assert f.read_bytes() == b"abc"


def test_library_refuses_sizes_past_the_largest_file(client: Client) -> None:
    with client.open("/f", "w+b") as f:
        with pytest.raises(errors.FileTooBig):
            f.truncate(MAX_FILE_SIZE + 1)
        with pytest.raises(errors.FileTooBig):
            f.pwrite(b"x", MAX_FILE_SIZE)
        with pytest.raises(errors.FileTooBig):
            f.allocate(MAX_FILE_SIZE, 1)
        f.truncate(MAX_FILE_SIZE)
        assert f.pread(4, MAX_FILE_SIZE - 2) == bytes(2)
        f.truncate(0)


# -- path limits -----------------------------------------------------------


def test_deep_tree_past_path_max_from_the_mount_root(mnt: Path) -> None:
    """PATH_MAX bounds a system call's argument, not the path from the mount root."""
    name = "d" * 250
    fds = [os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for _ in range(40):  # about 10 KB from the root
            os.mkdir(name, dir_fd=fds[-1])
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        deep = fds[-1]
        fd = os.open("f" * 255, os.O_CREAT | os.O_RDWR, 0o644, dir_fd=deep)
        try:
            os.write(fd, b"deep")
        finally:
            os.close(fd)
        assert os.stat("f" * 255, dir_fd=deep).st_size == 4
        os.rename("f" * 255, "g", src_dir_fd=deep, dst_dir_fd=deep)
        os.symlink("t" * 4095, "s", dir_fd=deep)
        assert os.readlink("s", dir_fd=deep) == "t" * 4095
        assert errno_of(os.symlink, "t" * 4096, "s2", dir_fd=deep) == errno.ENAMETOOLONG
        assert errno_of(os.mkdir, "n" * 256, dir_fd=deep) == errno.ENAMETOOLONG
        assert sorted(os.listdir(deep)) == ["g", "s"]
        os.unlink("g", dir_fd=deep)
        os.unlink("s", dir_fd=deep)
        for parent in reversed(fds[:-1]):
            os.close(fds.pop())
            os.rmdir(name, dir_fd=parent)
    finally:
        for fd in fds:
            os.close(fd)
    assert os.listdir(mnt) == []


# -- the server's own permission checks (no default_permissions) -----------


def test_directory_without_read_permission_cannot_be_opened(mnt: Path) -> None:
    d = mnt / "d"
    d.mkdir(mode=0o711)
    (d / "f").write_bytes(b"x")
    out = as_nobody(f"import os; os.listdir({str(d)!r})")
    assert "Permission denied" in out.stderr, out
    out = as_nobody(f"print(open({str(d / 'f')!r}).read())")  # search is enough for a name
    assert out.stdout.strip() == "x", out


def test_moving_someone_elses_directory_to_another_parent(mnt: Path) -> None:
    for sub in ("a", "b"):
        (mnt / sub).mkdir()
        os.chmod(mnt / sub, 0o777)
    (mnt / "a" / "roots").mkdir(mode=0o755)
    (mnt / "a" / "rootfile").write_bytes(b"x")
    os.chmod(mnt / "a" / "rootfile", 0o644)
    move = "import os; os.rename({!r}, {!r})"
    out = as_nobody(move.format(str(mnt / "a" / "roots"), str(mnt / "b" / "roots")))
    assert "Permission denied" in out.stderr, out
    # Within the same parent its ".." stays: allowed. A file may change parent.
    out = as_nobody(move.format(str(mnt / "a" / "roots"), str(mnt / "a" / "renamed")))
    assert out.returncode == 0, out.stderr
    out = as_nobody(move.format(str(mnt / "a" / "rootfile"), str(mnt / "b" / "rootfile")))
    assert out.returncode == 0, out.stderr
    # In a sticky directory only the owner of the entry or of the directory.
    os.chmod(mnt / "b", 0o1777)
    out = as_nobody(move.format(str(mnt / "b" / "rootfile"), str(mnt / "b" / "mine")))
    assert "Operation not permitted" in out.stderr, out


def test_hard_links_follow_protected_hardlinks(mnt: Path) -> None:
    pub = mnt / "pub"
    pub.mkdir()
    os.chmod(pub, 0o777)
    for name, mode in (("secret", 0o600), ("shared", 0o666), ("suid", 0o4777)):
        (mnt / name).write_bytes(b"x")
        os.chmod(mnt / name, mode)
    link = "import os; os.link({!r}, {!r})"
    out = as_nobody(link.format(str(mnt / "secret"), str(pub / "l1")))
    assert "Operation not permitted" in out.stderr, out
    out = as_nobody(link.format(str(mnt / "suid"), str(pub / "l2")))
    assert "Operation not permitted" in out.stderr, out
    out = as_nobody(link.format(str(mnt / "shared"), str(pub / "l3")))
    assert out.returncode == 0, out.stderr
    assert os.stat(pub / "l3").st_ino == os.stat(mnt / "shared").st_ino


# -- punch hole and zero range ---------------------------------------------


def _extents(path: Path) -> list[tuple[int, int, int]]:
    text = os.getxattr(path, "user.daxfs.extents").decode()
    return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in text.splitlines())]


def test_punch_hole_frees_whole_blocks_and_zeroes_the_edges(mnt: Path) -> None:
    data = bytes(range(251)) * 400  # 100,400 bytes
    f = mnt / "f"
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, data, 0)  # not yet published: the punch must keep it
        before = os.fstat(fd).st_blocks
        _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 5000, 30000)
        want = data[:5000] + bytes(30000) + data[35000:]
        assert os.fstat(fd).st_size == len(data)
        assert os.pread(fd, len(data), 0) == want
        assert os.fstat(fd).st_blocks < before
        # Blocks 8192..32768 are gone from the map: a hole.
        assert not [e for e in _extents(f) if e[0] < 32768 and e[0] + e[2] > 8192]
        # Past EOF and inside one block: no size change.
        _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 10)
        _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 90000, 1 << 20)
        want = want[:100] + bytes(10) + want[110:90000] + bytes(len(data) - 90000)
        assert os.pread(fd, len(data) + 10, 0) == want
        # Writing into the hole allocates again.
        os.pwrite(fd, b"back", 10000)
        assert os.pread(fd, 4, 10000) == b"back"
        assert errno_of(_fallocate, fd, FALLOC_FL_PUNCH_HOLE, 0, 4096) == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    want = want[:10000] + b"back" + want[10004:]
    assert f.read_bytes() == want


def test_zero_range_zeroes_and_grows_unless_keep_size(mnt: Path) -> None:
    f = mnt / "f"
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"z" * 20000, 0)
        _fallocate(fd, FALLOC_FL_ZERO_RANGE, 1000, 3000)
        assert os.pread(fd, 20000, 0) == b"z" * 1000 + bytes(3000) + b"z" * 16000
        _fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 19000, 10000)
        assert os.fstat(fd).st_size == 20000
        assert os.pread(fd, 30000, 15000) == b"z" * 4000 + bytes(1000)
        _fallocate(fd, FALLOC_FL_ZERO_RANGE, 19990, 10010)
        assert os.fstat(fd).st_size == 30000
        assert os.pread(fd, 30000, 18980) == b"z" * 20 + bytes(11000)
    finally:
        os.close(fd)
    assert os.stat(f).st_size == 30000


def test_punch_hole_recalls_another_clients_layout(server: ServerProc) -> None:
    """The freed blocks go through recall and quarantine: the reader sees zeros, never reuse."""
    with connect(server.address) as a, connect(server.address) as b:
        # The server recalls through attached session streams only (one still
        # attaching is waited for by nobody: its lease just runs out, and the
        # blocks stay in quarantine till then); b's attaches in the background.
        wait_until(
            lambda: any(s.attached for s in b.sessions() if s.client_id == b.client_id),
            "b's session stream to attach",
        )
        with a.open("/f", "w+b") as w:
            w.write(b"p" * (256 * 1024))
        reader = b.open("/f", "rb")
        try:
            assert reader.pread(16, 64 * 1024) == b"p" * 16  # b now holds a layout
            with a.open("/f", "r+b") as w:
                w.allocate(0, 128 * 1024, keep_size=True, punch_hole=True)
                # The freed blocks stay out of use until b acknowledged.
                w.pwrite(b"n" * (64 * 1024), 200 * 1024)
            assert reader.pread(16, 64 * 1024) == bytes(16)
            assert reader.pread(16, 200 * 1024) == b"n" * 16
            assert reader.pread(16, 130 * 1024) == b"p" * 16
        finally:
            reader.close()
        assert not [e for e in a.extents("/f") if e.file_offset < 128 * 1024]


# -- special files ---------------------------------------------------------


def test_fifos_sockets_and_devices(mnt: Path) -> None:
    import socket
    import threading

    os.mkfifo(mnt / "fifo", 0o640)
    st = os.stat(mnt / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append((mnt / "fifo").read_bytes()))
    reader.start()
    (mnt / "fifo").write_bytes(b"through the guest kernel")
    reader.join(timeout=30)
    assert got == [b"through the guest kernel"]

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(mnt / "sock"))
        server.listen(1)
        assert stat.S_ISSOCK(os.stat(mnt / "sock").st_mode)
        client.connect(str(mnt / "sock"))
        conn, _ = server.accept()
        with conn:
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
    finally:
        client.close()
        server.close()

    os.mknod(mnt / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(mnt / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    st = os.stat(mnt / "null")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    st = os.stat(mnt / "blk")
    assert stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (7, 200)
    # FUSE mounts are nodev unless mounted with -o dev: the node exists, its
    # driver is not reachable through it.
    assert errno_of(os.open, mnt / "null", os.O_RDONLY) == errno.EACCES
    os.mknod(mnt / "plain", 0o644 | stat.S_IFREG)
    assert stat.S_ISREG(os.stat(mnt / "plain").st_mode)
    assert errno_of(os.mknod, mnt / "fifo", 0o644 | stat.S_IFIFO) == errno.EEXIST
    os.link(mnt / "fifo", mnt / "fifo2")
    assert os.stat(mnt / "fifo").st_nlink == 2
    os.rename(mnt / "blk", mnt / "blk2")
    assert os.stat(mnt / "blk2").st_rdev == os.makedev(7, 200)
    os.chmod(mnt, 0o777)
    out = as_nobody(f"import os, stat; os.mknod({str(mnt / 'dev')!r}, 0o600 | stat.S_IFCHR, 259)")
    assert "Operation not permitted" in out.stderr, out
    out = as_nobody(f"import os; os.mkfifo({str(mnt / 'nobodys')!r})")
    assert out.returncode == 0, out.stderr
    assert os.stat(mnt / "nobodys").st_uid == NOBODY
    for name in ("fifo", "fifo2", "sock", "null", "blk2", "plain", "nobodys"):
        os.unlink(mnt / name)
    assert os.listdir(mnt) == []


# -- extended attributes ---------------------------------------------------


def _acl(*entries: tuple[int, int, int]) -> bytes:
    import struct

    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 1, 2, 4, 0x10, 0x20
NONE = 0xFFFFFFFF  # ACL_UNDEFINED_ID: the id of the entries that name no one


def test_cp_a_keeps_the_mode_through_the_access_acl(mnt: Path, workdir: Path) -> None:
    src = workdir / "src"
    src.write_bytes(b"copied")
    os.chmod(src, 0o644)
    subprocess.run(["cp", "-a", str(src), str(mnt / "dst")], check=True)
    assert stat.S_IMODE(os.stat(mnt / "dst").st_mode) == 0o644
    assert (mnt / "dst").read_bytes() == b"copied"


def test_posix_acls_set_the_mode_bits(mnt: Path) -> None:
    f = mnt / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o600)
    # A minimal ACL is the mode bits: they change, nothing is stored.
    os.setxattr(
        f,
        "system.posix_acl_access",
        _acl((USER_OBJ, 7, NONE), (GROUP_OBJ, 5, NONE), (OTHER, 4, NONE)),
    )
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o754
    assert errno_of(os.getxattr, f, "system.posix_acl_access") == errno.ENODATA
    # An extended ACL is stored; the group bits are its mask.
    acl = _acl(
        (USER_OBJ, 6, NONE),
        (USER, 6, NOBODY),
        (GROUP_OBJ, 4, NONE),
        (MASK, 6, NONE),
        (OTHER, 0, NONE),
    )
    os.setxattr(f, "system.posix_acl_access", acl)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o660
    assert os.getxattr(f, "system.posix_acl_access") == acl
    # chmod rewrites the ACL's owner, mask and other entries.
    os.chmod(f, 0o640)
    assert os.getxattr(f, "system.posix_acl_access") == _acl(
        (USER_OBJ, 6, NONE),
        (USER, 6, NOBODY),
        (GROUP_OBJ, 4, NONE),
        (MASK, 4, NONE),
        (OTHER, 0, NONE),
    )
    bad = _acl(
        (USER_OBJ, 6, NONE), (USER, 6, NOBODY), (GROUP_OBJ, 4, NONE), (OTHER, 0, NONE)
    )  # no mask
    assert errno_of(os.setxattr, f, "system.posix_acl_access", bad) == errno.EINVAL
    junk = b"\x02\x00\x00\x00junk"
    assert errno_of(os.setxattr, f, "system.posix_acl_access", junk) == errno.EINVAL
    default = _acl((USER_OBJ, 7, NONE), (GROUP_OBJ, 5, NONE), (OTHER, 5, NONE))
    assert errno_of(os.setxattr, f, "system.posix_acl_default", default) == errno.EACCES
    (mnt / "d").mkdir()
    os.setxattr(mnt / "d", "system.posix_acl_default", default)
    assert os.getxattr(mnt / "d", "system.posix_acl_default") == default
    assert errno_of(os.setxattr, f, "system.other", b"x") == errno.EOPNOTSUPP


def test_xattr_namespaces_permissions_and_limits(mnt: Path) -> None:
    f = mnt / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o600)
    os.chmod(mnt, 0o777)
    os.setxattr(f, "trusted.root", b"r")
    os.setxattr(f, "security.label", b"s")
    assert os.getxattr(f, "security.label") == b"s"
    get = "import os; print(os.getxattr({!r}, {!r}))"
    out = as_nobody(f"import os; os.setxattr({str(f)!r}, 'trusted.x', b'x')")
    assert "Operation not permitted" in out.stderr, out
    out = as_nobody(get.format(str(f), "user.daxfs.extents"))
    assert "Permission denied" in out.stderr, out
    out = as_nobody(get.format(str(f), "user.daxfs.iostats"))
    assert "Permission denied" in out.stderr, out
    os.chmod(f, 0o644)
    out = as_nobody(f"import os; print(sorted(os.listxattr({str(f)!r})))")
    assert out.stdout.strip() == "['security.label']", out  # trusted.* is root's
    out = as_nobody(get.format(str(f), "trusted.root"))
    assert "No data available" in out.stderr, out
    out = as_nobody(f"import os; os.setxattr({str(f)!r}, 'user.x', b'x')")
    assert "Permission denied" in out.stderr, out  # no write permission
    assert os.getxattr(f, "trusted.root") == b"r"

    os.setxattr(f, "user.max", bytes(64 * 1024))
    assert errno_of(os.setxattr, f, "user.big", bytes(64 * 1024 + 1)) == errno.E2BIG
    assert errno_of(os.setxattr, f, "user." + "n" * 251, b"x") == errno.ERANGE
    for i in range(14):
        os.setxattr(f, f"user.v{i}", bytes(64 * 1024))
    assert errno_of(os.setxattr, f, "user.more", bytes(64 * 1024)) == errno.ENOSPC
    os.setxattr(f, "user.v0", b"small")  # replacing within the bound is fine
    os.symlink("f", mnt / "s")
    assert errno_of(os.setxattr, mnt / "s", "user.x", b"x", follow_symlinks=False) == errno.EPERM
