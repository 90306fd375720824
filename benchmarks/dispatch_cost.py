"""What the kernel front end's Python costs per READ and WRITE, without /dev/fuse.

    .venv/bin/python benchmarks/dispatch_cost.py [--requests 20000] [--rounds 3]

Starts a real server on a /dev/shm region, opens one 16 MiB file through the
operations the mount uses (``DaxfsOperations`` over ``daxfs.client.Client``),
and hands ``Dispatcher.handle_io`` requests as the kernel would send them
(``fuse_in_header`` + ``fuse_read_in``/``fuse_write_in`` in one buffer),
random 4 KiB offsets, with a reply callback that sends nothing. So the figure
is the daemon's own per-request work (decoding, handle, lease and layout
checks, the fence, the copy for a WRITE, the reply's header) and none of the
kernel's: the two system calls and the kernel's copy of a READ come on top
(``fuse_backends.py`` and ``daemon_cpu.py`` measure them through a mount).

Reported: microseconds of this process's CPU per request (best and median of
the rounds). The layouts are cached after the first round, as on a mount
serving a file it has read before. Nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from daxfs.client.fuse.kernel import protocol as p
from daxfs.client.fuse.kernel.dispatch import Dispatcher, Reply
from daxfs.client.fuse.operations import DaxfsOperations
from daxfs.client.library import Client
from daxfs.testing import Volume, start_server

FILE_SIZE = 16 << 20
BLOCK = 4096


def request(opcode: p.Opcode, fh: int, offset: int, payload: bytes = b"") -> memoryview:
    """One READ (``payload`` empty) or WRITE of 4 KiB as the kernel frames it."""
    body = p.READ_IN.pack(fh, offset, BLOCK, 0, 0, os.O_RDWR) + payload
    n = p.IN_HEADER.size + len(body)
    return memoryview(p.IN_HEADER.pack(n, opcode, 1, 2, 0, 0, 0, 0, 0) + body)


def cpu_us_per_request(serve: Callable[[memoryview], None], reqs: list[memoryview]) -> float:
    start = time.process_time()
    for r in reqs:
        serve(r)
    return (time.process_time() - start) / len(reqs) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="daxfs-dispatch-", dir="/dev/shm"))
    server = start_server(Volume.create(work, size=4 * FILE_SIZE))
    try:
        client = Client(server.address, timeout=10.0, cache_metadata=True)
        try:
            ops = DaxfsOperations(client, cache=False, attr_timeout=0.0, context=lambda: (0, 0, 0))
            dispatcher = Dispatcher(ops)
            fh = ops.create("/f", 0o644, os.O_CREAT | os.O_RDWR)
            ops.write("/f", b"\0" * FILE_SIZE, 0, fh)
            ops.flush("/f", fh)
            replies: list[int] = []

            def reply(r: Reply) -> None:
                replies.append(len(r))

            def serve(r: memoryview) -> None:
                dispatcher.handle_io(r, reply)

            rnd = random.Random(1)
            offsets = [rnd.randrange(FILE_SIZE // BLOCK) * BLOCK for _ in range(args.requests)]
            kinds = {
                "READ 4 KiB": [request(p.Opcode.READ, fh, o) for o in offsets],
                "WRITE 4 KiB": [request(p.Opcode.WRITE, fh, o, bytes(BLOCK)) for o in offsets],
            }
            figures: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for kind, reqs in kinds.items():
                    figures[kind].append(cpu_us_per_request(serve, reqs))
            ops.release("/f", fh)
        finally:
            client.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at start: {os.getloadavg()[0]:.1f}; {args.requests} requests a round")
    print("| request | CPU µs per request, best | median |")
    print("|---|---|---|")
    for kind, values in figures.items():
        print(f"| {kind} | {min(values):.1f} | {statistics.median(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
