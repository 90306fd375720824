"""Who is asking is decided by the server, from the credential, never by the request alone.

One server, one token file with four guests: a trusted FUSE host, a guest
squashed to uid 1000, a read-only guest, and a second trusted guest. Each
test is one thing a credential must not be able to do, tried on real processes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from daxfs.cli import main
from daxfs.client import Client, connect, rpc
from daxfs.proto import daxfs_pb2 as pb
from daxfs.server.auth import parse_keyring
from daxfs.shared import errors
from daxfs.testing import (
    ServerProc,
    Volume,
    assert_fsck_clean,
    server_argv,
    start_server,
    tcp_server,
)

HOST = "host-token-0123456789abcdef"
GUEST = "guest-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
OTHER = "other-token-0123456789abcdef"
TOKENS = f"""\
# name    token     policy
fuse-host {HOST}    trusted
guest-a   {GUEST}   squash=1000:1000
reader    {READER}  root-squash read-only
guest-b   {OTHER}   trusted   # a second trusted guest
"""


@pytest.fixture
def guests(volume: Volume, workdir: Path) -> Iterator[ServerProc]:
    path = workdir / "tokens"
    path.write_text(TOKENS)
    path.chmod(0o600)
    srv = start_server(volume, "--token-file", str(path))
    yield srv
    assert srv.stop() == 0
    assert "Traceback" not in srv.log.read_text()
    assert_fsck_clean(volume)


def _secret(host: Client) -> None:
    with host.open("/secret", "wb") as f:
        f.write(b"root only")
    host.chmod("/secret", 0o600)


def test_a_squashed_guest_acts_as_its_uid_whatever_it_claims(guests: ServerProc) -> None:
    with connect(guests.address, token=HOST) as host:
        _secret(host)
        host.mkdir("/pub")
        host.chmod("/pub", 0o777)
        with connect(guests.address, token=GUEST, uid=0, gid=0) as guest:
            with pytest.raises(errors.PermissionDenied):
                guest.open("/secret", "rb")
            with pytest.raises(errors.NotPermitted):
                guest.chmod("/secret", 0o644)
            with guest.open("/pub/mine", "wb") as f:
                f.write(b"guest data")
            assert (guest.stat("/pub/mine").uid, guest.stat("/pub/mine").gid) == (1000, 1000)
            with pytest.raises(errors.NotPermitted):
                guest.sessions()  # root only: the guest is not root
        assert host.stat("/secret").uid == 0
        host.unlink("/pub/mine")
        host.rmdir("/pub")
        host.unlink("/secret")


def test_a_read_only_guest_reads_through_read_layouts_and_changes_nothing(
    guests: ServerProc,
) -> None:
    with connect(guests.address, token=HOST) as host:
        with host.open("/shared", "wb") as f:
            f.write(b"for everyone")
        with connect(guests.address, token=READER) as reader:
            with reader.open("/shared", "rb") as f:
                assert f.read() == b"for everyone"
            for change in (
                lambda: reader.open("/shared", "r+b"),
                lambda: reader.open("/new", "wb"),
                lambda: reader.mkdir("/d"),
                lambda: reader.unlink("/shared"),
                lambda: reader.rename("/shared", "/moved"),
                lambda: reader.chmod("/shared", 0o600),
                lambda: reader.server.call(
                    rpc.MKNOD,
                    pb.MknodRequest(caller=reader.server.caller, path="/fifo", mode=0o10644),
                ),
            ):
                with pytest.raises(errors.ReadOnly):
                    change()
            # A handle open for reading gets no WRITE layout either.
            opened = reader.server.call(
                rpc.OPEN, pb.OpenRequest(caller=reader.server.caller, path="/shared", read=True)
            )
            with pytest.raises(errors.ReadOnly):
                reader.server.call(
                    rpc.GET_LAYOUT,
                    pb.GetLayoutRequest(
                        caller=reader.server.caller,
                        handle=opened.handle,
                        length=4096,
                        mode=pb.LAYOUT_MODE_WRITE,
                    ),
                )
            reader.server.call(
                rpc.RELEASE, pb.ReleaseRequest(caller=reader.server.caller, handle=opened.handle)
            )
        assert host.listdir("/") == ["shared"]
        with host.open("/shared", "rb") as f:
            assert f.read() == b"for everyone"
        host.unlink("/shared")
        log = guests.log.read_text()
        assert "credential=reader" in log and "read-only" in log


def test_a_session_opened_with_one_token_cannot_be_used_with_another(
    guests: ServerProc,
) -> None:
    with connect(guests.address, token=OTHER) as b, connect(guests.address, token=HOST) as host:
        before = host.stats().auth_refusals
        with grpc.insecure_channel(guests.address) as channel:
            getattr_ = channel.unary_unary(
                "/daxfs.v1.Daxfs/GetAttr",
                request_serializer=pb.GetAttrRequest.SerializeToString,
                response_deserializer=pb.Attr.FromString,
            )
            # guest-a presents its own token with guest-b's session id.
            with pytest.raises(grpc.RpcError) as refused:
                getattr_(
                    pb.GetAttrRequest(caller=b.server.caller, path="/"),
                    metadata=(("authorization", f"Bearer {GUEST}"),),
                    timeout=10,
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert dict(refused.value.trailing_metadata())["daxfs-errno"] == "1"  # EPERM
        assert b.listdir("/") == []  # the owner's session is unharmed
        listed = host.server.call(
            rpc.LIST_SESSIONS, pb.ListSessionsRequest(caller=host.server.caller)
        )
        assert {s.credential for s in listed.sessions} == {"guest-b", "fuse-host"}
        assert host.stats().auth_refusals == before + 1
    assert "credential=guest-a" in guests.log.read_text()


def test_the_operator_sees_which_credential_opened_each_session(
    guests: ServerProc, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = workdir / "host-token"
    token.write_text(HOST + "\n")
    with (
        connect(guests.address, token=GUEST, name="guest-a-app"),
        connect(guests.address, token=READER, name="reader-app"),
    ):
        assert main(["sessions", guests.address, "--token-file", str(token)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["client_id", "stream", "idle_s", "recalls", "credential", "name"]
    assert sorted(row.split()[4:] for row in rows) == [
        ["guest-a", "guest-a-app"],
        ["reader", "reader-app"],
    ]


def test_refusals_are_logged_with_the_credential_and_counted(guests: ServerProc) -> None:
    with pytest.raises(errors.PermissionDenied):
        connect(guests.address, token="no-such-token-0123456789")
    with connect(guests.address, token=READER) as reader:
        with pytest.raises(errors.ReadOnly):
            reader.mkdir("/nope")
        assert reader.stats().auth_refusals == 2
    log = guests.log.read_text()
    assert "credential=unknown:" in log and "no-such-token" not in log


def test_a_token_file_with_a_bad_line_stops_the_server(volume: Volume, workdir: Path) -> None:
    path = workdir / "tokens"
    path.write_text(f"guest {GUEST} squash\n")
    out = subprocess.run(
        server_argv(volume, f"unix:{workdir}/x.sock", "--token-file", str(path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "squash needs the ids" in out.stderr
    with pytest.raises(errors.InvalidArgument, match="same token"):
        parse_keyring(f"a {GUEST} trusted\nb {GUEST} trusted\n")
    with pytest.raises(errors.InvalidArgument, match="unknown policy"):
        parse_keyring(f"a {GUEST} root\n")
    assert parse_keyring(GUEST).match(GUEST.encode()) is not None  # one token: "default"


def test_plain_tcp_without_tls_does_not_start_unless_the_operator_says_so(
    volume: Volume,
) -> None:
    out = subprocess.run(
        server_argv(volume, "127.0.0.1:0"), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "without TLS" in out.stderr and "--insecure" in out.stderr
    assert "anyone who reaches the port acts as any uid" in out.stderr
    with tcp_server(volume, "127.0.0.1:0", "--insecure") as address, connect(address) as c:
        assert c.listdir("/") == []
