"""The API contract as a client with only the .proto sees it, checked on a real server.

The proto's header is the reference a third-party client is written from: its
errno table must be exactly what the server sends, and what it says about
holes, EOF, Create, CommitLayout and reflection must be what happens.
"""

from __future__ import annotations

import argparse
import errno
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from daxfs.cli import build_parser
from daxfs.client import Client, connect, rpc
from daxfs.proto import daxfs_pb2 as pb
from daxfs.server.service import STATUS_FOR
from daxfs.shared import errors
from daxfs.testing import ServerProc, Volume, assert_fsck_clean, start_server

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
TOKEN = "contract-token-0123456789"


def proto_errno_table() -> dict[str, set[int]]:
    """{status code name: errnos} as the proto header's table states them."""
    table: dict[str, set[int]] = {}
    code = ""
    for line in (ROOT / "proto" / "daxfs.proto").read_text().splitlines():
        m = re.match(r"//\s+([A-Z_]+)?\s+((?:E[A-Z0-9]+\(\d+\)\s*)+)$", line)
        if m is None:
            continue
        code = m.group(1) or code  # a continuation line keeps the code above
        for name, number in re.findall(r"(E[A-Z0-9]+)\((\d+)\)", m.group(2)):
            assert getattr(errno, name) == int(number), f"{name} is not {number} on Linux"
            table.setdefault(code, set()).add(int(number))
    return table


def test_the_proto_errno_table_is_exactly_what_the_server_sends() -> None:
    sent: dict[str, set[int]] = {}
    for number, status in STATUS_FOR.items():
        sent.setdefault(status.name, set()).add(number)
    sent["INTERNAL"] = {errno.EIO}  # anything unexpected (service._edge)
    assert proto_errno_table() == sent
    # Every leaf of the error model has a row: none falls through to INTERNAL.
    assert {cls.code for cls in errors._BY_ERRNO.values()} <= set(STATUS_FOR)


def test_readme_lists_every_flag_of_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for verb, sub in verbs.choices.items():
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue  # internal (e.g. mount's re-exec of itself)
            for flag in action.option_strings:
                listed = re.search(re.escape(flag) + r"(?![\w-])", readme)
                if flag.startswith("--") and flag != "--help" and not listed:
                    missing.append(f"daxfs {verb} {flag}")
    assert missing == []


@pytest.fixture
def pair(server: ServerProc) -> Iterator[tuple[Client, Client]]:
    with connect(server.address) as a, connect(server.address) as b:
        yield a, b


def _create(c: Client, path: str, **how: bool) -> int:
    reply = c.server.call(
        rpc.CREATE, pb.CreateRequest(caller=c.server.caller, path=path, mode=0o644, **how)
    )
    return int(reply.handle)


def _layout(c: Client, handle: int, offset: int, length: int, mode: int) -> pb.Layout:
    req = pb.GetLayoutRequest(
        caller=c.server.caller, handle=handle, offset=offset, length=length, mode=mode
    )
    reply: pb.Layout = c.server.call(rpc.GET_LAYOUT, req)
    return reply


def test_create_for_neither_reading_nor_writing_is_refused(pair: tuple[Client, Client]) -> None:
    a, _ = pair
    with pytest.raises(errors.InvalidArgument, match="read or write"):
        _create(a, "/useless")
    assert not a.exists("/useless")


def test_open_for_neither_reading_nor_writing_is_refused(pair: tuple[Client, Client]) -> None:
    a, _ = pair
    with a.open("/f", "wb") as f:
        f.write(b"kept")
    for how in ({}, {"truncate": True}, {"append": True}):
        with pytest.raises(errors.InvalidArgument, match="read or write"):
            a.server.call(rpc.OPEN, pb.OpenRequest(caller=a.server.caller, path="/f", **how))
    assert a.stats().open_files == 0  # nothing was opened
    assert a.stat("/f").size == 4  # and nothing truncated
    a.unlink("/f")


def test_a_read_layout_past_eof_shows_holes_not_preallocated_blocks(
    pair: tuple[Client, Client],
) -> None:
    writer, reader = pair
    w = _create(writer, "/f", read=True, write=True)
    writer.server.call(
        rpc.WRITE, pb.WriteRequest(caller=writer.server.caller, handle=w, data=b"x" * 10)
    )
    writer.server.call(
        rpc.ALLOCATE,
        pb.AllocateRequest(
            caller=writer.server.caller, handle=w, offset=0, length=MIB, keep_size=True
        ),
    )
    r = int(
        reader.server.call(
            rpc.OPEN, pb.OpenRequest(caller=reader.server.caller, path="/f", read=True)
        ).handle
    )
    lay = _layout(reader, r, 0, MIB, pb.LAYOUT_MODE_READ)
    assert [(e.file_offset, e.length, e.hole) for e in lay.extents] == [
        (0, 4096, False),  # the block holding EOF
        (4096, MIB - 4096, True),
    ]
    assert lay.extents[1].region_offset == 0  # a hole's region_offset means nothing
    # The writer sees its own preallocation: its uncommitted stores live there.
    mine = _layout(writer, w, 0, MIB, pb.LAYOUT_MODE_READ)
    assert not any(e.hole for e in mine.extents)
    assert sum(e.length for e in mine.extents) == MIB
    # One lease per session and file, and an id per grant: the newest id names it,
    # and returning an older one (a ReturnLayout that crossed a new grant) is
    # refused rather than ending the lease the client now relies on.
    again = _layout(reader, r, 0, 4096, pb.LAYOUT_MODE_READ)
    assert again.lease_id > lay.lease_id
    with pytest.raises(errors.StaleHandle):
        reader.conn.call(
            rpc.RETURN_LAYOUT,
            pb.ReturnLayoutRequest(caller=reader.server.caller, lease_id=lay.lease_id),
        )
    reader.conn.call(
        rpc.RETURN_LAYOUT,
        pb.ReturnLayoutRequest(caller=reader.server.caller, lease_id=again.lease_id),
    )
    reader.server.call(rpc.RELEASE, pb.ReleaseRequest(caller=reader.server.caller, handle=r))
    writer.server.call(rpc.RELEASE, pb.ReleaseRequest(caller=writer.server.caller, handle=w))
    writer.unlink("/f")


def test_commit_layout_never_shrinks_a_file(pair: tuple[Client, Client]) -> None:
    a, _ = pair
    h = _create(a, "/g", write=True)
    a.server.call(rpc.WRITE, pb.WriteRequest(caller=a.server.caller, handle=h, data=b"y" * 100))
    attr = a.server.call(
        rpc.COMMIT_LAYOUT, pb.CommitLayoutRequest(caller=a.server.caller, handle=h, new_size=10)
    )
    assert attr.size == 100
    a.server.call(rpc.RELEASE, pb.ReleaseRequest(caller=a.server.caller, handle=h))
    a.unlink("/g")


def _reflect(
    channel: grpc.Channel, version: str, **ask: str
) -> reflection_pb2.ServerReflectionResponse:
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = list(call(iter([reflection_pb2.ServerReflectionRequest(**ask)]), timeout=10))
    assert len(replies) == 1
    return replies[0]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_is_served_as_v1_and_v1alpha(server: ServerProc, version: str) -> None:
    with grpc.insecure_channel(server.address) as channel:
        listed = _reflect(channel, version, list_services="")
        names = {s.name for s in listed.list_services_response.service}
        assert {"daxfs.v1.Daxfs", "grpc.reflection.v1.ServerReflection"} <= names
        described = _reflect(channel, version, file_containing_symbol="daxfs.v1.Daxfs")
        assert described.file_descriptor_response.file_descriptor_proto


@pytest.fixture
def token_server(volume: Volume, workdir: Path) -> Iterator[ServerProc]:
    path = workdir / "token"
    path.write_text(TOKEN)
    srv = start_server(volume, "--token-file", str(path))
    yield srv
    assert srv.stop() == 0
    assert_fsck_clean(volume)


def test_the_bearer_scheme_is_case_insensitive(token_server: ServerProc) -> None:
    with grpc.insecure_channel(token_server.address) as channel:
        hello = channel.unary_unary(
            "/daxfs.v1.Daxfs/Hello",
            request_serializer=pb.HelloRequest.SerializeToString,
            response_deserializer=pb.HelloReply.FromString,
        )
        for scheme in ("Bearer", "bearer", "BEARER"):
            reply = hello(
                pb.HelloRequest(client_name=scheme),
                metadata=(("authorization", f"{scheme} {TOKEN}"),),
                timeout=10,
            )
            assert reply.client_id
        with pytest.raises(grpc.RpcError) as refused:
            hello(pb.HelloRequest(), metadata=(("authorization", f"Basic {TOKEN}"),), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
