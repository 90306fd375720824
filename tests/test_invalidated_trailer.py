"""The own-invalidation trailer (server/service.py ``_invalidated``): what the
caller's client reads back (client/session.py ``own_change``)."""

from __future__ import annotations

import json
import random

from daxfs.server.namespace import OwnInvalidation
from daxfs.server.service import MAX_INVALIDATED_TRAILER, _invalidated
from daxfs.shared.extent import InodeId


def test_the_trailer_names_each_inode_and_path_once_whatever_the_bytes_of_a_name() -> None:
    rng = random.Random(16)
    alphabet = ["a", "/", '"', "\\", "\n", "\x01", "é", "\u2603", "\U0001f600", "\udc80", " "]
    for _ in range(300):
        inos = [InodeId(rng.randint(1, 1 << 62)) for _ in range(rng.randint(0, 4))]
        paths = [
            "/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            for _ in range(rng.randint(0, 4))
        ]
        kept = [rng.choice(inos) for _ in range(rng.randint(0, 2))] if inos else []
        own = OwnInvalidation(inos + inos[:1], paths + paths[:1], kept)
        read = json.loads(_invalidated(own).decode())  # as client/session.py reads it
        assert read["inos"] == sorted(set(inos)) and read["paths"] == sorted(set(paths))
        assert read.get("xattrs_kept", []) == sorted(set(kept))


def test_a_trailer_too_long_for_grpc_metadata_says_drop_everything() -> None:
    big = OwnInvalidation([InodeId(1)], ["/" + "x" * MAX_INVALIDATED_TRAILER], [])
    assert json.loads(_invalidated(big)) == {"all": True}
