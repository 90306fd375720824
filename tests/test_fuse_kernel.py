"""The kernel backend's parts that need no mount: the wire structs, the node
table, and the dispatcher's answers to requests the kernel would never send.

The backend itself runs on real mounts in ``test_fuse.py`` and
``test_semantics.py`` (both front ends); here are the rules a mount cannot
show directly: lookup counts, what a rename or an unlink does to node ids.
"""

from __future__ import annotations

import errno
import os

import pytest

from daxfs.client.fuse.kernel import protocol as p
from daxfs.client.fuse.kernel.channel import MS_NODEV, MS_NOSUID, MS_RDONLY, MountOptions
from daxfs.client.fuse.kernel.dispatch import Dispatcher
from daxfs.client.fuse.kernel.nodes import NodeTable
from daxfs.client.fuse.operations import DaxfsOperations
from daxfs.client.library import connect
from daxfs.shared.errors import InvalidArgument, NotFound
from daxfs.testing import ServerProc


def test_a_node_lives_until_every_lookup_is_forgotten() -> None:
    t = NodeTable()
    a = t.lookup(p.ROOT_ID, "a")
    assert t.lookup(p.ROOT_ID, "a") == a and t.path(a) == "/a"
    t.forget(a, 1)
    assert t.path(a) == "/a"
    t.forget(a, 1)
    assert t.path(a) is None and len(t) == 1
    assert t.lookup(p.ROOT_ID, "a") != a  # ids are never reused


def test_paths_follow_renames_and_unlinks() -> None:
    t = NodeTable()
    d = t.lookup(p.ROOT_ID, "d")
    f = t.lookup(d, "f")
    assert t.path(f) == "/d/f" and t.child(d, "g") == "/d/g"
    t.rename(p.ROOT_ID, "d", p.ROOT_ID, "e", exchange=False)
    assert t.path(f) == "/e/f"
    g = t.lookup(p.ROOT_ID, "g")
    t.rename(d, "f", p.ROOT_ID, "g", exchange=False)  # over g: g loses its path
    assert t.path(f) == "/g" and t.path(g) is None
    t.detach(p.ROOT_ID, "g")  # unlinked while the kernel still holds it
    assert t.path(f) is None
    with pytest.raises(NotFound):
        t.child(f, "x")


def test_exchange_swaps_two_names() -> None:
    t = NodeTable()
    a, b = t.lookup(p.ROOT_ID, "a"), t.lookup(p.ROOT_ID, "b")
    t.rename(p.ROOT_ID, "a", p.ROOT_ID, "b", exchange=True)
    assert (t.path(a), t.path(b)) == ("/b", "/a")
    assert t.lookup(p.ROOT_ID, "a") == b


def test_wire_structs_have_the_kernel_sizes() -> None:
    # The sizes <linux/fuse.h> gives; each struct also asserts its own at import.
    sizes = {p.IN_HEADER: 40, p.OUT_HEADER: 16, p.INIT_IN: 64, p.INIT_OUT: 64, p.ATTR: 88,
             p.ENTRY_OUT: 40, p.SETATTR_IN: 88, p.READ_IN: 40, p.WRITE_IN: 40,
             p.STATFS_OUT: 80, p.DIRENT: 24}  # fmt: skip
    for st, size in sizes.items():
        assert st.size == size
    assert len(p.dirent(5, 1, b"abc", 8)) % 8 == 0
    attr = p.Attr(7, 10, 1, 1_500_000_000, 0, 0, 0o100644, 1, 0, 0)
    assert p.ATTR.unpack(attr.pack())[3] == 1 and p.ATTR.unpack(attr.pack())[6] == 500_000_000


def test_mount_options_as_mount2_takes_them() -> None:
    o = MountOptions.parse({"allow_other": True, "default_permissions": True, "ro": True,
                            "max_threads": "16", "fsname": "x"})  # fmt: skip
    assert o.flags == MS_NOSUID | MS_NODEV | MS_RDONLY and o.fsname == "x"
    assert o.data(5, 0o40000, 0, 0) == (
        "fd=5,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions"
    )
    with pytest.raises(InvalidArgument):
        MountOptions.parse({"no_such_option": True})


def _io_request(
    opcode: p.Opcode, fh: int, offset: int, size: int, payload: bytes = b""
) -> memoryview:
    body = p.READ_IN.pack(fh, offset, size, 0, 0, os.O_RDWR) + payload
    n = p.IN_HEADER.size + len(body)
    return memoryview(p.IN_HEADER.pack(n, opcode, 77, 2, 0, 0, 0, 0, 0) + body)


def test_the_data_path_answers_bad_requests_with_an_errno_and_stores_nothing(
    server: ServerProc,
) -> None:
    """READ and WRITE skip the general dispatch (the per-request path); a bad
    request still gets its errno, as through ``handle``, and writes nothing."""
    client = connect(server.address)
    try:
        ops = DaxfsOperations(client, cache=False, attr_timeout=0.0, context=lambda: (0, 0, 0))
        disp = Dispatcher(ops)
        fh = ops.create("/f", 0o644, os.O_CREAT | os.O_RDWR)
        replies: list[list[bytes | memoryview]] = []

        def errno_of(req: memoryview) -> int:
            replies.clear()
            disp.handle_io(req, replies.append)
            assert len(replies) == 1
            length, error, unique = p.OUT_HEADER.unpack_from(bytes(replies[0][0]))
            assert unique == 77 and length == sum(len(b) for b in replies[0])
            return -error

        assert errno_of(_io_request(p.Opcode.WRITE, fh, 0, 3, b"abc")) == 0
        # A WRITE whose payload is shorter than its size.
        assert errno_of(_io_request(p.Opcode.WRITE, fh, 0, 4096, b"xyz")) == errno.EINVAL
        assert errno_of(_io_request(p.Opcode.READ, fh + 100, 0, 10)) == errno.EBADF
        assert errno_of(_io_request(p.Opcode.WRITE, fh + 100, 0, 3, b"xyz")) == errno.EBADF
        assert errno_of(_io_request(p.Opcode.READ, fh, 0, 10)) == 0
        assert b"".join(bytes(b) for b in replies[0][1:]) == b"abc"
        ops.release("/f", fh)
    finally:
        client.close()
