"""Hostile input: random and malformed requests to every RPC.

Each call must come back OK or with a deliberate status code (never UNKNOWN or
INTERNAL, never a crash), and a rejected call must leave the metadata and the
open-file table exactly as they were. fsck is clean at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daxfs.proto import daxfs_pb2 as pb
from daxfs.proto import daxfs_pb2_grpc as pb_grpc
from daxfs.server.daemon import create_server
from daxfs.server.namespace import Caller, Namespace
from daxfs.server.volume import close_volume, open_volume
from daxfs.shared.extent import ClientId
from daxfs.testing import Volume, assert_fsck_clean, assert_log_clean, start_server

EXAMPLES = int(os.environ.get("DAXFS_FUZZ_EXAMPLES", "2000"))

DELIBERATE = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
}
SERVICE = pb.DESCRIPTOR.services_by_name["Daxfs"]
UNARY = [m for m in SERVICE.methods if not m.client_streaming and not m.server_streaming]

PATHS = [
    "/",
    "/d",
    "/d/f",
    "/f",
    "/g",
    "/d/e",
    "/missing",
    "/d/../f",
    "relative",
    "/a/b/c/d",
    "/.",
    "//f",
    "/f/",
    "/" + "n" * 256,
    "/" + "é" * 128,
    "/a\x00b",
    "/d/f/x",
    "/l",
]
INTS = [0, 1, -1, 4095, 4096, 1 << 20, (1 << 31) - 1, 1 << 40, (1 << 62), (1 << 63) - 1, -(1 << 63)]


@dataclass
class Fixture:
    ns: Namespace
    stub: pb_grpc.DaxfsStub
    client: int
    handles: list[int]
    volume: Volume


def _int_strategy(field: FieldDescriptor, fx: Fixture) -> st.SearchStrategy[int]:
    t = field.type
    if field.name in ("handle",):
        return st.sampled_from(fx.handles) | st.integers(0, 2**64 - 1)
    if field.name == "client_id":
        return st.sampled_from([fx.client, 0, 12345]) | st.integers(0, 2**64 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.sampled_from([i for i in INTS if i >= 0]) | st.integers(0, 2**64 - 1)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.sampled_from([0, 0o644, 0o7777, 0o170777, 1000, 2**32 - 1]) | st.integers(
            0, 2**32 - 1
        )
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 5)
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        return st.integers(-(2**31), 2**31 - 1)
    return st.sampled_from(INTS) | st.integers(-(2**63), 2**63 - 1)


def _value(field: FieldDescriptor, fx: Fixture, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(field.message_type, fx, depth + 1)
    if t == FieldDescriptor.TYPE_STRING:
        return st.sampled_from(PATHS) | st.text(max_size=40).filter(
            lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
        )
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=5000)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    return _int_strategy(field, fx)


def message_strategy(desc: Descriptor, fx: Fixture, depth: int = 0) -> st.SearchStrategy[Any]:
    cls = getattr(pb, desc.name)
    if depth > 2:
        return st.just(cls())
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        value = _value(field, fx, depth)
        if field.is_repeated:
            value = st.lists(value, max_size=3)
        parts[field.name] = st.none() | value

    def build(values: dict[str, Any]) -> Any:
        msg = cls()
        for name, v in values.items():
            if v is None:
                continue
            field = desc.fields_by_name[name]
            if field.is_repeated:
                target = getattr(msg, name)
                for item in v:
                    target.add().CopyFrom(
                        item
                    ) if field.type == FieldDescriptor.TYPE_MESSAGE else target.append(item)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(v)
            else:
                setattr(msg, name, v)
        return msg

    return st.fixed_dictionaries(parts).map(build)


def state_digest(ns: Namespace) -> str:
    """Everything a call may change, minus access times."""
    with ns._lock:
        h = hashlib.sha256()
        meta = ns.meta
        for row in sorted(meta.all_inodes(), key=lambda r: r.ino):
            h.update(
                repr(
                    (
                        row.ino,
                        row.mode,
                        row.uid,
                        row.gid,
                        row.nlink,
                        row.size,
                        row.mtime_ns,
                        row.ctime_ns,
                        row.target,
                    )
                ).encode()
            )
        h.update(repr(sorted(meta.all_dirents())).encode())
        h.update(
            repr(
                sorted((i, e.file_offset, e.length, e.region_offset) for i, e in meta.all_extents())
            ).encode()
        )
        h.update(repr(meta.free_extents()).encode())
        h.update(repr(meta.quarantined()).encode())
        h.update(repr(sorted((o.handle, o.ino) for o in ns.opens)).encode())
        return h.hexdigest()


@pytest.fixture(scope="module")
def fx() -> Iterator[Fixture]:
    d = Path(tempfile.mkdtemp(prefix="daxfs-fuzz-", dir="/dev/shm"))
    volume = Volume.create(d, size=64 * 1024 * 1024)
    ns = open_volume(volume.region, volume.meta)
    server, address, _servicer = create_server(ns, f"unix:{d}/s.sock", region_path=volume.region)
    client = ns.hello().id
    caller = Caller(client=ClientId(client))
    ns.mkdir("/d", 0o755, caller)
    handles = []
    for path in ("/f", "/d/f"):
        opened = ns.create(path, 0o644, caller)
        ns.write(opened.handle, 0, b"seed" * 3000, caller)
        handles.append(int(opened.handle))
    handles.append(int(ns.open("/f", caller, readable=True, writable=False).handle))
    ns.symlink("f", "/l", caller)
    channel = grpc.insecure_channel(address)
    try:
        yield Fixture(ns, pb_grpc.DaxfsStub(channel), int(client), handles, volume)
    finally:
        channel.close()
        server.stop(grace=1).wait()
        close_volume(ns)
        assert_fsck_clean(volume)
        shutil.rmtree(d, ignore_errors=True)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_rpc_answers_random_requests_deliberately(fx: Fixture, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(UNARY), label="method")
    if method.name == "Goodbye":
        return  # would end the fixture's own session; covered by the subprocess run
    request = data.draw(message_strategy(method.input_type, fx), label="request")
    before = state_digest(fx.ns)
    try:
        getattr(fx.stub, method.name)(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in DELIBERATE, f"{method.name} -> {exc.code()}: {exc.details()}"
        assert state_digest(fx.ns) == before, f"rejected {method.name} changed state"


def test_random_bytes_on_the_wire_and_a_subprocess_server(volume: Volume) -> None:
    """Over a socket to a real server process: garbage payloads, then fsck."""
    srv = start_server(volume)
    try:
        with grpc.insecure_channel(srv.address) as ch:
            import random

            rng = random.Random(7)
            for method in UNARY:
                call = ch.unary_unary(
                    f"/{SERVICE.full_name}/{method.name}",
                    request_serializer=lambda b: b,
                    response_deserializer=lambda b: b,
                )
                for _ in range(40):
                    blob = rng.randbytes(rng.randrange(0, 200))
                    try:
                        call(blob, timeout=10)
                    except grpc.RpcError as exc:
                        assert exc.code() in DELIBERATE | {grpc.StatusCode.INTERNAL}, exc.code()
                        if exc.code() == grpc.StatusCode.INTERNAL:
                            # gRPC's own parse failure of a malformed message, not ours.
                            assert "Exception deserializing" in (exc.details() or ""), exc.details()
        health = subprocess.run(
            [sys.executable, "-m", "daxfs", "health", srv.address], capture_output=True, timeout=30
        )
        assert health.returncode == 0, "the server must survive garbage"
    finally:
        assert srv.stop() == 0
    assert_log_clean(srv.log, ["malformed request refused"])
    assert_fsck_clean(volume)
