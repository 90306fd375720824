"""Client certificates on TCP (mTLS): each one a credential with a policy, like a token.

One CA signs the server's certificate and the guests'. The token file maps
certificate subject CNs to policies (``NAME cert:CN POLICY``); the server
requires a certificate that CA signed on every connection (``--tls-client-ca``).
The certificates are made here with the openssl command.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.cli import main
from daxfs.client import Client, connect, rpc
from daxfs.proto import daxfs_pb2 as pb
from daxfs.server.auth import parse_keyring
from daxfs.shared import errors
from daxfs.testing import (
    Volume,
    assert_fsck_clean,
    assert_log_clean,
    run_server,
    server_argv,
    tcp_server,
)

TOKEN = "token-holder-0123456789abcdef"
TOKENS = f"""\
# name    token           policy
host      cert:host-c     trusted
guest-c   cert:guest-c    squash=1000:1000
reader    cert:reader-c   root-squash read-only
holder    {TOKEN}         trusted
"""


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return cert, key


def _signed(
    d: Path, ca: tuple[Path, Path], cn: str, *ext: str, file: str = ""
) -> tuple[Path, Path]:
    name = file or cn
    cert, key, csr, extfile = (d / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
             "-keyout", str(key), "-out", str(csr))  # fmt: skip
    extfile.write_text("\n".join(ext) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "1", "-extfile", str(extfile), "-out", str(cert),
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """{name: (certificate, key)}: the CA, the server, four guests, and a foreign CA's guest."""
    d = tmp_path_factory.mktemp("pki")
    ca = _ca(d, "daxfs-ca")
    other = _ca(d, "other-ca")
    made = {
        "ca": ca,
        "server": _signed(d, ca, "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        # The trusted host's name, signed by a CA the server does not trust.
        "forged": _signed(d, other, "host-c", "basicConstraints=CA:FALSE", file="forged"),
    }
    for cn in ("host-c", "guest-c", "reader-c", "stranger"):
        made[cn] = _signed(d, ca, cn, "basicConstraints=CA:FALSE")
    return made


@pytest.fixture
def mtls(
    volume: Volume, workdir: Path, pki: dict[str, tuple[Path, Path]]
) -> Iterator[tuple[str, Path]]:
    """(address, log) of a server that requires client certificates."""
    tokens = workdir / "tokens"
    tokens.write_text(TOKENS)
    cert, key = pki["server"]
    log = workdir / "server.log"
    with tcp_server(
        volume,
        "localhost:0",
        "--token-file", str(tokens),
        "--tls-cert", str(cert),
        "--tls-key", str(key),
        "--tls-client-ca", str(pki["ca"][0]),
        log=log,
    ) as address:  # fmt: skip
        yield address, log
    assert_log_clean(log, ["unknown certificate", "credential reader is read-only"])
    assert_fsck_clean(volume)


def _as(address: str, pki: dict[str, tuple[Path, Path]], who: str | None, **kw: object) -> Client:
    mine = {} if who is None else {"tls_cert": str(pki[who][0]), "tls_key": str(pki[who][1])}
    return connect(address, tls_ca=str(pki["ca"][0]), **mine, **kw)  # type: ignore[arg-type]


def test_each_certificate_acts_under_its_credentials_policy(
    mtls: tuple[str, Path], pki: dict[str, tuple[Path, Path]]
) -> None:
    address, _ = mtls
    with _as(address, pki, "host-c") as host:
        with host.open("/secret", "wb") as f:
            f.write(b"root only")
        host.chmod("/secret", 0o600)
        host.mkdir("/pub")
        host.chmod("/pub", 0o777)
        with _as(address, pki, "guest-c", uid=0, gid=0) as guest:
            with pytest.raises(errors.PermissionDenied):
                guest.open("/secret", "rb")
            with guest.open("/pub/mine", "wb") as f:
                f.write(b"guest data")
            assert (guest.stat("/pub/mine").uid, guest.stat("/pub/mine").gid) == (1000, 1000)
            with pytest.raises(errors.NotPermitted):
                guest.sessions()
            with _as(address, pki, "reader-c") as reader:
                with reader.open("/pub/mine", "rb") as f:
                    assert f.read() == b"guest data"
                with pytest.raises(errors.PermissionDenied):
                    reader.open("/secret", "rb")  # root-squashed: not root
                with pytest.raises(errors.ReadOnly):
                    reader.mkdir("/d")
                opened = reader.server.call(
                    rpc.OPEN,
                    pb.OpenRequest(caller=reader.server.caller, path="/pub/mine", read=True),
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
                    rpc.RELEASE,
                    pb.ReleaseRequest(caller=reader.server.caller, handle=opened.handle),
                )
                listed = {s.credential for s in host.sessions()}
                assert listed == {"host", "guest-c", "reader"}
                # Every session stream (the Session RPC) was admitted by its certificate.
                assert host.stats().sessions == 3
        host.unlink("/pub/mine")
        host.rmdir("/pub")
        host.unlink("/secret")


def test_an_unknown_certificate_is_refused_logged_and_counted(
    mtls: tuple[str, Path], pki: dict[str, tuple[Path, Path]]
) -> None:
    address, log = mtls
    with pytest.raises(errors.PermissionDenied, match="unknown certificate"):
        _as(address, pki, "stranger")
    with _as(address, pki, "host-c") as host:
        assert host.stats().auth_refusals == 1
    assert "credential=cert:stranger" in log.read_text()
    # A call that carries a token is judged by the token alone.
    with _as(address, pki, "stranger", token=TOKEN) as holder:
        assert {s.credential for s in holder.sessions()} == {"holder"}


def test_a_guest_without_a_certificate_the_ca_signed_never_reaches_daxfs(
    mtls: tuple[str, Path], pki: dict[str, tuple[Path, Path]]
) -> None:
    """TLS refuses it at the handshake: the client sees UNAVAILABLE, daxfs counts nothing."""
    address, _ = mtls
    for who, token in ((None, None), (None, TOKEN), ("forged", None)):
        with pytest.raises(errors.Unavailable):
            _as(address, pki, who, token=token, timeout=10)
    with _as(address, pki, "host-c") as host:
        assert host.stats().auth_refusals == 0
    # The health check needs no credential, but the handshake needs a certificate.
    tls = ["--tls-ca", str(pki["ca"][0])]
    assert main(["health", address, *tls]) == 1
    mine = ["--tls-cert", str(pki["reader-c"][0]), "--tls-key", str(pki["reader-c"][1])]
    assert main(["health", address, *tls, *mine]) == 0


def test_certificate_credentials_need_a_server_that_verifies_them(
    volume: Volume, workdir: Path, pki: dict[str, tuple[Path, Path]]
) -> None:
    tokens = workdir / "tokens"
    tokens.write_text(TOKENS)
    out = run_server(volume, "--token-file", str(tokens))
    assert out.returncode == 1 and "--tls-client-ca" in out.stderr
    out = run_server(volume, "--tls-client-ca", str(pki["ca"][0]))
    assert out.returncode == 1 and "applies to TLS on TCP" in out.stderr
    # TLS alone says nothing about who may act as whom.
    cert, key = pki["server"]
    out = subprocess.run(
        server_argv(volume, "localhost:0", "--tls-cert", str(cert), "--tls-key", str(key)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "without --token-file" in out.stderr
    with pytest.raises(errors.InvalidArgument, match="same certificate"):
        parse_keyring("a cert:x trusted\nb cert:x squash=1:1\n")
    with pytest.raises(errors.InvalidArgument, match="subject CN"):
        parse_keyring("a cert: trusted\n")
