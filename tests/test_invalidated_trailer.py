"""The own-invalidation trailer is what json.dumps made of it before (server/service.py)."""

from __future__ import annotations

import json
import random
from typing import Any

from daxfs.server.namespace import OwnInvalidation
from daxfs.server.service import MAX_INVALIDATED_TRAILER, _invalidated
from daxfs.shared.extent import InodeId


def dumped(own: OwnInvalidation) -> bytes:
    """The trailer as the edge used to build it."""
    stale: dict[str, Any] = {"inos": sorted(set(own.inos)), "paths": sorted(set(own.paths))}
    if own.xattrs_kept:
        stale["xattrs_kept"] = sorted(set(own.xattrs_kept))
    blob = json.dumps(stale)
    if len(blob) > MAX_INVALIDATED_TRAILER:
        blob = '{"all": true}'
    return blob.encode()


def test_the_trailer_is_json_dumps_byte_for_byte() -> None:
    rng = random.Random(16)
    alphabet = ["a", "/", '"', "\\", "\n", "\x01", "é", "\u2603", "\U0001f600", "\udc80", " "]
    for _ in range(500):
        inos = [InodeId(rng.randint(1, 1 << 62)) for _ in range(rng.randint(0, 4))]
        paths = [
            "/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            for _ in range(rng.randint(0, 4))
        ]
        kept = [rng.choice(inos) for _ in range(rng.randint(0, 2))] if inos else []
        own = OwnInvalidation(inos + inos[:1], paths + paths[:1], kept)
        assert _invalidated(own) == dumped(own)
    big = OwnInvalidation([InodeId(1)], ["/" + "x" * MAX_INVALIDATED_TRAILER], [])
    assert _invalidated(big) == dumped(big) == b'{"all": true}'
