"""One unary call over gRPC, over the frame socket, and a bare unix socket round trip.

    .venv/bin/python benchmarks/rpc_transport.py [--calls 2000] [--idle-ms 10] [--json out.json]

Starts a real server (``daxfs server`` on a /dev/shm region, its own process)
and measures from this process, in one run and interleaved round by round:

- **GetAttr** of an existing file (a call that does little on the server);
- **Create + Release** of a new file, then its Unlink (what a mount's create
  and rm cost in calls);
- each **warm** (back to back) and **after idle** (``--idle-ms`` of sleep
  before each call: gRPC's wake-up, which dominates a fresh open of a view);
- **a bare unix socket ping-pong** with a Python echo server in another
  process: the floor a transport in Python can reach here.

Reported per operation: the median and p90 in µs per transport and the ratio
grpc / frames (how many times faster the frame socket is). Nothing here is
asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from daxfs.client import connect
from daxfs.testing import Volume, start_server

ECHO = """
import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
c, _ = s.accept()
while (b := c.recv(64)):
    c.sendall(b)
"""


def measure(op: Callable[[], None], calls: int, idle_s: float) -> list[float]:
    times = []
    for _ in range(calls):
        if idle_s:
            time.sleep(idle_s)
        t = time.perf_counter()
        op()
        times.append(time.perf_counter() - t)
    return times


def summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "median_us": round(statistics.median(times) * 1e6, 1),
        "p90_us": round(times[int(len(times) * 0.9)] * 1e6, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per measure (warm)")
    ap.add_argument("--idle-ms", type=float, default=10.0, help="sleep before each idle call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="daxfs-rpcbench-", dir="/dev/shm"))
    volume = Volume.create(work, size=64 * 1024 * 1024)
    srv = start_server(volume)
    echo_path = str(work / "echo.sock")
    echo = subprocess.Popen([sys.executable, "-c", ECHO, echo_path])
    while not os.path.exists(echo_path):
        time.sleep(0.01)
    ping = socket.socket(socket.AF_UNIX)
    ping.connect(echo_path)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        clients = {}
        for transport, flag in (("grpc", "0"), ("frames", "1")):
            os.environ["DAXFS_FRAMES"] = flag
            clients[transport] = connect(srv.address)
        clients["grpc"].open("/stat-me", "wb").close()
        counter = [0]

        def ops(c: object) -> dict[str, Callable[[], None]]:
            from daxfs.client import Client

            assert isinstance(c, Client)

            def create_release() -> None:
                counter[0] += 1
                c.open(f"/f{counter[0]}", "wb").close()

            return {
                "GetAttr": lambda: c.server.get_attr("/stat-me"),
                "Create+Release": create_release,
            }

        def pingpong() -> None:
            ping.sendall(b"x" * 32)
            ping.recv(64)

        for rnd in range(args.rounds):
            for idle in (0.0, args.idle_ms / 1000):
                state = "warm" if not idle else f"after {args.idle_ms:g} ms idle"
                n = args.calls if not idle else max(args.calls // 10, 50)
                for transport, c in clients.items():
                    for name, op in ops(c).items():
                        key = f"{name} {state}"
                        results.setdefault(key, {}).setdefault(transport, []).extend(
                            measure(op, n, idle)
                        )
                results.setdefault(f"ping-pong {state}", {}).setdefault("unix socket", []).extend(
                    measure(pingpong, n, idle)
                )
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        for c in clients.values():
            c.close()
    finally:
        ping.close()
        echo.kill()
        srv.stop()
    table = {k: {t: summary(v) for t, v in by.items()} for k, by in results.items()}
    print(f"{'operation':34} {'grpc µs':>16} {'frames µs':>16} {'grpc/frames':>12}")
    for key, by in table.items():
        g, f = by.get("grpc"), by.get("frames") or by.get("unix socket")
        gtxt = f"{g['median_us']:.0f} (p90 {g['p90_us']:.0f})" if g else "-"
        ftxt = f"{f['median_us']:.0f} (p90 {f['p90_us']:.0f})" if f else "-"
        ratio = f"{g['median_us'] / f['median_us']:.1f}" if g and f else "-"
        print(f"{key:34} {gtxt:>16} {ftxt:>16} {ratio:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
