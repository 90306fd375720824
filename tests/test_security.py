"""Authentication, TLS, socket permissions and POSIX permission checks by the server."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.cli import main
from daxfs.client import connect
from daxfs.shared import errors
from daxfs.testing import (
    ServerProc,
    Volume,
    assert_fsck_clean,
    run_server,
    start_server,
    tcp_server,
)

TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture
def token_file(workdir: Path) -> Path:
    path = workdir / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def auth_server(volume: Volume, token_file: Path) -> Iterator[ServerProc]:
    srv = start_server(volume, "--token-file", str(token_file))
    yield srv
    assert srv.stop() == 0
    assert_fsck_clean(volume)


@pytest.mark.parametrize("transport", ["frames", "grpc"])
def test_missing_or_wrong_token_is_refused_and_logged(
    auth_server: ServerProc,
    token_file: Path,
    workdir: Path,
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAXFS_FRAMES", "1" if transport == "frames" else "0")
    with pytest.raises(errors.PermissionDenied, match="missing token"):
        connect(auth_server.address)
    with pytest.raises(errors.PermissionDenied, match="wrong token"):
        connect(auth_server.address, token=TOKEN + "x")
    log = auth_server.log.read_text()
    if transport == "grpc":
        assert 'refused /daxfs.v1.Daxfs/Hello credential="" peer=: missing token' in log
        assert "refused /daxfs.v1.Daxfs/Hello credential=unknown:" in log
    else:  # judged once per connection, before any call
        assert 'refused frames credential="" peer=unix:frames: missing token' in log
        assert "refused frames credential=unknown:" in log
    assert ": wrong token" in log
    with connect(auth_server.address, token_file=str(token_file)) as c:
        with c.open("/f", "wb") as f:
            f.write(b"authenticated")
        # The session stream (gRPC, the token too) attaches in the background.
        deadline = time.monotonic() + 30
        while c.stats().sessions != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.stats().sessions == 1
        assert (c.server.conn.framed_calls > 0) == (transport == "frames")
        c.unlink("/f")


def test_token_from_the_environment_and_cli_flag(
    auth_server: ServerProc, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["ls", auth_server.address, "--token-file", str(token_file)]) == 0
    assert main(["ls", auth_server.address]) == 1
    monkeypatch.setenv("DAXFS_TOKEN_FILE", str(token_file))
    with connect(auth_server.address) as c:
        assert c.listdir("/") == []


def test_health_stays_open_without_a_token(auth_server: ServerProc) -> None:
    assert main(["health", auth_server.address]) == 0


def test_a_short_token_file_is_refused(volume: Volume, workdir: Path) -> None:
    short = workdir / "short"
    short.write_text("abc")
    out = run_server(volume, "--token-file", str(short))
    assert out.returncode == 1 and "at least 16 characters" in out.stderr


def test_unix_socket_is_0600_by_default_and_0660_with_a_group(volume: Volume) -> None:
    srv = start_server(volume)
    try:
        assert stat.S_IMODE(os.stat(srv.socket).st_mode) == 0o600
    finally:
        assert srv.stop() == 0
    srv = start_server(volume, "--socket-group", "daemon")
    try:
        st = os.stat(srv.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660
        import grp

        assert st.st_gid == grp.getgrnam("daemon").gr_gid
    finally:
        assert srv.stop() == 0


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_over_tcp(volume: Volume, workdir: Path, token_file: Path) -> None:
    cert, key = _self_signed(workdir)
    extra = ("--tls-cert", str(cert), "--tls-key", str(key), "--token-file", str(token_file))
    with tcp_server(volume, "localhost:0", *extra) as address:
        assert main(["health", address, "--tls-ca", str(cert)]) == 0
        with connect(address, token=TOKEN, tls_ca=str(cert)) as c, c.open("/tls", "wb") as f:
            f.write(b"encrypted in transit")
        with pytest.raises(errors.DaxfsError):
            connect(address, token=TOKEN, timeout=3)  # plaintext to a TLS port fails


def test_the_server_enforces_mode_bits_for_the_callers_uid(server: ServerProc) -> None:
    with connect(server.address) as root:
        with root.open("/secret", "wb") as f:
            f.write(b"root only")
        root.chmod("/secret", 0o600)
        root.mkdir("/pub")
        root.chmod("/pub", 0o755)
        with connect(server.address, uid=1000, gid=1000, groups=()) as user:
            with pytest.raises(errors.PermissionDenied):
                user.open("/secret", "rb")
            with pytest.raises(errors.PermissionDenied):
                user.open("/secret", "r+b")
            with pytest.raises(errors.PermissionDenied):
                user.unlink("/secret")
            with pytest.raises(errors.PermissionDenied):
                user.open("/pub/mine", "wb")
            with pytest.raises(errors.NotPermitted):
                user.chmod("/secret", 0o666)
            root.chmod("/pub", 0o777)
            with user.open("/pub/mine", "wb") as f:
                f.write(b"user data")
            assert user.stat("/pub/mine").uid == 1000
            user.unlink("/pub/mine")
        assert root.stat("/secret").size == 9
        root.unlink("/secret")
        root.rmdir("/pub")
