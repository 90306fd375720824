"""On the unix socket the kernel says who connected (SO_PEERCRED, ``--peer-credentials``).

A non-root process acts as itself whatever its Caller claims; a root peer (a
FUSE daemon acting for its callers) may assert ids. This is the default as
soon as the socket is shared (a group or other mode bits). The non-root
process is a real one: it drops to nobody before it connects, as the kernel
records the peer's credentials at connect().
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.client import connect
from daxfs.shared import errors
from daxfs.testing import (
    ServerProc,
    Volume,
    assert_fsck_clean,
    assert_log_clean,
    fuse_mount,
    start_server,
)

NOBODY = 65534

AS_NOBODY = textwrap.dedent(
    """
    import os, sys
    import grpc
    from daxfs.proto import daxfs_pb2 as pb, daxfs_pb2_grpc as pb_grpc

    os.setgroups([]); os.setgid(65534); os.setuid(65534)  # before connecting
    stub = pb_grpc.DaxfsStub(grpc.insecure_channel(sys.argv[1]))
    hello = stub.Hello(pb.HelloRequest(client_name="nobody"), timeout=30)
    claims_root = pb.Caller(uid=0, gid=0, groups=[0], client_id=hello.client_id)
    try:
        stub.Open(pb.OpenRequest(caller=claims_root, path="/secret", read=True), timeout=30)
        print("secret: read")
    except grpc.RpcError as exc:
        print("secret:", exc.code().name)
    made = stub.Create(
        pb.CreateRequest(caller=claims_root, path="/pub/mine", mode=0o644, write=True),
        timeout=30,
    )
    print("owner:", made.attr.uid, made.attr.gid)
    stub.Release(pb.ReleaseRequest(caller=claims_root, handle=made.handle), timeout=30)
    try:
        stub.ListSessions(pb.ListSessionsRequest(caller=claims_root), timeout=30)
        print("sessions: listed")
    except grpc.RpcError as exc:
        print("sessions:", exc.code().name)
    stub.Goodbye(pb.GoodbyeRequest(caller=claims_root), timeout=30)
    """
)


@pytest.fixture
def peer_server(volume: Volume, workdir: Path) -> Iterator[ServerProc]:
    workdir.chmod(0o755)  # nobody must reach the socket
    srv = start_server(volume, "--socket-mode", "666")  # shared: peer credentials by default
    yield srv
    assert srv.stop() == 0
    assert "Traceback" not in srv.log.read_text()
    assert_fsck_clean(volume)


def _as_nobody_claiming_root(address: str) -> list[str]:
    """What a process running as nobody gets when every request claims uid 0."""
    with connect(address) as root:
        with root.open("/secret", "wb") as f:
            f.write(b"root only")
        root.chmod("/secret", 0o600)
        root.mkdir("/pub")
        root.chmod("/pub", 0o777)
        out = subprocess.run(
            [sys.executable, "-c", AS_NOBODY, address],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        root.unlink("/pub/mine")
        root.rmdir("/pub")
        root.unlink("/secret")
    return out.stdout.split("\n")[:3]


def test_a_non_root_peer_acts_as_itself_whatever_it_claims(peer_server: ServerProc) -> None:
    assert _as_nobody_claiming_root(peer_server.address) == [
        "secret: PERMISSION_DENIED",
        f"owner: {NOBODY} {NOBODY}",
        "sessions: PERMISSION_DENIED",
    ]


def test_the_operator_may_turn_peer_credentials_off_and_is_warned(
    volume: Volume, workdir: Path
) -> None:
    workdir.chmod(0o755)
    srv = start_server(volume, "--socket-mode", "666", "--no-peer-credentials")
    try:
        # What the default prevents: nobody claims root and is root.
        assert _as_nobody_claiming_root(srv.address) == [
            "secret: read",
            "owner: 0 0",
            "sessions: listed",
        ]
    finally:
        assert srv.stop() == 0
    assert_log_clean(srv.log, ["acts as whatever uid it claims, root included"])
    assert_fsck_clean(volume)


def test_a_private_socket_needs_no_relay_unless_asked(volume: Volume, workdir: Path) -> None:
    """0600: only the server's own user may connect, and it owns the region anyway."""
    for extra, relayed in (((), False), (("--peer-credentials",), True)):
        srv = start_server(volume, *extra)
        try:
            private = [p.name for p in workdir.iterdir() if p.name.startswith(".daxfs-private-")]
            assert bool(private) == relayed
            with connect(srv.address) as c:
                assert c.listdir("/") == []
        finally:
            assert srv.stop() == 0
        assert_log_clean(srv.log)
        left = [p.name for p in workdir.iterdir() if p.name.startswith(".daxfs-private-")]
        assert left == [], "the server leaves no private socket directory behind"


def test_a_root_peer_may_assert_the_ids_it_acts_for(peer_server: ServerProc) -> None:
    with connect(peer_server.address) as root:
        with root.open("/secret", "wb") as f:
            f.write(b"root only")
        root.chmod("/secret", 0o600)
        root.mkdir("/pub")
        root.chmod("/pub", 0o777)
        with connect(peer_server.address, uid=1000, gid=1000, groups=()) as fuse_like:
            with pytest.raises(errors.PermissionDenied):
                fuse_like.open("/secret", "rb")
            with fuse_like.open("/pub/f", "wb") as f:
                f.write(b"as 1000")
            assert fuse_like.stat("/pub/f").uid == 1000
            fuse_like.unlink("/pub/f")
        root.rmdir("/pub")
        root.unlink("/secret")


@pytest.mark.fuse
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing")
def test_a_fuse_daemon_on_a_shared_socket_still_acts_for_its_callers(
    peer_server: ServerProc, workdir: Path
) -> None:
    """The mount daemon runs as root: through the relay it asserts each caller's ids."""
    with fuse_mount(peer_server.address, workdir / "mnt", "-o", "allow_other") as m:
        secret = m.path / "secret"
        secret.write_bytes(b"root only")
        os.chmod(secret, 0o600)
        (m.path / "pub").mkdir(mode=0o777)
        os.chmod(m.path / "pub", 0o777)
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        code = (
            "import os, sys\n"
            "try:\n    os.close(os.open(sys.argv[1], os.O_RDONLY)); print(0)\n"
            "except OSError as e:\n    print(e.errno)\n"
            "open(sys.argv[2], 'w').write('x')\n"
        )
        out = subprocess.run(
            [*as_nobody, "/usr/bin/python3", "-c", code, str(secret), str(m.path / "pub/mine")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.stdout.strip() == str(errno.EACCES), out
        st = os.stat(m.path / "pub/mine")
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
        os.unlink(m.path / "pub/mine")
        os.rmdir(m.path / "pub")
        os.unlink(secret)
