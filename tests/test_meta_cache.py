"""The client's metadata cache as a pure object: what an invalidation drops, and races."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from daxfs.client.meta_cache import Answer, MetaCache, XattrAnswer, key_of
from daxfs.shared import errors
from daxfs.shared.attr import Attr
from daxfs.shared.extent import InodeId
from daxfs.shared.permissions import Identity


def _attr(ino: int) -> Attr:
    return Attr(InodeId(ino), 1, 0o100644, 1, 0, 0, 0, 0, 0, 0, 0, 4096)


ROOT = Identity(0, 0)


def opened() -> MetaCache:
    cache = MetaCache()
    cache.open()
    return cache


def put(cache: MetaCache, path: str, ino: int) -> None:
    cache.put(key_of(path, ROOT), Answer(_attr(ino), None), cache.epoch)


def cached(cache: MetaCache, path: str) -> bool:
    return cache.get(key_of(path, ROOT)) is not None


def test_a_path_invalidation_drops_that_path_and_below_not_its_siblings() -> None:
    cache = opened()
    for path, ino in (("/a", 2), ("/a/b", 3), ("/a/b/c", 4), ("/ab", 5), ("/z", 6)):
        put(cache, path, ino)
    cache.invalidate([], ["/a"])
    assert [p for p in ("/a", "/a/b", "/a/b/c", "/ab", "/z") if cached(cache, p)] == ["/ab", "/z"]


def test_a_leaf_invalidation_finds_its_path_and_a_directorys_finds_what_is_below() -> None:
    cache = opened()
    for i in range(50):
        put(cache, f"/d/f{i}", 10 + i)
    put(cache, "/d/f1/x", 99)  # kept below a name: its invalidation must find it
    cache.invalidate([], ["/d/f0"])
    cache.invalidate([], ["/d/f1"])
    assert not cached(cache, "/d/f0") and not cached(cache, "/d/f1/x") and cached(cache, "/d/f2")
    assert len(cache) == 48
    cache.invalidate([], ["/d"])  # everything under it, however it was kept
    assert len(cache) == 0
    put(cache, "/d/f3", 13)  # the index counts again from nothing
    cache.invalidate([], ["/d/"])
    assert len(cache) == 0


def test_paths_that_are_not_plain_are_still_dropped_by_prefix() -> None:
    cache = opened()
    put(cache, "/a//b", 2)
    put(cache, "/a/c/", 3)
    put(cache, "/q", 4)
    cache.invalidate([], ["/a"])
    assert [p for p in ("/a//b", "/a/c/", "/q") if cached(cache, p)] == ["/q"]


def test_the_root_path_drops_everything() -> None:
    cache = opened()
    put(cache, "/x", 2)
    put(cache, "/y/z", 3)
    cache.invalidate([], ["/"])
    assert len(cache) == 0


def test_an_inode_invalidation_drops_every_name_of_it() -> None:
    cache = opened()
    put(cache, "/f", 7)
    put(cache, "/g", 7)  # a hard link
    put(cache, "/h", 8)
    cache.invalidate([7], [])
    assert not cached(cache, "/f") and not cached(cache, "/g") and cached(cache, "/h")


def test_an_answer_whose_request_an_invalidation_overtook_is_not_kept() -> None:
    cache = opened()
    sent_at = cache.epoch
    cache.invalidate([9], [])  # arrives before the reply it concerns
    cache.put(key_of("/f", ROOT), Answer(_attr(9), None), sent_at)
    assert not cached(cache, "/f")


def test_nothing_is_kept_or_served_while_closed() -> None:
    cache = MetaCache()
    put(cache, "/f", 2)
    assert not cached(cache, "/f")
    cache.open()
    put(cache, "/f", 2)
    cache.close()
    assert not cached(cache, "/f")
    cache.open()
    assert not cached(cache, "/f")  # closing dropped it


def test_answers_are_per_caller() -> None:
    cache = opened()
    cache.put(key_of("/f", ROOT), Answer(None, errors.NotFound("x")), cache.epoch)
    assert cache.get(key_of("/f", Identity(1000, 1000))) is None


def test_xattr_answers_are_kept_beside_the_attributes_and_go_with_them() -> None:
    cache = opened()
    key = key_of("/f", ROOT)
    value = XattrAnswer(b"v", None)
    cache.put_xattr(key, "user.k", value, cache.epoch)
    assert cache.get_xattr(key, "user.k") is None  # no attributes kept: not kept either
    put(cache, "/f", 7)
    cache.put_xattr(key, "user.k", value, cache.epoch)
    assert cache.get_xattr(key, "user.k") == value
    cache.invalidate([7], [])
    assert cache.get_xattr(key, "user.k") is None
    put(cache, "/f", 7)
    cache.put_xattr(key, "user.k", value, cache.epoch)
    cache.invalidate([], ["/f"])
    assert cache.get_xattr(key, "user.k") is None
    put(cache, "/f", 7)
    epoch = cache.epoch
    cache.invalidate([99], [])  # overtaken by an invalidation: not kept
    cache.put_xattr(key, "user.k", value, epoch)
    assert cache.get_xattr(key, "user.k") is None


def test_a_listed_xattr_name_set_answers_unchecked_missing_names() -> None:
    """A listing named the inode's xattrs: a missing security label or ACL is
    ENODATA without asking; a user.* name (read permission decides) is asked."""
    cache = opened()
    key = key_of("/f", ROOT)
    cache.put(key, Answer(_attr(7), None, frozenset({"security.selinux"})), cache.epoch)
    missing = cache.get_xattr(key, "system.posix_acl_access")
    assert missing is not None and missing.value is None
    assert isinstance(missing.error, errors.NoData)
    assert cache.get_xattr(key, "security.selinux") is None  # present: ask for the value
    assert cache.get_xattr(key, "user.k") is None
    cache.put(key, Answer(_attr(7), None), cache.epoch)  # a stat keeps the names
    assert cache.get_xattr(key, "security.ima") is not None
    cache.invalidate([7], [])
    assert cache.get_xattr(key, "security.ima") is None


def _dir(ino: int, mode: int = 0o40755, uid: int = 0) -> Attr:
    return Attr(InodeId(ino), 1, mode, 2, uid, uid, 0, 0, 0, 0, 0, 4096)


def test_a_changes_reply_is_kept_when_only_its_own_invalidation_moved_the_cache() -> None:
    """A chmod's reply names, in its trailer, what the chmod made stale in the
    caller's own cache (its old answer); the reply itself is kept after it."""
    cache = opened()
    put(cache, "/f", 7)
    pending = cache.change(key_of("/f", ROOT))
    cache.invalidate([7], [], own=True)  # the trailer, before the call returns
    assert cache.changed(pending, _attr(7))
    assert cached(cache, "/f")
    assert cache.take_kept() == cache.epoch
    assert cache.take_kept() is None  # once


def test_a_changes_reply_overtaken_by_another_invalidation_is_not_kept() -> None:
    cache = opened()
    assert cache.changed(cache.change(key_of("/e", ROOT)), _attr(6))  # kept, never taken
    pending = cache.change(key_of("/f", ROOT))
    cache.invalidate([7], [])  # another guest's change, on the session stream
    cache.invalidate([7], [], own=True)
    assert not cache.changed(pending, _attr(7))
    assert not cached(cache, "/f")
    assert cache.take_kept() is None  # the kernel keeps this reply short
    pending = cache.change(key_of("/g", ROOT))
    cache.invalidate([8], [], own=True)
    cache.invalidate([8], [])  # after the trailer, before the reply is kept
    assert not cache.changed(pending, _attr(8))
    assert not cached(cache, "/g")


def test_a_new_directorys_listing_answers_no_such_name_for_whoever_may_search_it() -> None:
    cache = opened()
    pending = cache.change(key_of("/d", ROOT))
    assert cache.changed(pending, _dir(5, 0o40700), added=("/d",), made_dir=True)
    missing = cache.get(key_of("/d/x", ROOT))
    assert missing is not None and isinstance(missing.error, errors.NotFound)
    # Another identity has its own answers; one that may not search gets none.
    assert cache.get(key_of("/d/x", Identity(1000, 1000))) is None
    for odd in ("/d/", "/d/.", "/d/..", "/d//x", "/d/" + "y" * 256):
        assert cache.get(key_of(odd, ROOT)) is None, odd


def test_own_creates_renames_and_removals_update_the_listing() -> None:
    cache = opened()
    cache.changed(cache.change(key_of("/d", ROOT)), _dir(5), made_dir=True)
    pending = cache.change(key_of("/d/f", ROOT))
    cache.invalidate([5], ["/d/f"], own=True)  # the directory's mtime, the new name
    assert cache.changed(pending, _attr(9), added=("/d/f",))
    hit = cache.get(key_of("/d/f", ROOT))
    assert hit is not None and hit.attr == _attr(9)
    missing = cache.get(key_of("/d/g", ROOT))
    assert missing is not None and missing.attr is None
    pending = cache.change(key_of("/d/g", ROOT), "/d/f")  # rename /d/f to /d/g
    cache.invalidate([5], ["/d/f", "/d/g"], own=True)
    assert cache.changed(pending, None, removed=("/d/f",), added=("/d/g",))
    gone = cache.get(key_of("/d/f", ROOT))
    assert gone is not None and gone.attr is None
    assert cache.get(key_of("/d/g", ROOT)) is None  # there: its attributes are asked for
    pending = cache.change(key_of("/d/g", ROOT))
    cache.invalidate([5, 9], ["/d/g"], own=True)
    assert cache.changed(pending, None, removed=("/d/g",))
    gone = cache.get(key_of("/d/g", ROOT))
    assert gone is not None and gone.attr is None


def test_a_listing_goes_with_any_name_in_it_or_above_it_not_with_its_attributes() -> None:
    """Another guest's create in the directory names the new path; a change of
    the directory's mtime alone (every create in it) does not end the listing."""
    cache = opened()
    for path, ino in (("/d", 5), ("/e", 6), ("/e/sub", 7)):
        cache.changed(cache.change(key_of(path, ROOT)), _dir(ino), added=(path,), made_dir=True)

    def listed(path: str) -> bool:
        return cache.get(key_of(path + "/nothing", ROOT)) is not None

    cache.invalidate([5, 6, 7], [])
    assert listed("/d") and listed("/e") and listed("/e/sub")
    cache.invalidate([], ["/d/x"])
    assert not listed("/d") and listed("/e")
    cache.invalidate([], ["/e"])
    assert not listed("/e") and not listed("/e/sub")


def _on_another_thread(fn: Callable[[], None]) -> None:
    """As this client's other threads do (a deferred Release, another request)."""
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def _created(cache: MetaCache, path: str, ino: int, names: frozenset[str]) -> None:
    """What a create's reply leaves: its attributes and its (granted) xattr names."""
    pending = cache.change(key_of(path, ROOT))
    assert cache.changed(pending, _attr(ino), added=(path,), xattr_names=names)


def _missing(cache: MetaCache, path: str, name: str) -> bool:
    hit = cache.get_xattr(key_of(path, ROOT), name)
    return hit is not None and isinstance(hit.error, errors.NoData)


def test_a_created_files_xattr_names_answer_missing_labels_and_acls() -> None:
    """A create's reply names the new file's xattrs (none): the kernel's
    getxattr of security.capability before a write or a chown is ENODATA here."""
    cache = opened()
    _created(cache, "/f", 7, frozenset())
    assert _missing(cache, "/f", "security.capability")
    assert _missing(cache, "/f", "system.posix_acl_access")
    assert cache.get_xattr(key_of("/f", ROOT), "user.k") is None  # read permission decides


def test_own_changes_that_left_the_xattrs_alone_keep_what_no_permission_decides() -> None:
    """The trailer of this client's own write, commit or setattr: the attributes
    go (stat asks again, fstat too), which inode the path names stays, and for
    an inode the server lists in ``xattrs_kept`` the xattr names and the
    unchecked values stay; a user.* value goes (the mode may have moved)."""
    cache = opened()
    key = key_of("/f", ROOT)
    _created(cache, "/f", 7, frozenset({"security.selinux"}))
    cache.put_xattr(key, "security.selinux", XattrAnswer(b"label", None), cache.epoch)
    cache.put_xattr(key, "user.k", XattrAnswer(b"v", None), cache.epoch)
    cache.invalidate([7], [], own=True, xattrs_kept=[7])  # GetLayout allocated blocks
    assert not cached(cache, "/f") and cache.by_ino(7) is None
    assert cache.inode_at(key) == 7
    assert _missing(cache, "/f", "security.capability")
    assert cache.get_xattr(key, "security.selinux") == XattrAnswer(b"label", None)
    assert cache.get_xattr(key, "user.k") is None
    # A setattr's reply (or a stat's answer) of the same inode brings the
    # attributes back and keeps the xattrs beside them.
    pending = cache.change(key)
    cache.invalidate([7], [], own=True, xattrs_kept=[7])
    newer = replace(_attr(7), mode=0o100600)
    assert cache.changed(pending, newer)
    assert cache.get(key) == Answer(newer, None, frozenset({"security.selinux"}))
    assert _missing(cache, "/f", "security.capability")
    # Not listed as kept (an own setxattr, say): the xattrs go, the inode stays.
    cache.invalidate([7], [], own=True)
    assert cache.inode_at(key) == 7
    assert cache.get_xattr(key, "security.capability") is None
    assert cache.get_xattr(key, "security.selinux") is None


def test_another_clients_invalidation_drops_what_an_own_change_kept() -> None:
    """Before or after the trailer that kept them, an invalidation on the session
    stream naming the inode takes everything, the inode at the path included."""
    for stream_first in (False, True):
        cache = opened()
        key = key_of("/f", ROOT)
        _created(cache, "/f", 7, frozenset())
        if stream_first:
            cache.invalidate([7], [])
        cache.invalidate([7], [], own=True, xattrs_kept=[7])
        if not stream_first:
            cache.invalidate([7], [])
        assert cache.get_xattr(key, "security.capability") is None
        assert cache.inode_at(key) is None
        pending = cache.change(key)
        cache.invalidate([7], [], own=True, xattrs_kept=[7])
        assert cache.changed(pending, _attr(7))  # nothing left to carry
        assert cache.get_xattr(key, "security.capability") is None


def test_an_answer_of_another_inode_at_the_path_does_not_inherit_the_xattrs() -> None:
    cache = opened()
    key = key_of("/f", ROOT)
    _created(cache, "/f", 7, frozenset())
    cache.invalidate([7], [], own=True, xattrs_kept=[7])
    cache.put(key, Answer(_attr(8), None), cache.epoch)
    assert cache.get_xattr(key, "security.capability") is None


def test_another_threads_own_change_of_something_else_leaves_a_reply_kept() -> None:
    """tar's next create races the last file's deferred Release: its trailer
    (the closed file's blocks) moves the epoch while the Create is out. It
    names nothing the reply depends on, so the reply is kept; a trailer that
    names the reply's inode, its path, a path above it, or a name in a
    listing the reply updates is not harmless, nor is another client's."""

    def create(meanwhile: Callable[[MetaCache], None]) -> bool:
        cache = opened()
        cache.changed(cache.change(key_of("/d", ROOT)), _dir(5), added=("/d",), made_dir=True)
        pending = cache.change(key_of("/d/f", ROOT))
        meanwhile(cache)
        cache.invalidate([5], ["/d/f"], own=True)  # this call's own trailer
        kept = cache.changed(pending, _attr(9), added=("/d/f",), xattr_names=frozenset())
        assert kept == cached(cache, "/d/f")
        assert kept == (cache.get(key_of("/d/g", ROOT)) is not None)  # the listing
        return kept

    def own(inos: list[int], paths: list[str]) -> Callable[[MetaCache], None]:
        return lambda cache: _on_another_thread(lambda: cache.invalidate(inos, paths, own=True))

    assert create(own([4], []))  # another file's Release
    assert create(own([4], ["/e/x"]))
    for harmful in ([9], []), ([], ["/d/f"]), ([], ["/d"]), ([], ["/"]), ([], ["/d/other"]):
        assert not create(own(*harmful)), harmful
    assert not create(lambda cache: cache.invalidate([4], []))  # another client's
    assert not create(lambda cache: _on_another_thread(lambda: cache.clear(own=True)))
