"""How ordinary calls and health answer while many guests hold session streams.

    python benchmarks/sessions_scale.py [--sessions 1000] [--calls 200]

Starts a real server on a fresh region in /dev/shm, opens N sessions, each
with its Session stream attached and renewing (as every client keeps one),
then measures the latency of health checks and GetAttr calls, side by side
with the same calls on an idle server. Prints a table and one JSON line.
Issue 11's target: with 1,000 connected guests, health and ordinary calls
still answer in milliseconds (a sync gRPC server runs streams on worker
threads; daxfs keeps request workers apart from stream threads).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from daxfs.proto import daxfs_pb2 as pb
from daxfs.proto import daxfs_pb2_grpc as pb_grpc
from daxfs.testing import Volume, start_server


def latencies(
    stub: pb_grpc.DaxfsStub, health: health_pb2_grpc.HealthStub, n: int
) -> dict[str, float]:
    out: dict[str, list[float]] = {"health": [], "getattr": []}
    for _ in range(n):
        t0 = time.perf_counter()
        health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        out["health"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stub.GetAttr(pb.GetAttrRequest(path="/"), timeout=30)
        out["getattr"].append(time.perf_counter() - t0)
    return {
        f"{k}_{q}_ms": round(v * 1e3, 3)
        for k, vals in out.items()
        for q, v in (
            ("p50", statistics.median(vals)),
            ("p99", sorted(vals)[int(len(vals) * 0.99) - 1]),
        )
    }


class Guest:
    """One session with its stream attached, renewing every 10 s."""

    def __init__(self, channel: grpc.Channel) -> None:
        stub = pb_grpc.DaxfsStub(channel)
        self.id = stub.Hello(pb.HelloRequest(client_name="scale"), timeout=60).client_id
        self.out: queue.SimpleQueue[pb.SessionRequest | None] = queue.SimpleQueue()
        self.call = stub.Session(self._requests())
        self.renewed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self) -> Iterator[pb.SessionRequest]:
        yield pb.SessionRequest(caller=pb.Caller(client_id=self.id), renew=pb.Renew(seq=1))
        while (item := self.out.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for event in self.call:
                if event.WhichOneof("kind") == "renewed":
                    self.renewed.set()
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.out.put(None)
        self.call.cancel()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="daxfs-scale-", dir="/dev/shm") as d:
        volume = Volume.create(Path(d), size=64 * 1024 * 1024)
        srv = start_server(volume, "--max-sessions", str(args.sessions + 8))
        try:
            channel = grpc.insecure_channel(srv.address)
            stub = pb_grpc.DaxfsStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            idle = latencies(stub, health, args.calls)
            guests: list[Guest] = []
            t0 = time.monotonic()
            # Streams spread over a few channels, as separate guests would use separate ones.
            channels = [grpc.insecure_channel(srv.address) for _ in range(8)]
            for i in range(args.sessions):
                guests.append(Guest(channels[i % len(channels)]))
            for g in guests:
                g.renewed.wait(60)
            attach_s = time.monotonic() - t0
            busy = latencies(stub, health, args.calls)
            result = {
                "sessions": args.sessions,
                "attach_s": round(attach_s, 2),
                "load": os.getloadavg()[0],
                "idle": idle,
                "with_sessions": busy,
            }
            print(f"{'':24} {'idle':>10} {f'{args.sessions} sessions':>16}")
            for key in idle:
                print(f"{key:24} {idle[key]:10.3f} {busy[key]:16.3f}")
            print(json.dumps(result))
            for g in guests:
                g.close()
        finally:
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
