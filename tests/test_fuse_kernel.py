"""The kernel backend's parts that need no mount: the wire structs and the node table.

The backend itself runs on real mounts in ``test_fuse.py`` and
``test_semantics.py`` (both front ends); here are the rules a mount cannot
show directly: lookup counts, what a rename or an unlink does to node ids.
"""

from __future__ import annotations

import pytest

from daxfs.client.fuse.kernel import protocol as p
from daxfs.client.fuse.kernel.channel import MS_NODEV, MS_NOSUID, MS_RDONLY, MountOptions
from daxfs.client.fuse.kernel.nodes import NodeTable
from daxfs.shared.errors import InvalidArgument, NotFound


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
