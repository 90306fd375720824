"""One client, one size per file: what every open file of a client shares (client/inodes.py).

A client that opens a file several times (a program with several DaxFiles,
the FUSE mount with one per open(2)) knows one size for it, learns a recall
of it once, and publishes its growth before any size change. The first part
states the model on its own (no server); the rest checks it through the
library and the FUSE operations over a real server, counting the calls that
reach the server through a real proxy (``FaultyProxy.calls``).
"""

from __future__ import annotations

import itertools
import os
import random
import stat
from collections.abc import Iterator

import pytest

from daxfs.client import Client, connect
from daxfs.client.fuse.operations import DaxfsOperations
from daxfs.client.inodes import Inodes, Span
from daxfs.shared.attr import Attr
from daxfs.shared.extent import InodeId
from daxfs.shared.format import MIB
from daxfs.shared.permissions import Identity
from daxfs.testing import FaultyProxy, wait_until


def attr(size: int, *, ino: int = 7, mode: int = stat.S_IFREG | 0o644, gid: int = 100) -> Attr:
    return Attr(InodeId(ino), 1, mode, 1, 1000, gid, size, 0, 0, 0, 0, 4096)


# -- the model ------------------------------------------------------------------


def test_every_open_file_of_an_inode_shares_one_state() -> None:
    inodes = Inodes()
    a = inodes.open(attr(0), 0, truncated=False, writer=11)
    b = inodes.open(attr(0), 0, truncated=False)
    assert a is b and a.opens == 2 and a.writers == {11}
    a.wrote(0, 5000)
    assert b.size == 5000 and b.published == 0


def test_growth_not_published_wins_over_the_servers_size_and_then_the_server_wins() -> None:
    inodes = Inodes()
    inode = inodes.open(attr(0), 0, truncated=False, writer=11)
    inode.wrote(0, 5000)
    assert inodes.seen(attr(100), recalls_before=0).size == 5000
    plan = inode.to_publish()
    assert plan is not None and plan.new_size == 5000
    inode.published_as(plan)
    assert inode.to_publish() is None
    # Everything published: a smaller size from the server is another guest's truncate.
    assert inodes.seen(attr(100), recalls_before=0).size == 100


def test_a_write_inside_the_file_publishes_mtime_only() -> None:
    inode = Inodes().open(attr(8192), 0, truncated=False, writer=11)
    inode.wrote(0, 10)
    plan = inode.to_publish()
    assert plan is not None and plan.new_size is None


def test_a_write_during_a_publication_is_published_by_the_next() -> None:
    inode = Inodes().open(attr(0), 0, truncated=False, writer=11)
    inode.wrote(0, 10)
    plan = inode.to_publish()
    assert plan is not None
    inode.wrote(10, 20)
    inode.published_as(plan)
    again = inode.to_publish()
    assert again is not None and again.new_size == 20


def test_a_recall_makes_the_size_stale_until_one_refresh() -> None:
    inodes = Inodes()
    inode = inodes.open(attr(8192), 0, truncated=False)
    inodes.recalled(inode.ino)
    assert inode.stale(inodes.recall_count(inode.ino))
    inode.refreshed(100, inodes.recall_count(inode.ino), inode.version())
    assert not inode.stale(inodes.recall_count(inode.ino))
    assert inode.size == inode.published == 100


def test_a_getattr_answered_after_a_recall_is_the_refresh() -> None:
    inodes = Inodes()
    inode = inodes.open(attr(8192), 0, truncated=False)
    inodes.recalled(inode.ino)
    before = inodes.recalls_total
    assert inodes.seen(attr(100), recalls_before=before).size == 100
    assert not inode.stale(inodes.recall_count(inode.ino))


def test_a_getattr_that_raced_with_a_recall_is_not_the_refresh() -> None:
    inodes = Inodes()
    inode = inodes.open(attr(8192), 0, truncated=False)
    before = inodes.recalls_total
    inodes.recalled(inode.ino)  # arrived while the GetAttr was in flight
    inodes.seen(attr(8192), recalls_before=before)
    assert inode.stale(inodes.recall_count(inode.ino))


def test_a_refresh_keeps_growth_written_while_it_was_in_flight() -> None:
    inodes = Inodes()
    inode = inodes.open(attr(8192), 0, truncated=False, writer=11)
    inodes.recalled(inode.ino)
    version = inode.version()
    inode.wrote(0, 9000)
    inode.refreshed(100, inodes.recall_count(inode.ino), version)
    assert inode.size == 9000 and inode.published == 100


def test_an_o_trunc_open_drops_the_growth_of_the_others() -> None:
    inodes = Inodes()
    inode = inodes.open(attr(0), 0, truncated=False, writer=11)
    inode.wrote(0, 9000)
    assert inodes.open(attr(0), 0, truncated=True, writer=12) is inode
    assert inode.size == 0 and inode.to_publish() is not None  # mtime of the writes
    assert inode.take_written() == []


def test_written_ranges_merge_and_a_truncate_clips_them() -> None:
    inode = Inodes().open(attr(0), 0, truncated=False, writer=11)
    inode.wrote(0, 10)
    inode.wrote(5, 20)
    inode.wrote(100, 200)
    inode.truncated(150)
    assert inode.take_written() == [Span(0, 20), Span(100, 150)]
    assert inode.take_written() == []


def test_written_ranges_are_the_union_of_the_writes() -> None:
    rnd = random.Random(3)
    inode = Inodes().open(attr(0), 0, truncated=False, writer=11)
    written: set[int] = set()
    for _ in range(300):
        start = rnd.randrange(0, 400)
        end = start + rnd.randrange(1, 30)
        inode.wrote(start, end)
        written.update(range(start, end))
    spans = inode.take_written()
    assert all(a.end < b.start for a, b in itertools.pairwise(spans))  # sorted, disjoint
    assert {b for s in spans for b in range(s.start, s.end)} == written


def test_the_last_close_is_the_last_of_the_inode() -> None:
    inodes = Inodes()
    a = inodes.open(attr(0), 0, truncated=False)
    inodes.open(attr(0), 0, truncated=False)
    assert not inodes.close(a)
    assert inodes.close(a)
    assert inodes.get(a.ino) is None


def test_a_new_session_starts_a_new_inode_and_the_old_ones_last_close_is_not_the_last() -> None:
    inodes = Inodes()
    old = inodes.open(attr(5000), 0, truncated=False)
    inodes.new_session()
    new = inodes.open(attr(0), 1, truncated=False)
    assert new is not old and new.size == 0 and old.size == 5000
    assert not inodes.close(old)
    assert inodes.close(new)


@pytest.mark.parametrize(
    ("mode", "writer", "cleared"),
    [
        (0o4755, Identity(1000, 100), stat.S_ISUID),
        (0o6755, Identity(1000, 100), stat.S_ISUID | stat.S_ISGID),  # group execute set
        (0o2745, Identity(1000, 100), 0),  # in the group, no group execute
        (0o2745, Identity(1000, 5), stat.S_ISGID),  # not in the group
        (0o2745, Identity(1000, 5, (100,)), 0),  # in the group by a supplementary id
        (0o6755, Identity(0, 0), 0),  # root clears nothing
        (0o755, Identity(1000, 100), 0),
    ],
)
def test_a_write_clears_set_id_bits_as_linux_does(
    mode: int, writer: Identity, cleared: int
) -> None:
    inode = Inodes().open(attr(0, mode=stat.S_IFREG | mode, gid=100), 0, truncated=False)
    assert inode.setid_to_clear(writer) == cleared


# -- through the library and the FUSE operations, over a real server ------------


@pytest.fixture
def counted(proxy: FaultyProxy) -> Iterator[Client]:
    """The client under test: its calls reach the server through the counting proxy."""
    with connect(proxy.address) as c:
        yield c


def write_file(c: Client, path: str, data: bytes) -> None:
    with c.open(path, "wb") as f:
        f.write(data)


def truncate_elsewhere(other: Client, under_test: Client, path: str, size: int) -> None:
    """Another client truncates; the one under test holds a layout, so it is recalled."""
    recalls = under_test.recalls
    other.truncate(path, size)
    wait_until(lambda: under_test.recalls > recalls, "the recall")


def test_a_write_through_one_open_file_is_the_size_the_others_report_without_a_getattr(
    counted: Client, proxy: FaultyProxy, client: Client
) -> None:
    with counted.open("/f", "w+b") as f, counted.open("/f", "rb") as g:
        getattrs = proxy.calls["GetAttr"]
        f.write(b"x" * 10000)
        assert g.size == 10000
        assert g.read() == b"x" * 10000
        assert counted.stat("/f").size == 10000  # stat too: one size for the client
        assert client.stat("/f").size == 0  # published at close, not before
        assert proxy.calls["GetAttr"] == getattrs + 1  # the stat's own
    assert client.stat("/f").size == 10000


def test_a_recall_costs_one_getattr_per_file_not_per_open_file(
    counted: Client, proxy: FaultyProxy, client: Client
) -> None:
    data = os.urandom(4 * MIB)
    write_file(client, "/f", data)
    with counted.open("/f", "rb") as f, counted.open("/f", "rb") as g:
        assert f.pread(10, 0) == g.pread(10, 0) == data[:10]
        truncate_elsewhere(client, counted, "/f", 100)
        getattrs = proxy.calls["GetAttr"]
        assert f.pread(4096, 0) == data[:100]
        assert g.pread(4096, 0) == data[:100]
        assert f.size == g.size == 100
        assert proxy.calls["GetAttr"] == getattrs + 1


def test_a_truncate_through_one_open_file_publishes_the_others_writes_first(
    counted: Client, client: Client
) -> None:
    with counted.open("/f", "w+b") as f, counted.open("/f", "r+b") as g:
        f.write(b"a" * 20000)
        g.truncate(30000)
        assert f.size == 30000
        assert f.pread(40000, 0) == b"a" * 20000 + bytes(10000)
        assert client.stat("/f").size == 30000
    with client.open("/f", "rb") as r:
        assert r.read() == b"a" * 20000 + bytes(10000)


def test_a_truncate_by_path_publishes_the_clients_writes_first(
    counted: Client, client: Client
) -> None:
    with counted.open("/f", "w+b") as f:
        f.write(b"a" * 20000)
        counted.truncate("/f", 30000)
        assert f.size == 30000
        assert f.pread(40000, 0) == b"a" * 20000 + bytes(10000)
    with client.open("/f", "rb") as r:
        assert r.read() == b"a" * 20000 + bytes(10000)


def test_appends_through_two_open_files_never_overwrite_each_other(counted: Client) -> None:
    with counted.open("/log", "ab") as f, counted.open("/log", "ab") as g:
        f.write(b"a" * 10)
        g.write(b"b" * 10)
        f.write(b"c" * 10)
    with counted.open("/log", "rb") as r:
        assert r.read() == b"a" * 10 + b"b" * 10 + b"c" * 10


def test_an_open_that_truncates_drops_what_the_other_open_files_had_not_published(
    counted: Client, client: Client
) -> None:
    with counted.open("/d", "w+b") as f:
        f.write(b"q" * 9000)
        with counted.open("/d", "wb") as g:
            assert f.size == 0
            g.write(b"r" * 10)
        assert f.pread(100, 0) == b"r" * 10
    with client.open("/d", "rb") as r:
        assert r.read() == b"r" * 10


def test_a_truncate_by_another_client_is_the_size_every_open_file_reads_to(
    counted: Client, client: Client
) -> None:
    data = os.urandom(4 * MIB)
    write_file(client, "/f", data)
    with counted.open("/f", "r+b") as f, counted.open("/f", "rb") as g:
        assert f.pread(10, 0) == data[:10]
        truncate_elsewhere(client, counted, "/f", 100)
        assert g.read() == data[:100]
        f.flush()  # publishes nothing: the truncate is not undone
    assert client.stat("/f").size == 100


def fuse_ops(c: Client) -> DaxfsOperations:
    """The FUSE operations in this process, called as the kernel would (as root)."""
    return DaxfsOperations(c, context=lambda: (0, 0, 0))


def test_the_first_fuse_read_after_a_recall_costs_one_getattr(
    counted: Client, proxy: FaultyProxy, client: Client
) -> None:
    data = os.urandom(4 * MIB)
    write_file(client, "/f", data)
    ops = fuse_ops(counted)
    fh, fh2 = ops.open("/f", os.O_RDONLY), ops.open("/f", os.O_RDONLY)
    try:
        assert ops.read(None, 4096, 0, fh) == data[:4096]
        truncate_elsewhere(client, counted, "/f", 100)
        getattrs = proxy.calls["GetAttr"]
        assert ops.read(None, 4096, 0, fh) == data[:100]
        assert ops.read(None, 4096, 0, fh2) == data[:100]
        assert ops.getattr(None, fh2)["st_size"] == 100
        assert proxy.calls["GetAttr"] == getattrs + 2  # the read's, and fstat's own
    finally:
        ops.release(None, fh)
        ops.release(None, fh2)


def test_a_fuse_fstat_after_a_recall_is_the_refresh_the_read_needs(
    counted: Client, proxy: FaultyProxy, client: Client
) -> None:
    data = os.urandom(4 * MIB)
    write_file(client, "/f", data)
    ops = fuse_ops(counted)
    fh = ops.open("/f", os.O_RDONLY)
    try:
        assert ops.read(None, 4096, 0, fh) == data[:4096]
        truncate_elsewhere(client, counted, "/f", 100)
        getattrs = proxy.calls["GetAttr"]
        assert ops.getattr("/f", fh)["st_size"] == 100
        assert ops.read(None, 4096, 0, fh) == data[:100]
        assert proxy.calls["GetAttr"] == getattrs + 1
    finally:
        ops.release(None, fh)


def test_fuse_writes_through_two_descriptors_are_one_size_and_published_once(
    counted: Client, proxy: FaultyProxy, client: Client
) -> None:
    ops = fuse_ops(counted)
    fh = ops.create("/f", 0o644, os.O_RDWR)
    fh2 = ops.open("/f", os.O_RDWR)
    try:
        ops.write(None, b"a" * 5000, 0, fh)
        assert ops.getattr("/f", fh2)["st_size"] == 5000
        ops.write(None, b"b" * 5000, 5000, fh2)
        commits = proxy.calls["CommitLayout"]
        ops.flush(None, fh)
        ops.flush(None, fh2)  # nothing left to publish
        assert proxy.calls["CommitLayout"] == commits + 1
        assert client.stat("/f").size == 10000
    finally:
        ops.release(None, fh)
        ops.release(None, fh2)
    with client.open("/f", "rb") as r:
        assert r.read() == b"a" * 5000 + b"b" * 5000
