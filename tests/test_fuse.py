"""The FUSE mount, mounted for real in a subprocess against a real server.

Every test unmounts in a finally (a leftover mount breaks the next run), the
mount daemon's log must hold no traceback, and the ``server`` fixture fscks
the volume after the server stopped.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from daxfs.client import Client, connect
from daxfs.client.fuse.mount import is_mounted
from daxfs.shared.format import MIB
from daxfs.shared.limits import RENAME_EXCHANGE, RENAME_NOREPLACE
from daxfs.shared.mman import libc
from daxfs.testing import (
    Mount,
    ServerProc,
    Volume,
    assert_fsck_clean,
    daxfs_cmd,
    start_mount,
    start_server,
    wait_stopped,
)

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing: no FUSE in this machine"
    ),
]

AT_FDCWD = -100


def renameat2(old: Path, new: Path, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture(params=["libfuse", "kernel"])
def backend(request: pytest.FixtureRequest) -> str:
    """The mount's FUSE front end: every test on ``mnt`` or ``mount`` runs on both."""
    name: str = request.param
    return name


@pytest.fixture
def mnt(server: ServerProc, workdir: Path, backend: str) -> Iterator[Path]:
    m = start_mount(server.address, workdir / "mnt", backend=backend)
    try:
        yield m.path
    finally:
        m.stop()


@pytest.fixture
def mount(server: ServerProc, workdir: Path, backend: str) -> Iterator[Mount]:
    m = start_mount(server.address, workdir / "mnt", backend=backend)
    try:
        yield m
    finally:
        m.stop()


def errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"{fn} did not fail")


# -- everyday operations ---------------------------------------------------


def test_files_directories_links_attributes(mnt: Path) -> None:
    (mnt / "a.txt").write_bytes(b"hello daxfs\n")
    assert (mnt / "a.txt").read_bytes() == b"hello daxfs\n"
    st = os.stat(mnt / "a.txt")
    assert st.st_size == 12 and stat.S_ISREG(st.st_mode)
    (mnt / "d" / "e").mkdir(parents=True)
    assert sorted(os.listdir(mnt)) == ["a.txt", "d"]
    ls = subprocess.run(["ls", "-a", mnt / "d"], capture_output=True, text=True, check=True)
    assert ls.stdout.split() == [".", "..", "e"]
    os.symlink("a.txt", mnt / "s")
    assert os.readlink(mnt / "s") == "a.txt"
    assert (mnt / "s").read_bytes() == b"hello daxfs\n"
    os.link(mnt / "a.txt", mnt / "hard")
    assert os.stat(mnt / "hard").st_ino == st.st_ino
    assert os.stat(mnt / "a.txt").st_nlink == 2
    os.chmod(mnt / "a.txt", 0o640)
    assert stat.S_IMODE(os.stat(mnt / "a.txt").st_mode) == 0o640
    os.chown(mnt / "a.txt", 1234, 5678)
    st = os.stat(mnt / "a.txt")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(mnt / "a.txt", ns=(1_000_000_000, 2_000_000_123))
    st = os.stat(mnt / "a.txt")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_123)
    os.utime(mnt / "a.txt")  # now
    assert abs(os.stat(mnt / "a.txt").st_mtime - time.time()) < 600
    sv = os.statvfs(mnt)
    assert sv.f_bsize == 4096 and sv.f_blocks > 0 and 0 < sv.f_bfree <= sv.f_blocks
    assert sv.f_namemax == 255
    assert os.access(mnt / "a.txt", os.R_OK | os.W_OK)
    assert not os.access(mnt / "a.txt", os.X_OK)

    assert errno_of(os.open, mnt / "nope", os.O_RDONLY) == errno.ENOENT
    assert errno_of(os.mkdir, mnt / "d") == errno.EEXIST
    assert errno_of(os.rmdir, mnt / "d") == errno.ENOTEMPTY
    assert errno_of(os.unlink, mnt / "d") == errno.EISDIR
    assert errno_of(os.rmdir, mnt / "a.txt") == errno.ENOTDIR
    assert errno_of(os.open, mnt / "a.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert errno_of(os.link, mnt / "d", mnt / "dlink") == errno.EPERM
    assert errno_of(os.readlink, mnt / "a.txt") == errno.EINVAL

    os.unlink(mnt / "hard")
    os.unlink(mnt / "s")
    os.rmdir(mnt / "d" / "e")
    os.rmdir(mnt / "d")
    assert os.listdir(mnt) == ["a.txt"]


def test_long_names(mnt: Path) -> None:
    ok = mnt / ("n" * 255)
    ok.write_bytes(b"x")
    assert ok.read_bytes() == b"x"
    assert errno_of(os.open, mnt / ("n" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, mnt / ("m" * 256)) == errno.ENAMETOOLONG


def test_xattrs_and_the_extent_map(mnt: Path, server: ServerProc) -> None:
    f = mnt / "x.bin"
    f.write_bytes(os.urandom(3 * MIB + 5))
    os.setxattr(f, "user.comment", b"shared memory")
    assert os.getxattr(f, "user.comment") == b"shared memory"
    assert os.listxattr(f) == ["user.comment"]
    assert errno_of(os.setxattr, f, "user.comment", b"x", os.XATTR_CREATE) == errno.EEXIST
    os.removexattr(f, "user.comment")
    assert errno_of(os.getxattr, f, "user.comment") == errno.ENODATA
    lines = os.getxattr(f, "user.daxfs.extents").decode().splitlines()
    with connect(server.address) as c:
        want = [f"{e.file_offset} {e.region_offset} {e.length}" for e in c.extents("/x.bin")]
    assert lines == want and lines
    assert sum(int(line.split()[2]) for line in lines) >= 3 * MIB + 5
    assert errno_of(os.setxattr, f, "user.daxfs.extents", b"0 0 0") == errno.EPERM
    assert errno_of(os.removexattr, f, "user.daxfs.extents") == errno.EPERM


# -- file semantics --------------------------------------------------------


def test_rename_over_and_renameat2(mnt: Path) -> None:
    (mnt / "a").write_bytes(b"A")
    (mnt / "b").write_bytes(b"B")
    os.rename(mnt / "a", mnt / "b")  # over an existing file
    assert (mnt / "b").read_bytes() == b"A" and not (mnt / "a").exists()
    (mnt / "c").write_bytes(b"C")
    with pytest.raises(OSError) as exc:
        renameat2(mnt / "c", mnt / "b", RENAME_NOREPLACE)
    assert exc.value.errno == errno.EEXIST
    assert (mnt / "b").read_bytes() == b"A" and (mnt / "c").read_bytes() == b"C"
    renameat2(mnt / "c", mnt / "b", RENAME_EXCHANGE)
    assert (mnt / "b").read_bytes() == b"C" and (mnt / "c").read_bytes() == b"A"
    renameat2(mnt / "c", mnt / "fresh", RENAME_NOREPLACE)
    assert (mnt / "fresh").read_bytes() == b"A"
    (mnt / "dir").mkdir()
    os.rename(mnt / "fresh", mnt / "dir" / "moved")
    assert os.listdir(mnt / "dir") == ["moved"]
    assert errno_of(os.rename, mnt / "dir", mnt / "dir" / "sub") == errno.EINVAL


def test_unlink_while_open(mnt: Path) -> None:
    path = mnt / "ghost"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"still here")
        os.unlink(path)
        assert not path.exists() and os.listdir(mnt) == []
        os.write(fd, b", and growing")
        assert os.pread(fd, 100, 0) == b"still here, and growing"
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_size == 23
    finally:
        os.close(fd)
    assert os.listdir(mnt) == []


def test_truncate_sparse_and_append(mnt: Path) -> None:
    path = mnt / "t"
    data = os.urandom(3 * MIB)
    path.write_bytes(data)
    os.truncate(path, MIB + 7)
    assert path.read_bytes() == data[: MIB + 7]
    with open(path, "r+b") as f:
        f.truncate(2 * MIB)  # ftruncate up: the new part reads zeros
        f.seek(0)
        got = f.read()
    assert got == data[: MIB + 7] + bytes(2 * MIB - MIB - 7)
    os.truncate(path, 0)
    assert os.stat(path).st_size == 0 and path.read_bytes() == b""

    sparse = mnt / "sparse"
    with open(sparse, "wb") as f:
        f.seek(40 * MIB)
        f.write(b"end")
    st = os.stat(sparse)
    assert st.st_size == 40 * MIB + 3
    assert st.st_blocks * 512 < 40 * MIB  # the hole holds no storage
    with open(sparse, "rb") as f:
        assert f.read(MIB) == bytes(MIB)
        f.seek(40 * MIB - 2)
        assert f.read() == b"\0\0end"

    log = mnt / "log"
    a = os.open(log, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    b = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(5):
            os.write(a, f"a{i}\n".encode())
            os.write(b, f"b{i}\n".encode())
        os.lseek(a, 0, os.SEEK_SET)
        os.write(a, b"end\n")  # O_APPEND ignores the position
    finally:
        os.close(a)
        os.close(b)
    want = "".join(f"a{i}\nb{i}\n" for i in range(5)) + "end\n"
    assert log.read_text() == want


def test_four_concurrent_writers(mnt: Path) -> None:
    shared = mnt / "shared.bin"
    chunk = 2 * MIB
    shared.write_bytes(b"")
    blobs = [os.urandom(4 * chunk) for _ in range(4)]
    failures: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            # Interleaved stripes of one file, plus a file of its own.
            fd = os.open(shared, os.O_WRONLY)
            try:
                for s in range(4):
                    off = (s * 4 + i) * chunk
                    os.pwrite(fd, blobs[i][s * chunk : (s + 1) * chunk], off)
                os.fsync(fd)
            finally:
                os.close(fd)
            own = mnt / f"own{i}"
            with open(own, "wb") as f:
                for s in range(0, len(blobs[i]), 256 * 1024):
                    f.write(blobs[i][s : s + 256 * 1024])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    got = shared.read_bytes()
    assert len(got) == 16 * chunk
    for i in range(4):
        for s in range(4):
            off = (s * 4 + i) * chunk
            assert got[off : off + chunk] == blobs[i][s * chunk : (s + 1) * chunk]
        assert (mnt / f"own{i}").read_bytes() == blobs[i]


def test_private_mmap_works_shared_mmap_needs_the_kernel_backend(mnt: Path, backend: str) -> None:
    """libfuse 3.14 cannot ask for FUSE_DIRECT_IO_ALLOW_MMAP, so a direct_io file
    refuses MAP_SHARED there (ENODEV); the kernel backend asks, and it works."""
    path = mnt / "m"
    data = os.urandom(64 * 1024)
    path.write_bytes(data)
    with open(path, "r+b") as f:
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE) as m:
            assert m[:] == data
            m[0:4] = b"priv"  # copy-on-write: the file does not change
        if backend == "libfuse":
            with pytest.raises(OSError) as exc:
                mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
            assert exc.value.errno == errno.ENODEV
            assert path.read_bytes() == data
            return
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED) as m:
            assert m[:] == data
            m[0:6] = b"shared"
            m.flush()  # msync: the dirty page is written back through the file's handle
        assert os.pread(f.fileno(), 6, 0) == b"shared"
    assert path.read_bytes() == b"shared" + data[6:]


# -- the DAX properties ----------------------------------------------------


def test_no_guest_page_cache(mnt: Path, server: ServerProc) -> None:
    path = mnt / "coherent.bin"
    path.write_bytes(b"A" * 8192)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 8192, 0) == b"A" * 8192
        with connect(server.address) as c, c.open("/coherent.bin", "r+b") as f:
            [ext] = c.layout("/coherent.bin")
            assert ext.region_offset is not None
            view = f.array()
            view[100:200] = ord("B")  # a store into the region, bypassing the mount
            # The same bytes, seen in the region file at the extent's offset.
            with open(server.volume.region, "rb") as region:
                region.seek(ext.region_offset + 100)
                assert region.read(100) == b"B" * 100
        # The very next read through the same descriptor sees the store.
        assert os.pread(fd, 8192, 0) == b"A" * 100 + b"B" * 100 + b"A" * 7992
    finally:
        os.close(fd)
    assert path.read_bytes() == b"A" * 100 + b"B" * 100 + b"A" * 7992


def test_kernel_sends_one_mib_requests(mount: Mount) -> None:
    path = mount.path / "big"
    # Page-aligned buffers, as dd and fio use: the kernel pins user pages for
    # direct_io, and an unaligned 1 MiB buffer spans 257 pages (two requests).
    block = mmap.mmap(-1, MIB)
    block[:] = os.urandom(MIB)
    back = mmap.mmap(-1, MIB)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        for _ in range(8):
            assert os.write(fd, block) == MIB
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(8):
            assert os.readv(fd, [back]) == MIB
            assert back[:] == block[:]
    finally:
        os.close(fd)
    stats = mount.iostats()
    print("kernel request sizes:", stats)
    assert stats["write_max"] == MIB and stats["read_max"] == MIB
    assert stats["write_sizes"][str(MIB)] >= 8 and stats["read_sizes"][str(MIB)] >= 8


def test_bytes_do_not_pass_through_the_server(workdir: Path) -> None:
    volume = Volume.create(workdir, size=640 * MIB)
    srv = start_server(volume)
    try:
        src = workdir / "src.bin"
        with open(src, "wb") as f:
            block = os.urandom(MIB)
            for i in range(256):
                f.write(i.to_bytes(8, "little") + block[8:])
        m = start_mount(srv.address, workdir / "mnt")
        try:
            subprocess.run(["cp", str(src), str(m.path / "big.bin")], check=True)
            back = workdir / "back.bin"
            subprocess.run(["cp", str(m.path / "big.bin"), str(back)], check=True)
            subprocess.run(["cmp", str(src), str(back)], check=True)
            assert os.stat(m.path / "big.bin").st_size == 256 * MIB
        finally:
            m.stop()
        with Client(srv.address) as c:
            stats = c.stats()
        assert stats.read_calls == 0 and stats.write_calls == 0
        assert stats.layouts > 0
    finally:
        assert srv.stop() == 0
    assert_fsck_clean(volume)


def test_truncate_keeps_unpublished_writes(mnt: Path) -> None:
    """A path truncate while this mount holds writes the server has not been told of."""
    path = mnt / "growing"
    data = os.urandom(3 * MIB)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, data)  # size not published yet: no flush, no close
        os.truncate(path, 5 * MIB)
        assert os.pread(fd, 6 * MIB, 0) == data + bytes(2 * MIB)
        os.truncate(path, MIB)
        assert os.fstat(fd).st_size == MIB
        assert os.pread(fd, 6 * MIB, 0) == data[:MIB]
        os.write(fd, b"tail")  # the descriptor's position is past EOF now: a hole
        assert os.fstat(fd).st_size == 3 * MIB + 4
    finally:
        os.close(fd)
    got = path.read_bytes()
    assert got == data[:MIB] + bytes(2 * MIB) + b"tail"


def test_explicit_times_survive_the_close(mnt: Path) -> None:
    """tar -p: write, set the times, then close (whose flush must not touch mtime)."""
    path = mnt / "dated"
    with open(path, "wb") as f:
        f.write(b"old news")
        f.flush()
        times = (1_500_000_000_123_456_789, 1_400_000_000_000_000_001)
        os.utime(path, ns=times)
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == times
    assert st.st_size == 8


def test_fsync_and_close_publish_to_other_guests(mnt: Path, server: ServerProc) -> None:
    path = mnt / "pub"
    with connect(server.address) as c:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"x" * 10_000)
            os.fsync(fd)
            assert c.stat("/pub").size == 10_000
            os.write(fd, b"y" * 5_000)
        finally:
            os.close(fd)
        assert c.stat("/pub").size == 15_000
        with c.open("/pub", "rb") as f:
            assert f.read() == b"x" * 10_000 + b"y" * 5_000


def test_two_guests_share_files(server: ServerProc, workdir: Path) -> None:
    a = start_mount(server.address, workdir / "guest-a")
    try:
        b = start_mount(server.address, workdir / "guest-b")
        try:
            (a.path / "note").write_bytes(b"from a")
            assert (b.path / "note").read_bytes() == b"from a"
            fd = os.open(b.path / "note", os.O_RDONLY)
            try:
                with open(a.path / "note", "ab") as f:
                    f.write(b", then more")
                # No attribute cache, no page cache: B sees A's close at once.
                assert os.fstat(fd).st_size == 17
                assert os.pread(fd, 100, 0) == b"from a, then more"
            finally:
                os.close(fd)
            os.rename(b.path / "note", b.path / "renamed")
            assert os.listdir(a.path) == ["renamed"]
        finally:
            b.stop()
    finally:
        a.stop()


def test_truncate_by_another_guest_reaches_open_files(server: ServerProc, workdir: Path) -> None:
    """The server recalls A's layouts when B truncates; A's open file then ends there."""
    a = start_mount(server.address, workdir / "guest-a")
    try:
        b = start_mount(server.address, workdir / "guest-b")
        try:
            data = os.urandom(2 * MIB)
            (a.path / "shrinks").write_bytes(data)
            fd = os.open(a.path / "shrinks", os.O_RDONLY)
            idle = os.open(a.path / "shrinks", os.O_RDONLY)  # opened, holds no layout
            try:
                assert os.pread(fd, 3 * MIB, 0) == data  # A holds a layout now
                os.truncate(b.path / "shrinks", 1000)
                deadline = time.monotonic() + 60
                while os.fstat(fd).st_size != 1000:  # the recall travels asynchronously
                    assert time.monotonic() < deadline, "A never learnt the new size"
                    time.sleep(0.02)
                assert os.pread(fd, 3 * MIB, 0) == data[:1000]
                # No layout, no recall: the server's size still wins at the next stat.
                assert os.fstat(idle).st_size == 1000
                assert os.pread(idle, 3 * MIB, 0) == data[:1000]
            finally:
                os.close(fd)
                os.close(idle)
        finally:
            b.stop()
    finally:
        a.stop()


# -- real programs ---------------------------------------------------------


def _fio(mnt: Path, name: str, *args: str) -> dict[str, object]:
    out = subprocess.run(
        [
            "fio",
            f"--name={name}",
            f"--filename={mnt / name}",
            "--ioengine=psync",
            "--fallocate=none",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",  # no *-verify.state files in the working directory
            "--output-format=json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=mnt.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc: dict[str, object] = json.loads(out.stdout[out.stdout.index("{") :])
    return doc


def test_fio_verifies_sequential_and_random(mount: Mount) -> None:
    seq = _fio(mount.path, "seq", "--rw=write", "--bs=1M", "--size=64M")
    # overwrite=1: fio lays the file out first, then writes 4 KiB blocks at random
    # offsets inside it and reads every one back against its checksum.
    rnd = _fio(mount.path, "rnd", "--rw=randwrite", "--bs=4k", "--size=32M", "--overwrite=1")
    for doc in (seq, rnd):
        [job] = doc["jobs"]  # type: ignore[misc]
        assert job["error"] == 0
    assert os.stat(mount.path / "seq").st_size == 64 * MIB
    assert os.stat(mount.path / "rnd").st_size == 32 * MIB


def test_sqlite_twenty_thousand_rows(mnt: Path) -> None:
    db = sqlite3.connect(mnt / "test.db")
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        for start in range(0, 20_000, 5_000):
            with db:
                db.executemany(
                    "INSERT INTO t (id, name, blob) VALUES (?, ?, ?)",
                    ((i, f"row {i}", os.urandom(64)) for i in range(start, start + 5_000)),
                )
        db.execute("CREATE INDEX t_name ON t (name)")
        with db:
            db.execute("DELETE FROM t WHERE id % 7 = 0")
        db.execute("VACUUM")
    finally:
        db.close()
    db = sqlite3.connect(mnt / "test.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM t").fetchone() == (20_000 - 2_858,)
        assert db.execute("SELECT name FROM t WHERE id = 19998").fetchone() == ("row 19998",)
    finally:
        db.close()


def test_sqlite_wal_needs_shared_mmap_and_gets_it_on_the_kernel_backend(
    server: ServerProc, workdir: Path
) -> None:
    """SQLite in WAL mode maps its -shm index MAP_SHARED; on a direct_io file that
    takes FUSE_DIRECT_IO_ALLOW_MMAP, which only the kernel backend asks for."""
    m = start_mount(server.address, workdir / "mnt", backend="kernel")
    try:
        path = m.path / "wal.db"
        db = sqlite3.connect(path)
        reader = None
        try:
            assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
            for start in range(0, 5_000, 1_000):
                with db:
                    db.executemany(
                        "INSERT INTO t (id, name) VALUES (?, ?)",
                        ((i, f"row {i}") for i in range(start, start + 1_000)),
                    )
            # A second connection finds the rows through the shared WAL index.
            reader = sqlite3.connect(path)
            assert reader.execute("SELECT count(*) FROM t").fetchone() == (5_000,)
            with db:
                db.execute("DELETE FROM t WHERE id % 2 = 0")
            assert reader.execute("SELECT count(*) FROM t").fetchone() == (2_500,)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            if reader is not None:
                reader.close()
            db.close()
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute("SELECT name FROM t WHERE id = 4999").fetchone() == ("row 4999",)
        finally:
            db.close()
    finally:
        m.stop()


def test_tar_round_trip_of_a_real_tree(mnt: Path, workdir: Path) -> None:
    names = sorted(p.name for p in Path("/usr/share/doc").iterdir() if p.name[0] in "abcd")
    assert names, "no /usr/share/doc entries to copy"
    out = workdir / "out"
    out.mkdir()

    def copy(src: Path, dst: Path) -> None:
        subprocess.run(
            f"tar -C {src} -cf - {' '.join(names)} | tar -C {dst} -xpf -",
            shell=True,
            check=True,
        )

    def same(a: Path, b: Path) -> None:
        for name in names:
            subprocess.run(["diff", "-r", "--no-dereference", a / name, b / name], check=True)

    doc = Path("/usr/share/doc")
    copy(doc, mnt)
    same(doc, mnt)
    # tar --diff compares modes, owners, sizes, mtimes and contents as well.
    archive = workdir / "doc.tar"
    subprocess.run(["tar", "-C", doc, "-cf", archive, *names], check=True)
    out_d = subprocess.run(["tar", "-C", mnt, "-df", archive], capture_output=True, text=True)
    assert out_d.returncode == 0, out_d.stdout + out_d.stderr
    copy(mnt, out)
    same(doc, out)
    subprocess.run(["rm", "-r", *[mnt / n for n in names]], check=True)
    assert os.listdir(mnt) == []


# -- credentials -----------------------------------------------------------

NOBODY = 65534


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    """Run Python code as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "/usr/bin/python3", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


OPEN_ERRNO = """
import os, sys
try:
    os.close(os.open(sys.argv[1] if len(sys.argv) > 1 else {path!r}, os.O_RDONLY))
    print(0)
except OSError as e:
    print(e.errno)
"""


@pytest.mark.parametrize(
    "options", ["allow_other,default_permissions", "allow_other"], ids=["kernel", "server"]
)
def test_callers_credentials_are_enforced(server: ServerProc, workdir: Path, options: str) -> None:
    """default_permissions: the kernel checks; without it, the server checks the Caller."""
    os.chmod(workdir, 0o755)  # let uid 65534 reach the mountpoint
    m = start_mount(server.address, workdir / "mnt", "-o", options)
    try:
        secret = m.path / "secret"
        secret.write_bytes(b"root only")
        os.chmod(secret, 0o600)
        shared = m.path / "public"
        shared.mkdir(mode=0o777)
        os.chmod(shared, 0o1777)
        out = _as_nobody(OPEN_ERRNO.format(path=str(secret)))
        assert out.stdout.strip() == str(errno.EACCES), out
        os.chmod(secret, 0o604)
        out = _as_nobody(OPEN_ERRNO.format(path=str(secret)))
        assert out.stdout.strip() == "0", out
        # A file made by uid 65534 belongs to it: the Caller travels with Create.
        out = _as_nobody(f"open({str(shared / 'mine')!r}, 'w').write('x')")
        assert out.returncode == 0, out
        st = os.stat(shared / "mine")
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
        out = _as_nobody(f"import os; os.unlink({str(secret)!r})")
        assert "Permission denied" in out.stderr, out
    finally:
        m.stop()


def test_only_the_owner_sets_explicit_times(server: ServerProc, workdir: Path) -> None:
    os.chmod(workdir, 0o755)
    m = start_mount(server.address, workdir / "mnt", "-o", "allow_other")
    try:
        (m.path / "shared").write_bytes(b"x")
        os.chmod(m.path / "shared", 0o666)
        now = _as_nobody(f"import os; os.utime({str(m.path / 'shared')!r})")
        assert now.returncode == 0, now  # a writer may set both times to now
        out = _as_nobody(f"import os; os.utime({str(m.path / 'shared')!r}, (1, 1))")
        assert "Operation not permitted" in out.stderr, out
    finally:
        m.stop()


# -- failure and life cycle ------------------------------------------------


def test_server_gone_gives_eio_not_a_hang(workdir: Path) -> None:
    volume = Volume.create(workdir)
    srv = start_server(volume)
    try:
        m = start_mount(srv.address, workdir / "mnt", "--timeout", "3")
        m.allowed_log.append("session stream lost")  # the server is gone: expected
        m.allowed_log.append("at unmount")  # a late-released handle cannot tell the server
        try:
            (m.path / "f").write_bytes(b"before")
            fd = os.open(m.path / "f", os.O_RDWR)
            try:
                srv.proc.send_signal(signal.SIGSTOP)  # alive but silent: deadlines fire
                wait_stopped(srv.proc.pid)
                try:
                    assert errno_of(os.stat, m.path / "g") == errno.EIO
                    assert errno_of(os.pwrite, fd, b"x" * MIB, 64 * MIB) == errno.EIO
                finally:
                    srv.proc.send_signal(signal.SIGCONT)
                srv.kill()  # gone for good: calls fail at once
                assert errno_of(os.stat, m.path / "f") == errno.EIO
                assert errno_of(os.listdir, m.path) == errno.EIO
            finally:
                os.close(fd)  # nothing unpublished: close needs no server
        finally:
            m.stop()
    finally:
        srv.kill()


def _daxfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(daxfs_cmd(*args), capture_output=True, text=True, timeout=120)


def test_mount_and_umount_commands(server: ServerProc, workdir: Path) -> None:
    mp = workdir / "mp"
    out = _daxfs("mount", server.address, str(mp))
    assert out.returncode == 1 and "does not exist" in out.stderr, out
    mp.mkdir()
    out = _daxfs("mount", "unix:" + str(workdir / "no.sock"), str(mp))
    assert out.returncode == 1 and "cannot use the daxfs server" in out.stderr, out
    assert "Traceback" not in out.stderr
    out = _daxfs("umount", str(mp))
    assert out.returncode == 1 and "not mounted" in out.stderr, out
    # No /dev/fuse: a private mount namespace with an empty /dev.
    cmd = " ".join(daxfs_cmd("mount", server.address, str(mp)))
    out = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs none /dev && exec {cmd}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "/dev/fuse is missing" in out.stderr, out

    # Detached: returns once mounted; umount ends it.
    out = _daxfs("mount", server.address, str(mp), "--log", str(workdir / "bg.log"))
    assert out.returncode == 0, out
    try:
        assert is_mounted(str(mp))
        (mp / "hello").write_bytes(b"bg")
        out = _daxfs("mount", server.address, str(mp))
        assert out.returncode == 1 and "busy" in out.stderr, out
    finally:
        out = _daxfs("umount", str(mp))
    assert out.returncode == 0, out
    assert not is_mounted(str(mp))

    # mount -t daxfs runs mount.daxfs ADDR MOUNTPOINT -o OPTIONS; plain umount works.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from daxfs.cli import mount_main; raise SystemExit(mount_main())",
            server.address,
            str(mp),
            "-o",
            f"rw,region={server.volume.region},timeout=10",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out
    try:
        assert (mp / "hello").read_bytes() == b"bg"
    finally:
        subprocess.run(["umount", str(mp)], check=True)
    assert not is_mounted(str(mp))

    # A daemon killed with SIGKILL leaves a dead mount; umount detaches it.
    m = start_mount(server.address, mp)
    try:
        m.proc.kill()
        m.proc.wait()
        assert errno_of(os.stat, mp) == errno.ENOTCONN
        out = _daxfs("mount", server.address, str(mp))
        assert out.returncode == 1 and "dead FUSE mount" in out.stderr, out
        out = _daxfs("umount", str(mp))
        assert out.returncode == 0 and "detached" in out.stderr, out
        assert not is_mounted(str(mp))
    finally:
        if is_mounted(str(mp)):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_unmounts_cleanly(server: ServerProc, workdir: Path, sig: int) -> None:
    m = start_mount(server.address, workdir / "mnt")
    try:
        (m.path / "x").write_bytes(b"x")
        m.proc.send_signal(sig)
        assert m.proc.wait(timeout=60) == 0
        assert not is_mounted(str(m.path))
    finally:
        m.stop()  # and its log holds no warning or traceback


def test_cached_mode(server: ServerProc, workdir: Path) -> None:
    m = start_mount(server.address, workdir / "mnt", "--cache")
    try:
        path = m.path / "c"
        data = os.urandom(3 * MIB)
        path.write_bytes(data)
        assert path.read_bytes() == data
        with connect(server.address) as c, c.open("/c", "r+b") as f:
            f.pwrite(b"NEW", 0)
        # Close-to-open: a fresh open drops the cached pages (size and mtime changed).
        assert path.read_bytes()[:3] == b"NEW"
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            mm[3:6] = b"MAP"  # the page cache allows a shared mapping
        assert path.read_bytes()[:6] == b"NEWMAP"
    finally:
        m.stop()


# -- the mount against a model ---------------------------------------------

NAMES = st.sampled_from(["a", "b", "c"])
OFFSETS = st.integers(0, 40_000)
DATA = st.binary(min_size=1, max_size=6_000)


def _model_write(node: bytearray, offset: int, data: bytes) -> None:
    if offset > len(node):
        node.extend(bytes(offset - len(node)))
    node[offset : offset + len(data)] = data


def _model_resize(node: bytearray, size: int) -> None:
    if size < len(node):
        del node[size:]
    else:
        node.extend(bytes(size - len(node)))


class MountMachine(RuleBasedStateMachine):
    """Files in one directory of the mount against a dict of bytearrays.

    Descriptors stay open across steps (several per file, some O_APPEND), files
    are renamed over each other and unlinked while open: the mount's shared
    per-inode size and libfuse's hidden files must keep every view right.
    """

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=root))
        self.names: dict[str, bytearray] = {}
        self.fds: list[tuple[int, bytearray, bool]] = []

    def _p(self, name: str) -> Path:
        return self.dir / name

    @rule(name=NAMES, offset=OFFSETS, data=DATA)
    def write_by_path(self, name: str, offset: int, data: bytes) -> None:
        fd = os.open(self._p(name), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            assert os.pwrite(fd, data, offset) == len(data)
        finally:
            os.close(fd)
        _model_write(self.names.setdefault(name, bytearray()), offset, data)

    @rule(name=NAMES, size=OFFSETS)
    def truncate_by_path(self, name: str, size: int) -> None:
        if name not in self.names:
            assert errno_of(os.truncate, self._p(name), size) == errno.ENOENT
            return
        os.truncate(self._p(name), size)
        _model_resize(self.names[name], size)

    @rule(src=NAMES, dst=NAMES)
    def rename(self, src: str, dst: str) -> None:
        if src not in self.names:
            assert errno_of(os.rename, self._p(src), self._p(dst)) == errno.ENOENT
            return
        os.rename(self._p(src), self._p(dst))
        if src != dst:
            self.names[dst] = self.names.pop(src)

    @rule(name=NAMES)
    def unlink(self, name: str) -> None:
        if name not in self.names:
            assert errno_of(os.unlink, self._p(name)) == errno.ENOENT
            return
        os.unlink(self._p(name))
        del self.names[name]

    @precondition(lambda self: len(self.fds) < 4)
    @rule(name=NAMES, append=st.booleans())
    def open_fd(self, name: str, append: bool) -> None:
        if name not in self.names:
            return
        fd = os.open(self._p(name), os.O_RDWR | (os.O_APPEND if append else 0))
        self.fds.append((fd, self.names[name], append))

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 3), offset=OFFSETS, data=DATA)
    def write_by_fd(self, i: int, offset: int, data: bytes) -> None:
        fd, node, append = self.fds[i % len(self.fds)]
        if append:
            assert os.write(fd, data) == len(data)
            offset = len(node)
        else:
            assert os.pwrite(fd, data, offset) == len(data)
        _model_write(node, offset, data)

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 3), size=OFFSETS)
    def truncate_by_fd(self, i: int, size: int) -> None:
        fd, node, _ = self.fds[i % len(self.fds)]
        os.ftruncate(fd, size)
        _model_resize(node, size)

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 3), sync=st.booleans())
    def close_fd(self, i: int, sync: bool) -> None:
        fd, _, _ = self.fds.pop(i % len(self.fds))
        if sync:
            os.fsync(fd)
        os.close(fd)

    @invariant()
    def views_agree(self) -> None:
        assert sorted(os.listdir(self.dir)) == sorted(self.names)
        for name, node in self.names.items():
            assert os.stat(self._p(name)).st_size == len(node)
            assert self._p(name).read_bytes() == node
        for fd, node, _ in self.fds:
            assert os.fstat(fd).st_size == len(node)
            assert os.pread(fd, len(node) + 100, 0) == node

    def teardown(self) -> None:
        for fd, _, _ in self.fds:
            os.close(fd)
        shutil.rmtree(self.dir)


def test_mount_against_a_model(mnt: Path) -> None:
    run_state_machine_as_test(
        lambda: MountMachine(mnt),
        settings=settings(
            max_examples=int(os.environ.get("DAXFS_HYPOTHESIS_EXAMPLES", "12")),
            stateful_step_count=25,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
