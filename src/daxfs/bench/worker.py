"""Entry point of the benchmark's helper processes: ``python -m daxfs.bench.worker KIND ARGS...``.

Some figures need a second process: the partner of a cross-guest ping-pong,
and the persist timings, which must load libpmem with ``PMEM_IS_PMEM_FORCE``
set or unset (libpmem reads it once, at load). Each kind prints one JSON
object on stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    kind, rest = args[0], args[1:]
    out: dict[str, Any]
    if kind == "persist":
        from daxfs.bench.memory import persist_worker

        address, path, reps, *sizes = rest
        out = persist_worker(address, path, int(reps), [int(s) for s in sizes])
    elif kind == "region":
        from daxfs.bench.cross import region_partner

        out = region_partner(rest[0], rest[1], int(rest[2]))
    elif kind == "file":
        from daxfs.bench.cross import file_partner

        out = file_partner(rest[0], int(rest[1]))
    else:
        print(f"unknown worker kind {kind!r}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
