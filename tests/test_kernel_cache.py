"""The kernel caches metadata coherently: a kernel-backend mount with ``--cache-metadata``.

The kernel keeps what a lookup or getattr answered for the rest of the
client's lease, so repeated stats never reach the daemon; and when another
guest changes a file, the server tells this client before the change returns,
and the daemon makes the kernel drop the entry (FUSE_NOTIFY_INVAL_INODE /
_ENTRY, client/fuse/kernel/notifier.py). So the next stat after the other
guest's call returns sees the change, as without any cache.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.client import Client
from daxfs.testing import Mount, ServerProc, fuse_mount

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel backend mounts as root"),
]


@pytest.fixture
def cached(server: ServerProc, workdir: Path) -> Iterator[Mount]:
    with fuse_mount(server.address, workdir / "mnt", "--cache-metadata", backend="kernel") as m:
        wait_caching(m)
        yield m


def wait_caching(m: Mount) -> None:
    """Until the mount's cache answers: it opens at the session stream's first
    Renewed, which a loaded machine may deliver after the first requests (then
    each of them asks the server, and a test counting calls fails)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        calls = rpcs(m, "GetAttr")  # its own getxattr asks for the root's attributes
        if rpcs(m, "GetAttr") == calls:
            return
        time.sleep(0.01)


def requests(m: Mount, *ops: str) -> int:
    """FUSE requests of these kinds the kernel has sent the daemon so far."""
    doc = json.loads(os.getxattr(m.path, "user.daxfs.iostats"))
    return sum(int(doc["requests"].get(op, 0)) for op in ops)


def rpcs(m: Mount, *methods: str) -> int:
    """Calls of these methods the mount's client has made to the server so far."""
    doc = json.loads(os.getxattr(m.path, "user.daxfs.iostats"))
    return sum(int(doc["rpcs"].get(name, 0)) for name in methods)


def test_repeated_stats_are_answered_by_the_kernel(client: Client, cached: Mount) -> None:
    with client.open("/f", "wb") as f:
        f.write(b"abc")
    assert os.stat(cached.path / "f").st_size == 3
    before = requests(cached, "LOOKUP", "GETATTR")
    for _ in range(50):
        assert os.stat(cached.path / "f").st_size == 3
    assert requests(cached, "LOOKUP", "GETATTR") - before <= 2


def test_a_missing_name_is_cached_too_and_its_creation_is_seen(
    client: Client, cached: Mount
) -> None:
    assert not (cached.path / "new").exists()
    before = requests(cached, "LOOKUP")
    for _ in range(20):
        assert not (cached.path / "new").exists()
    assert requests(cached, "LOOKUP") - before <= 1
    client.mkdir("/new")
    assert (cached.path / "new").is_dir()


def test_another_guests_changes_are_seen_by_the_next_call(client: Client, cached: Mount) -> None:
    with client.open("/f", "wb") as f:
        f.write(b"abc")
    client.symlink("/f", "/lnk")
    p = cached.path
    # Warm the kernel's caches.
    assert stat.S_IMODE(os.stat(p / "f").st_mode) == 0o644
    assert os.readlink(p / "lnk") == "/f"
    assert not (p / "g").exists()
    # Mode, size, owner: each seen at once.
    client.chmod("/f", 0o600)
    assert stat.S_IMODE(os.stat(p / "f").st_mode) == 0o600
    with client.open("/f", "ab") as f:
        f.write(b"defg")
    assert os.stat(p / "f").st_size == 7
    client.setattr("/f", uid=1234)
    assert os.stat(p / "f").st_uid == 1234
    # A new name, a rename over it, a removed name.
    with client.open("/g", "wb") as f:
        f.write(b"g")
    assert (p / "g").read_bytes() == b"g"
    client.rename("/g", "/f")
    assert (p / "f").read_bytes() == b"g"
    assert not (p / "g").exists()
    client.unlink("/f")
    assert not (p / "f").exists()
    client.unlink("/lnk")
    assert not os.path.lexists(p / "lnk")


def test_two_caching_mounts_see_each_others_changes(server: ServerProc, workdir: Path) -> None:
    with (
        fuse_mount(server.address, workdir / "a", "--cache-metadata", backend="kernel") as a,
        fuse_mount(server.address, workdir / "b", "--cache-metadata", backend="kernel") as b,
    ):
        (a.path / "d").mkdir()
        (a.path / "d" / "x").write_bytes(b"1")
        assert (b.path / "d" / "x").read_bytes() == b"1"
        assert sorted(os.listdir(b.path / "d")) == ["x"]
        os.chmod(a.path / "d" / "x", 0o640)
        assert stat.S_IMODE(os.stat(b.path / "d" / "x").st_mode) == 0o640
        os.rename(a.path / "d" / "x", a.path / "d" / "y")
        assert not (b.path / "d" / "x").exists()
        assert (b.path / "d" / "y").read_bytes() == b"1"
        os.chmod(b.path / "d", 0o700)
        assert stat.S_IMODE(os.stat(a.path / "d").st_mode) == 0o700
        os.unlink(b.path / "d" / "y")
        assert not (a.path / "d" / "y").exists()
        os.rmdir(a.path / "d")
        assert not (b.path / "d").exists()


def test_without_default_permissions_a_shared_mount_caches_nothing_in_the_kernel(
    client: Client, server: ServerProc, workdir: Path
) -> None:
    """With allow_other and no default_permissions the kernel checks no permission:
    a name it kept would let another user skip the server's search-permission check."""
    with fuse_mount(
        server.address, workdir / "m", "-o", "allow_other", "--cache-metadata", backend="kernel"
    ) as m:
        with client.open("/f", "wb") as f:
            f.write(b"abc")
        os.stat(m.path / "f")
        before = requests(m, "LOOKUP", "GETATTR")
        for _ in range(10):
            os.stat(m.path / "f")
        assert requests(m, "LOOKUP", "GETATTR") - before >= 10


def test_a_cached_stat_is_answered_by_the_kernel_with_the_daemon_stopped(
    client: Client, cached: Mount
) -> None:
    """The daemon frozen (SIGSTOP), a name and its attributes seen before still
    stat: the kernel answered them itself."""
    client.mkdir("/d")
    with client.open("/d/f", "wb") as f:
        f.write(b"abc")
    assert os.stat(cached.path / "d" / "f").st_size == 3
    cached.proc.send_signal(signal.SIGSTOP)
    try:
        # A hang here (the kernel asking the stopped daemon) is killed, and fails.
        code = f"import os; print(os.stat({str(cached.path / 'd' / 'f')!r}).st_size)"
        probe = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    finally:
        cached.proc.send_signal(signal.SIGCONT)
    assert probe.stdout.strip() == "3", probe.stderr


def test_the_mounts_own_changes_keep_what_the_kernel_caches(cached: Mount) -> None:
    """Creating, writing and removing a name in a directory through the mount does
    not make the kernel look up the directory's other names again (the kernel
    made the change and updated its caches itself)."""
    d = cached.path / "d"
    d.mkdir()
    for i in range(5):
        (d / f"f{i}").write_bytes(b"x")
    for i in range(5):
        os.stat(d / f"f{i}")
    (d / "new").write_bytes(b"y")
    os.chmod(d / "new", 0o600)
    os.unlink(d / "new")
    before = requests(cached, "LOOKUP", "GETATTR")
    for _ in range(3):
        for i in range(5):
            assert os.stat(d / f"f{i}").st_size == 1
    assert requests(cached, "LOOKUP", "GETATTR") - before <= 2


def test_an_own_change_shows_under_every_name_of_a_hard_linked_file(cached: Mount) -> None:
    """Two names of one file are two kernel inodes here: a change through one
    name drops the other's attributes."""
    p = cached.path
    (p / "a").write_bytes(b"x")
    os.link(p / "a", p / "b")
    assert os.stat(p / "b").st_nlink == 2
    os.chmod(p / "a", 0o600)
    assert stat.S_IMODE(os.stat(p / "b").st_mode) == 0o600
    os.unlink(p / "a")
    assert os.stat(p / "b").st_nlink == 1


def test_ls_l_of_a_thousand_files_is_one_listing(client: Client, cached: Mount) -> None:
    """READDIRPLUS: the listing carries each name's entry and attributes, so
    ``ls -l`` costs no lookup and no getattr per file, and the names of each
    file's extended attributes, so the ACLs and security labels it asks about
    cost nothing either (the second time, nothing at all: cached)."""
    client.mkdir("/big")
    for i in range(1000):
        client.mknod(f"/big/f{i:04}", stat.S_IFREG | 0o644)
    env = {**os.environ, "LC_ALL": "C"}

    def ls_l() -> None:
        out = subprocess.run(
            ["ls", "-l", str(cached.path / "big")],
            capture_output=True, text=True, check=True, env=env, timeout=300,
        ).stdout  # fmt: skip
        assert len(out.splitlines()) == 1001  # "total" and the files

    per_name = ("LOOKUP", "GETATTR")
    every = ("ReadDir", "GetAttr", "Lookup", "GetXattr")
    before, calls = requests(cached, *per_name), rpcs(cached, *every)
    ls_l()
    assert requests(cached, *per_name) - before <= 10
    assert requests(cached, "READDIRPLUS") >= 1
    assert rpcs(cached, *every) - calls <= 10
    before, calls = requests(cached, *per_name), rpcs(cached, "ReadDir", "GetAttr", "GetXattr")
    ls_l()
    assert requests(cached, *per_name) - before <= 10
    assert rpcs(cached, "ReadDir", "GetAttr", "GetXattr") - calls <= 10


def test_extended_attributes_are_cached_and_another_guests_changes_seen(
    client: Client, cached: Mount
) -> None:
    with client.open("/f", "wb") as f:
        f.write(b"abc")
    client.setxattr("/f", "user.k", b"1")
    f = cached.path / "f"
    assert os.getxattr(f, "user.k") == b"1"
    calls = rpcs(cached, "GetXattr")
    for _ in range(10):
        assert os.getxattr(f, "user.k") == b"1"
    assert rpcs(cached, "GetXattr") - calls <= 1
    client.setxattr("/f", "user.k", b"2")  # another guest's change: seen at once
    assert os.getxattr(f, "user.k") == b"2"
    client.removexattr("/f", "user.k")
    for _ in range(3):  # a missing attribute is an answer kept too
        with pytest.raises(OSError) as missing:
            os.getxattr(f, "user.k")
        assert missing.value.errno == errno.ENODATA
    client.setxattr("/f", "user.k", b"3")
    assert os.getxattr(f, "user.k") == b"3"
    os.setxattr(f, "user.k", b"4")  # the mount's own change
    assert os.getxattr(f, "user.k") == b"4"
    assert client.getxattr("/f", "user.k") == b"4"


def test_a_create_through_the_mount_is_one_call_and_its_release(cached: Mount) -> None:
    """open(O_CREAT) + fstat + close of a new name, then its unlink: Create and
    Release, then Unlink, and nothing else. The new directory's listing answers
    the lookup of each new name (its creator knows it holds no other), the
    create's reply is kept (so fstat and the unlink's lookup ask nothing). The
    Releases ride with the next calls (client/release_queue.py): two round
    trips per file."""
    d = cached.path / "d"
    d.mkdir()
    every = ("GetAttr", "Lookup", "Create", "Release", "CommitLayout", "Unlink")
    before = {m: rpcs(cached, m) for m in every}
    carried = json.loads(os.getxattr(cached.path, "user.daxfs.iostats"))["rpcs_carried"]
    for i in range(10):
        with open(d / f"f{i}", "w"):  # Python's open() fstat()s the new file
            pass
    for i in range(10):
        os.unlink(d / f"f{i}")
    # The kernel does not wait for a RELEASE, nor the daemon for its call.
    deadline = time.monotonic() + 30
    while rpcs(cached, "Release") - before["Release"] < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    done = {m: rpcs(cached, m) - before[m] for m in every}
    assert done == {
        "GetAttr": 0, "Lookup": 0, "Create": 10, "Release": 10, "CommitLayout": 0, "Unlink": 10
    }  # fmt: skip
    doc = json.loads(os.getxattr(cached.path, "user.daxfs.iostats"))
    # Each rode with the next Create or Unlink, unless it waited longer than
    # CARRY_WAIT_S for one (a stalled daemon: then the worker sent it alone).
    assert doc["rpcs_carried"] - carried >= 5


def test_a_name_another_guest_creates_is_seen_after_the_mount_said_it_was_absent(
    client: Client, cached: Mount
) -> None:
    """The mount made the directory, so it answered "no such name" itself (and
    let the kernel keep that); another guest's create of the name is seen by
    the next lookup, and so is its removal and a rename onto another name."""
    d = cached.path / "d"
    d.mkdir()
    calls = rpcs(cached, "GetAttr", "Lookup")
    for _ in range(3):
        assert not (d / "x").exists()
    assert rpcs(cached, "GetAttr", "Lookup") == calls
    with client.open("/d/x", "wb") as f:
        f.write(b"abc")
    assert (d / "x").read_bytes() == b"abc"
    assert not (d / "y").exists()
    client.rename("/d/x", "/d/y")
    assert not (d / "x").exists()
    assert (d / "y").read_bytes() == b"abc"
    client.unlink("/d/y")
    assert not (d / "y").exists()
    (d / "z").write_bytes(b"z")  # the mount's own create after all that
    assert client.stat("/d/z").size == 1


def test_mkdir_rename_and_rmdir_through_the_mount_are_one_call_each(cached: Mount) -> None:
    """The lookups of the new names are answered from the listing the mount
    keeps of a directory it made, updated by its own mkdir, rename and rmdir."""
    d = cached.path / "d"
    d.mkdir()
    every = ("GetAttr", "Lookup", "Mkdir", "Rename", "Rmdir")
    before = {m: rpcs(cached, m) for m in every}
    for i in range(5):
        os.mkdir(d / f"a{i}")
    for i in range(5):
        os.rename(d / f"a{i}", d / f"b{i}")
    for i in range(5):
        os.rmdir(d / f"b{i}")
    done = {m: rpcs(cached, m) - before[m] for m in every}
    assert done == {"GetAttr": 0, "Lookup": 0, "Mkdir": 5, "Rename": 5, "Rmdir": 5}
    assert os.listdir(d) == []


def test_chmod_chown_and_utime_through_the_mount_are_one_call_each(cached: Mount) -> None:
    """A SETATTR costs its SetAttr and nothing after it (the reply is kept and
    answers the kernel's question), by path and by descriptor alike, and the
    answer is the new state."""
    f = cached.path / "f"
    f.write_bytes(b"abc")
    every = ("GetAttr", "SetAttr")
    before = {m: rpcs(cached, m) for m in every}
    os.chmod(f, 0o600)
    os.chown(f, 1234, 5678)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    fd = os.open(f, os.O_RDWR)
    try:
        os.fchmod(fd, 0o640)
        assert {m: rpcs(cached, m) - before[m] for m in every} == {"GetAttr": 0, "SetAttr": 4}
        os.utime(fd, ns=(3_000_000_000, 4_000_000_000))
        st = os.fstat(fd)
    finally:
        os.close(fd)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert (st.st_atime_ns, st.st_mtime_ns, st.st_size) == (3_000_000_000, 4_000_000_000, 3)


def _wait_releases(m: Mount, want: int) -> None:
    """The daemon answers RELEASE before its Release call goes out: wait for them."""
    deadline = time.monotonic() + 30
    while rpcs(m, "Release") < want and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_tar_like_extraction_asks_for_no_xattr_and_no_attributes(cached: Mount) -> None:
    """What tar x does per file: create, write, futimens, fchown, fchmod, close.
    The kernel asks for security.capability (the chown may have to drop file
    capabilities): the create's reply named the file's xattrs (none), and the
    mount's own write and setattrs left them alone, so that is answered here;
    the futimens finds the inode to publish the write by the name the create
    kept. What is left: Create, GetLayout, CommitLayout, three SetAttr, Release."""
    d = cached.path / "d"
    d.mkdir()
    every = ("GetXattr", "GetAttr", "Lookup", "Create", "GetLayout", "CommitLayout", "SetAttr")
    before = {m: rpcs(cached, m) for m in (*every, "Release")}
    for i in range(10):
        fd = os.open(d / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * 2048)
            os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
            os.fchown(fd, 1234, 5678)
            os.fchmod(fd, 0o640)
        finally:
            os.close(fd)
    _wait_releases(cached, before["Release"] + 10)
    done = {m: rpcs(cached, m) - before[m] for m in every}
    assert (done["GetXattr"], done["GetAttr"], done["Lookup"]) == (0, 0, 0), done
    assert done["Create"] == 10 and sum(done.values()) <= 10 * 6, done
    st = os.stat(d / "f9")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o640, 1234, 5678, 2048)
    assert st.st_mtime_ns == 2_000_000_000


def test_a_label_another_guest_sets_on_a_file_the_mount_created_is_seen(
    client: Client, cached: Mount
) -> None:
    """The mount answers "no such label" for a file it created without asking,
    through its own write and setattrs (which end its grant of the file's
    attributes but not of its xattrs); another guest's setxattr or removexattr
    is seen by the next getxattr all the same."""
    d = cached.path / "d"
    d.mkdir()
    f = d / "f"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"abc")  # a GetLayout: the mount's own change of the attributes
        calls = rpcs(cached, "GetXattr")
        with pytest.raises(OSError) as missing:
            os.getxattr(f, "security.test")
        assert missing.value.errno == errno.ENODATA
        assert rpcs(cached, "GetXattr") == calls
        client.setxattr("/d/f", "security.test", b"1")
        assert os.getxattr(f, "security.test") == b"1"
        os.fchmod(fd, 0o600)
        client.removexattr("/d/f", "security.test")
        with pytest.raises(OSError) as missing:
            os.getxattr(f, "security.test")
        assert missing.value.errno == errno.ENODATA
        os.write(fd, b"defg" * 2048)  # allocates again
        client.setxattr("/d/f", "security.other", b"2")
        assert os.getxattr(f, "security.other") == b"2"
    finally:
        os.close(fd)
    client.setxattr("/d/f", "security.test", b"3")  # after the close's commit and release
    assert os.getxattr(f, "security.test") == b"3"
