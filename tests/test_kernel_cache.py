"""The kernel caches metadata coherently: a kernel-backend mount with ``--cache-metadata``.

The kernel keeps what a lookup or getattr answered for the rest of the
client's lease, so repeated stats never reach the daemon; and when another
guest changes a file, the server tells this client before the change returns,
and the daemon makes the kernel drop the entry (FUSE_NOTIFY_INVAL_INODE /
_ENTRY, client/fuse/kernel/notifier.py). So the next stat after the other
guest's call returns sees the change, as without any cache.
"""

from __future__ import annotations

import json
import os
import stat
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
        yield m


def requests(m: Mount, *ops: str) -> int:
    """FUSE requests of these kinds the kernel has sent the daemon so far."""
    doc = json.loads(os.getxattr(m.path, "user.daxfs.iostats"))
    return sum(int(doc["requests"].get(op, 0)) for op in ops)


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
