"""The client's metadata cache as a pure object: what an invalidation drops, and races."""

from __future__ import annotations

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
