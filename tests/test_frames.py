"""The frame socket: the unary calls over a unix socket beside gRPC's (server/frames.py).

A local client sends every unary call there by itself, with the same messages,
the same errors and the same rules for who may do what; a server without one
is still reached over gRPC; what arrives broken ends one connection and no more.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daxfs.client import connect
from daxfs.client.frames import FrameChannel
from daxfs.proto import daxfs_pb2 as pb
from daxfs.shared import errors
from daxfs.testing import ServerProc, Volume, assert_log_clean, start_server

NOBODY = 65534


def frames_of(srv: ServerProc) -> str:
    return srv.socket + ".frames"


def test_a_local_client_makes_every_unary_call_over_the_frame_socket(
    server: ServerProc,
) -> None:
    sock = os.stat(server.socket)
    beside = os.stat(frames_of(server))
    assert stat.S_ISSOCK(beside.st_mode)
    assert stat.S_IMODE(beside.st_mode) == stat.S_IMODE(sock.st_mode) == 0o600
    with connect(server.address) as c:
        c.mkdir("/d")
        with c.open("/d/f", "wb") as f:
            f.write(b"framed")
        with c.open("/d/f", "rb") as f:
            assert f.read() == b"framed"
        c.rename("/d/f", "/d/g")
        assert c.stat("/d/g").size == 6
        c.unlink("/d/g")
        c.rmdir("/d")
        conn = c.server.conn
        c.wait_released()
        # The reader's release rode with the rename (ReleaseQueue.take).
        assert conn.framed_calls + conn.carried_calls == sum(conn.calls.values()) > 8
        assert conn.carried_calls == 1


def test_errors_cross_the_frame_socket_exactly_as_they_cross_grpc(
    server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refusals() -> list[tuple[type[BaseException], int | None, str]]:
        seen = []
        with connect(server.address) as c:
            c.mkdir("/exists")
            for attempt in (
                lambda: c.open("/missing", "rb"),
                lambda: c.mkdir("/exists"),
                lambda: c.rmdir("/"),
                lambda: c.mkdir("/" + "n" * 256),
                lambda: c.readlink("/exists"),
            ):
                with pytest.raises(errors.DaxfsError) as info:
                    attempt()
                seen.append((type(info.value), info.value.errno, str(info.value)))
            c.rmdir("/exists")
            framed = c.server.conn.framed_calls
        return [*seen, (type(None), framed > 0, "")]  # type: ignore[list-item]

    over_frames = refusals()
    monkeypatch.setenv("DAXFS_FRAMES", "0")
    over_grpc = refusals()
    assert over_frames[-1][1] is True and over_grpc[-1][1] is False
    assert over_frames[:-1] == over_grpc[:-1]
    assert [e for _, e, _ in over_frames[:-1]] == [
        errno.ENOENT,
        errno.EEXIST,
        errno.EBUSY,
        errno.ENAMETOOLONG,
        errno.EINVAL,
    ]


def test_a_server_started_without_frames_is_reached_over_grpc(volume: Volume) -> None:
    srv = start_server(volume, "--no-frames")
    try:
        assert not os.path.exists(frames_of(srv))
        with connect(srv.address) as c:
            with c.open("/f", "wb") as f:
                f.write(b"over grpc")
            assert c.stat("/f").size == 9
            assert c.server.conn.framed_calls == 0
            c.unlink("/f")
    finally:
        assert srv.stop() == 0
    assert_log_clean(srv.log)


@pytest.mark.client_log("session stream lost")
def test_a_client_reaches_a_restarted_server_through_fresh_connections(volume: Volume) -> None:
    srv = start_server(volume)
    try:
        with connect(srv.address) as c:
            with c.open("/f", "wb") as f:
                f.write(b"before")
            assert srv.stop() == 0
            assert not os.path.exists(frames_of(srv))
            srv = start_server(volume)
            before = c.server.conn.framed_calls
            assert c.stat("/f").size == 6  # the pooled connection is dead: a new one
            assert c.server.conn.framed_calls > before
            c.unlink("/f")
    finally:
        srv.stop()


def _raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    return s


def _send(s: socket.socket, message: bytes) -> None:
    s.sendall(struct.pack("<I", len(message)) + message)


def _receive(s: socket.socket) -> pb.FrameReply:
    head = s.recv(4, socket.MSG_WAITALL)
    (size,) = struct.unpack("<I", head)
    return pb.FrameReply.FromString(s.recv(size, socket.MSG_WAITALL) if size else b"")


def _closed_by_the_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:  # closed with our bytes unread
        return True


def test_broken_frames_end_their_connection_and_nothing_else(server: ServerProc) -> None:
    server.allowed_log.append("frame socket: closing a connection")
    path = frames_of(server)
    with _raw(path) as huge:  # a length past the limit: closed before anything is read
        huge.sendall(struct.pack("<I", 0xFFFFFFF0) + b"x" * 64)
        assert _closed_by_the_server(huge)
    with _raw(path) as garbage:  # not a FrameHello
        _send(garbage, b"\xff\xff\xff")
        assert _closed_by_the_server(garbage)
    with _raw(path) as s:  # a call's errors end nothing: three in a row, then a good one
        _send(s, pb.FrameHello().SerializeToString())
        assert _receive(s).status == 0
        _send(s, pb.FrameCall(method="Session").SerializeToString())
        unknown = _receive(s)
        assert (unknown.status, unknown.errno) == (12, errno.EOPNOTSUPP)  # UNIMPLEMENTED
        _send(s, pb.FrameCall(method="GetAttr", request=b"\xff\xff").SerializeToString())
        undecodable = _receive(s)
        assert undecodable.status != 0 and undecodable.errno == errno.EINVAL
        _send(s, pb.FrameCall(method="GetAttr", request=b"").SerializeToString())
        sessionless = _receive(s)
        assert sessionless.status != 0 and sessionless.errno != 0
        hello = pb.HelloRequest(client_name="raw").SerializeToString()
        _send(s, pb.FrameCall(method="Hello", request=hello).SerializeToString())
        answer = _receive(s)
        assert answer.status == 0 and pb.HelloReply.FromString(answer.reply).client_id
    with connect(server.address) as c:
        assert c.listdir("/") == []
        assert c.server.conn.framed_calls > 0


AS_NOBODY = textwrap.dedent(
    """
    import os, sys
    from daxfs.client.frames import FrameChannel
    from daxfs.proto import daxfs_pb2 as pb

    os.setgroups([]); os.setgid(65534); os.setuid(65534)  # before connecting
    channel = FrameChannel(sys.argv[1], None)
    def ask(method, request):
        reply = channel.call(method, request.SerializeToString(), 30)
        assert reply is not None, "the frame socket is not reachable"
        return reply
    hello = pb.HelloReply.FromString(ask("Hello", pb.HelloRequest(client_name="nobody")).reply)
    claims_root = pb.Caller(uid=0, gid=0, groups=[0], client_id=hello.client_id)
    opened = ask("Open", pb.OpenRequest(caller=claims_root, path="/secret", read=True))
    print("secret:", opened.status, opened.errno)
    made = ask("Create", pb.CreateRequest(caller=claims_root, path="/pub/mine", mode=0o644,
                                           write=True))
    attr = pb.OpenReply.FromString(made.reply).attr
    print("owner:", attr.uid, attr.gid)
    """
)


def test_a_non_root_peer_acts_as_itself_over_the_frame_socket_too(
    volume: Volume, workdir: Path
) -> None:
    workdir.chmod(0o755)  # nobody must reach the socket
    srv = start_server(volume, "--socket-mode", "666")  # shared: peer credentials by default
    try:
        assert stat.S_IMODE(os.stat(frames_of(srv)).st_mode) == 0o666
        with connect(srv.address) as root:
            with root.open("/secret", "wb") as f:
                f.write(b"root only")
            root.chmod("/secret", 0o600)
            root.mkdir("/pub")
            root.chmod("/pub", 0o777)
            out = subprocess.run(
                [sys.executable, "-c", AS_NOBODY, frames_of(srv)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout.split("\n")[:2] == [
                f"secret: 7 {errno.EACCES}",  # PERMISSION_DENIED
                f"owner: {NOBODY} {NOBODY}",
            ]
            root.unlink("/pub/mine")
            root.rmdir("/pub")
            root.unlink("/secret")
    finally:
        assert srv.stop() == 0


def test_a_wrong_token_is_refused_at_the_first_frame(volume: Volume, workdir: Path) -> None:
    tokens = workdir / "tokens"
    tokens.write_text("a-token-of-sixteen-or-more\n")
    srv = start_server(volume, "--token-file", str(tokens))
    try:
        stats = "Stats"  # the frame socket names its calls (the typed table is in rpc.py)
        with pytest.raises(errors.PermissionDenied, match="wrong token"):
            FrameChannel(frames_of(srv), "not-the-token-at-all").call(stats, b"", 30)
        with pytest.raises(errors.PermissionDenied, match="missing token"):
            FrameChannel(frames_of(srv), None).call(stats, b"", 30)
        channel = FrameChannel(frames_of(srv), "a-token-of-sixteen-or-more")
        reply = channel.call(stats, b"", 30)
        channel.close()
        assert reply is not None and reply.status == 0
    finally:
        assert srv.stop() == 0
    assert_log_clean(srv.log, ["refused frames"])


def test_calls_sent_before_another_in_one_frame_are_answered_first_in_order(
    server: ServerProc,
) -> None:
    """``FrameCall.before``: each answered as if sent alone, in order, before the
    call that carries them; one failing stops nothing; a carried call cannot
    carry calls itself."""
    with connect(server.address) as c:  # a session the calls name
        caller = c.server.caller
        s = _raw(frames_of(server))
        _send(s, pb.FrameHello().SerializeToString())
        assert _receive(s).answers_before

        def frame_call(method: str, request: object, *before: pb.FrameCall) -> pb.FrameCall:
            return pb.FrameCall(
                method=method,
                request=request.SerializeToString(),  # type: ignore[attr-defined]
                before=list(before),
            )

        mkdir = frame_call("Mkdir", pb.MkdirRequest(caller=caller, path="/d", mode=0o755))
        again = frame_call("Mkdir", pb.MkdirRequest(caller=caller, path="/d", mode=0o755))
        nested = frame_call("Rmdir", pb.PathRequest(caller=caller, path="/d"), mkdir)
        stat_d = frame_call(
            "GetAttr", pb.GetAttrRequest(caller=caller, path="/d"), mkdir, again, nested
        )
        _send(s, stat_d.SerializeToString())
        reply = _receive(s)
        assert reply.status == 0, reply.message
        assert stat.S_ISDIR(pb.Attr.FromString(reply.reply).mode)  # /d was made first
        made, exists, refused = reply.before
        assert (made.status, exists.errno, refused.errno) == (0, errno.EEXIST, errno.EINVAL)
        assert "cannot carry" in refused.message
        s.close()


def test_to_a_server_that_does_not_answer_calls_before_another_they_go_alone_first(
    server: ServerProc,
) -> None:
    """An older server ignores ``FrameCall.before``: the channel then sends each
    carried call by itself first, on the same connection, and gives back the
    same answers in the same places."""
    with connect(server.address) as c:  # a session the calls name
        caller = c.server.caller
        channel = FrameChannel(frames_of(server), None)
        try:
            # The frame socket names its calls (the typed table is in rpc.py).
            stats, get_attr, make = "Stats", "GetAttr", "Mkdir"
            assert channel.call(stats, b"", 30) is not None
            (pooled,) = channel._idle
            assert pooled.answers_before
            pooled.answers_before = False  # as an older server's hello reply says
            mkdir = pb.MkdirRequest(caller=caller, path="/d", mode=0o755).SerializeToString()
            again = mkdir
            stat_d = pb.GetAttrRequest(caller=caller, path="/d").SerializeToString()
            reply = channel.call(get_attr, stat_d, 30, before=[(make, mkdir), (make, again)])
            assert reply is not None and reply.status == 0
            assert stat.S_ISDIR(pb.Attr.FromString(reply.reply).mode)
            assert [(a.status, a.errno) for a in reply.before] == [(0, 0), (6, errno.EEXIST)]
        finally:
            channel.close()
