"""Metadata caching that stays coherent: what another client changed shows at once.

A client (library or mount) answers stat and lookups from its own cache; the
server tells it what a change made stale before that change returns to its
caller (server/cache_grants.py, client/meta_cache.py). Every test here reads
right after another client's call returned, with no sleep: a stale answer
fails it.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.client import Client, connect
from daxfs.server import acl
from daxfs.shared import errors
from daxfs.testing import FaultyProxy, ServerProc, Volume, fuse_mount, start_server


def write_file(c: Client, path: str, data: bytes) -> None:
    with c.open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def pair(server: ServerProc) -> Iterator[tuple[Client, Client]]:
    with connect(server.address, cache_metadata=True) as a, connect(server.address) as b:
        wait_open(a)
        yield a, b


def wait_open(c: Client) -> None:
    """The cache opens at the session stream's first Renewed."""
    deadline = time.monotonic() + 10
    while True:
        epoch = c.meta_cache.epoch
        c.stat("/")
        hits = c.meta_cache.hits
        c.stat("/")
        if c.meta_cache.hits > hits and c.meta_cache.epoch == epoch:
            return
        assert time.monotonic() < deadline, "the metadata cache never opened"
        time.sleep(0.05)


def test_a_repeated_stat_is_answered_from_the_cache(pair: tuple[Client, Client]) -> None:
    a, b = pair
    write_file(b, "/f", b"x")
    first = a.stat("/f")
    hits = a.meta_cache.hits
    assert a.stat("/f") == first
    assert a.meta_cache.hits == hits + 1


def test_another_clients_chmod_shows_at_once(pair: tuple[Client, Client]) -> None:
    a, b = pair
    write_file(b, "/f", b"x")
    assert a.stat("/f").mode & 0o777 == 0o644 & ~a.umask
    for mode in (0o600, 0o640, 0o604):
        b.chmod("/f", mode)
        assert a.stat("/f").mode & 0o777 == mode


def test_another_clients_write_shows_its_size_at_once(pair: tuple[Client, Client]) -> None:
    a, b = pair
    write_file(b, "/f", b"x")
    assert a.stat("/f").size == 1
    with b.open("/f", "ab") as f:
        f.write(b"y" * 9999)
    assert a.stat("/f").size == 10000
    b.truncate("/f", 3)
    assert a.stat("/f").size == 3


def test_a_name_another_client_creates_or_removes_shows_at_once(
    pair: tuple[Client, Client],
) -> None:
    a, b = pair
    assert not a.exists("/g")
    assert not a.exists("/g")  # now a cached ENOENT
    write_file(b, "/g", b"new")
    assert a.exists("/g")
    b.unlink("/g")
    assert not a.exists("/g")
    b.mkdir("/g")
    assert a.stat("/g").is_dir


def test_renaming_a_directory_moves_every_cached_path_below_it(
    pair: tuple[Client, Client],
) -> None:
    a, b = pair
    b.mkdir("/d")
    b.mkdir("/d/e")
    write_file(b, "/d/e/x", b"1")
    assert a.stat("/d/e/x").size == 1
    assert not a.exists("/n/e/x")
    b.rename("/d", "/n")
    assert not a.exists("/d/e/x")
    assert a.stat("/n/e/x").size == 1


def test_search_permission_taken_away_shows_at_once(server: ServerProc) -> None:
    with (
        connect(server.address) as b,
        connect(server.address, uid=1000, gid=1000, cache_metadata=True) as a,
    ):
        wait_open(a)
        b.mkdir("/d")
        b.chmod("/d", 0o755)
        write_file(b, "/d/x", b"1")
        assert a.stat("/d/x").size == 1
        b.chmod("/d", 0o700)
        with pytest.raises(errors.PermissionDenied):
            a.stat("/d/x")


def test_a_change_too_long_to_name_in_a_reply_drops_the_whole_cache(
    pair: tuple[Client, Client],
) -> None:
    a, _b = pair
    deep = ""
    for _ in range(12):  # about 3 KB: longer than a reply's metadata may carry
        deep += "/" + "d" * 250
        a.mkdir(deep)
    write_file(a, deep + "/f", b"x")
    assert a.stat(deep + "/f").size == 1
    assert a.stat("/").is_dir
    a.truncate(deep + "/f", 7)
    assert a.stat(deep + "/f").size == 7


def test_a_hard_link_change_shows_under_every_name(pair: tuple[Client, Client]) -> None:
    a, b = pair
    write_file(b, "/f", b"x")
    b.link("/f", "/g")
    assert a.stat("/g").nlink == 2
    b.unlink("/f")
    assert a.stat("/g").nlink == 1


def test_extended_attributes_are_cached_and_another_clients_change_shows_at_once(
    pair: tuple[Client, Client],
) -> None:
    a, b = pair
    write_file(b, "/f", b"x")
    b.setxattr("/f", "user.k", b"1")
    assert a.getxattr("/f", "user.k") == b"1"
    hits = a.meta_cache.hits
    assert a.getxattr("/f", "user.k") == b"1"
    assert a.meta_cache.hits > hits
    b.setxattr("/f", "user.k", b"2")
    assert a.getxattr("/f", "user.k") == b"2"
    b.removexattr("/f", "user.k")
    for _ in range(2):  # the second from the cache
        with pytest.raises(errors.NoData):
            a.getxattr("/f", "user.k")
    b.setxattr("/f", "user.k", b"3")
    assert a.getxattr("/f", "user.k") == b"3"
    a.setxattr("/f", "user.k", b"4")  # its own change
    assert a.getxattr("/f", "user.k") == b"4"
    b.chmod("/f", 0o600)  # any change to the inode drops its xattrs too (ACLs follow the mode)
    assert a.getxattr("/f", "user.k") == b"4"


def test_a_created_files_labels_are_known_through_its_writes_until_another_sets_one(
    pair: tuple[Client, Client],
) -> None:
    """The Create reply names the new file's xattrs (none), and the client's own
    writes, commits and setattrs leave that knowledge (the server says they did
    not touch the xattrs): a missing security label or ACL costs no call. Its
    attributes went with the write, so the server no longer tells it about a
    chmod by another client; it still tells it about their xattr changes."""
    a, b = pair
    calls = a.conn.calls["GetXattr"]
    with a.open("/f", "wb") as f:
        f.write(b"x" * 5000)  # GetLayout allocates: the file's attributes move
        for name in ("security.capability", "system.posix_acl_access"):
            with pytest.raises(errors.NoData):
                a.getxattr("/f", name)
        assert a.conn.calls["GetXattr"] == calls
        b.setxattr("/f", "security.test", b"1")  # another client's, right after the write
        assert a.getxattr("/f", "security.test") == b"1"
    # Its own setattrs keep the value too (no permission decides a label).
    a.setattr("/f", mtime_ns=1_000_000_000)
    a.chmod("/f", 0o600)
    calls = a.conn.calls["GetXattr"]
    assert a.getxattr("/f", "security.test") == b"1"
    assert a.conn.calls["GetXattr"] == calls
    b.removexattr("/f", "security.test")
    with pytest.raises(errors.NoData):
        a.getxattr("/f", "security.test")
    b.setxattr("/f", "system.posix_acl_access", _acl(0o640))
    assert a.getxattr("/f", "system.posix_acl_access") == _acl(0o640)


def _acl(mode: int) -> bytes:
    """An access ACL with a named user entry (so it is stored, not folded into the mode)."""
    return acl.pack(
        [
            (acl.ACL_USER_OBJ, (mode >> 6) & 7, 0),
            (acl.ACL_USER, 4, 1234),
            (acl.ACL_GROUP_OBJ, (mode >> 3) & 7, 0),
            (acl.ACL_MASK, (mode >> 3) & 7, 0),
            (acl.ACL_OTHER, mode & 7, 0),
        ]
    )


def test_a_listing_fills_the_cache_with_its_entries(pair: tuple[Client, Client]) -> None:
    a, b = pair
    b.mkdir("/d")
    write_file(b, "/d/x", b"1")
    assert a.listdir("/d") == ["x"]
    hits = a.meta_cache.hits
    assert a.stat("/d/x").size == 1
    assert a.meta_cache.hits == hits + 1
    write_file(b, "/d/x", b"22")  # and the server tells a when it changes
    assert a.stat("/d/x").size == 2


def test_a_clients_own_change_shows_to_itself(pair: tuple[Client, Client]) -> None:
    a, _b = pair
    write_file(a, "/f", b"x")
    assert a.stat("/f").size == 1
    a.truncate("/f", 5)
    assert a.stat("/f").size == 5
    a.chmod("/f", 0o600)
    assert a.stat("/f").mode & 0o777 == 0o600
    a.rename("/f", "/h")
    assert not a.exists("/f")


def test_a_clients_own_changes_are_kept_with_their_replies(pair: tuple[Client, Client]) -> None:
    """The server grants a change's reply: stat after mkdir, mknod, symlink,
    link, chmod or a create asks nothing, and the other client's change shows."""
    a, b = pair
    a.mkdir("/d")
    a.mknod("/d/n", 0o100644)
    a.chmod("/d/n", 0o600)
    a.link("/d/n", "/d/h")  # (the link changed /d/n's nlink: that answer went)
    a.symlink("/d/n", "/d/s")
    with a.open("/d/c", "xb"):
        pass
    calls = a.conn.calls["GetAttr"]
    h = a.stat("/d/h")
    assert h.nlink == 2 and h.mode & 0o777 == 0o600
    assert stat.S_ISLNK(a.stat("/d/s").mode)
    assert a.stat("/d/c").size == 0
    assert a.conn.calls["GetAttr"] == calls
    b.chmod("/d/n", 0o640)
    assert a.stat("/d/h").mode & 0o777 == 0o640
    b.unlink("/d/n")
    assert a.stat("/d/h").nlink == 1


def test_a_directory_the_client_listed_answers_no_such_name_until_another_creates_it(
    pair: tuple[Client, Client],
) -> None:
    """A new directory's creator, or a client that listed one, knows every name
    in it: a missing name costs no call; another client's create of it shows at
    once, and so do its own creates."""
    a, b = pair
    a.mkdir("/d")
    b.mkdir("/e")
    assert a.stat("/e").is_dir
    assert a.listdir("/e") == []
    calls = a.conn.calls["GetAttr"]
    for _ in range(3):
        assert not a.exists("/d/x") and not a.exists("/e/x")
    assert a.conn.calls["GetAttr"] == calls
    write_file(b, "/d/x", b"1")
    b.mkdir("/e/x")
    assert a.stat("/d/x").size == 1
    assert a.stat("/e/x").is_dir
    b.unlink("/d/x")
    assert not a.exists("/d/x")
    a.mkdir("/f")
    with a.open("/f/one", "xb"):
        pass
    calls = a.conn.calls["GetAttr"]
    assert not a.exists("/f/two")
    assert a.exists("/f/one")
    assert a.conn.calls["GetAttr"] == calls
    b.rename("/f/one", "/f/two")
    assert a.exists("/f/two") and not a.exists("/f/one")
    b.chmod("/f", 0o700)  # search permission is the listing's too
    assert not a.exists("/f/three")


def test_an_answer_overtaken_by_its_invalidation_is_not_kept(
    server: ServerProc, proxy: FaultyProxy
) -> None:
    with (
        connect(server.address) as b,
        connect(proxy.address, timeout=10, cache_metadata=True) as a,
    ):
        wait_open(a)
        write_file(b, "/f", b"x")
        b.chmod("/f", 0o644)
        proxy.hold_next("GetAttr")
        got: list[int] = []
        asking = threading.Thread(target=lambda: got.append(a.stat("/f").mode & 0o777))
        asking.start()
        assert proxy.holding.wait(10), "the stat never reached the server"
        # The server answered 0644 and granted it; the reply is in flight when
        # b's chmod invalidates it (a acknowledges on its stream meanwhile).
        b.chmod("/f", 0o600)
        proxy.release()
        asking.join(10)
        assert got == [0o644]  # the answer of its time, given to its caller...
        assert a.stat("/f").mode & 0o777 == 0o600  # ...but not kept


def test_a_frozen_cacher_holds_a_change_back_only_until_its_lease_ends(
    volume: Volume,
) -> None:
    """A frozen guest cannot acknowledge; the change waits for its lease, then it
    fences its cache on thawing before answering anything."""
    srv = start_server(volume, "--lease-seconds", "1.5")
    script = textwrap.dedent(
        f"""
        import sys, time
        from daxfs.client import connect
        c = connect({srv.address!r}, cache_metadata=True)
        while True:
            try:
                c.stat("/f")
                break
            except Exception:
                time.sleep(0.05)
        for _ in range(100):  # until the cache is open and holds /f
            c.stat("/f")
            time.sleep(0.02)
        print("cached", flush=True)
        for line in sys.stdin:
            print(oct(c.stat("/f").mode & 0o777), flush=True)
        """
    )
    try:
        with connect(srv.address) as b:
            write_file(b, "/f", b"x")
            b.chmod("/f", 0o644)
            child = subprocess.Popen(
                [sys.executable, "-c", script],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdin is not None and child.stdout is not None
                assert child.stdout.readline().strip() == "cached"
                child.send_signal(signal.SIGSTOP)
                b.chmod("/f", 0o600)  # returns once the frozen child's lease is over
                child.send_signal(signal.SIGCONT)
                child.stdin.write("stat\n")
                child.stdin.flush()
                assert child.stdout.readline().strip() == "0o600"
            finally:
                child.kill()
                child.wait()
                for pipe in (child.stdin, child.stdout):
                    if pipe is not None:
                        pipe.close()
    finally:
        srv.stop()


@pytest.mark.fuse
def test_through_a_mount_another_clients_change_shows_at_once(
    server: ServerProc, workdir: Path
) -> None:
    mnt = workdir / "mnt"
    with connect(server.address) as b, fuse_mount(server.address, mnt, "--cache-metadata"):
        write_file(b, "/f", b"x")
        os.stat(mnt / "f")
        for mode in (0o600, 0o640):
            b.chmod("/f", mode)
            assert os.stat(mnt / "f").st_mode & 0o777 == mode
        b.rename("/f", "/g")
        assert not (mnt / "f").exists()
        assert (mnt / "g").stat().st_size == 1
        with b.open("/g", "ab") as f:
            f.write(b"y" * 99)
        assert (mnt / "g").stat().st_size == 100
