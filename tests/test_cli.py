"""The daxfs command: verbs called in-process (main([...])) and as processes."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from daxfs.cli import fsck_main, main, mkfs_main
from daxfs.testing import ServerProc, Volume, assert_log_clean, start_server, tcp_server


def test_put_ls_stat_extents_get_rm(
    server: ServerProc, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = workdir / "src.bin"
    src.write_bytes(os.urandom(300_000))
    assert main(["put", server.address, str(src), "/copy.bin"]) == 0
    assert main(["mkdir", server.address, "/dir"]) == 0
    assert main(["ls", server.address, "/"]) == 0
    out = capsys.readouterr().out
    assert "copy.bin" in out and "300000" in out and "dir" in out
    assert main(["stat", server.address, "/copy.bin"]) == 0
    assert "Size: 300000" in capsys.readouterr().out
    assert main(["extents", server.address, "/copy.bin"]) == 0
    assert "1 extent(s)" in capsys.readouterr().out
    dst = workdir / "dst.bin"
    assert main(["get", server.address, "/copy.bin", str(dst)]) == 0
    assert dst.read_bytes() == src.read_bytes()
    assert main(["rm", "-r", server.address, "/copy.bin", "/dir"]) == 0
    assert main(["ls", server.address]) == 0
    assert capsys.readouterr().out == ""


def test_client_verbs_report_errors_without_traceback(
    server: ServerProc, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rm", server.address, "/nope"]) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    assert main(["ls", "not-an-address"]) == 2


def test_mkfs_refuses_to_erase_without_force(
    volume: Volume, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mkfs", "--region", volume.region, "--size", "64M"]) == 1
    assert "--force" in capsys.readouterr().err
    assert mkfs_main(["--force", "--size", "64M", volume.region]) == 0
    assert fsck_main([volume.region]) == 0


def test_fsck_reports_and_fails_on_a_leak(
    volume: Volume, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    with sqlite3.connect(volume.meta) as db:
        db.execute("UPDATE free_extents SET length = length - 4096")
    assert main(["fsck", "--region", volume.region, "--meta", volume.meta]) == 1
    assert "leaked" in capsys.readouterr().out


def test_server_answers_health_and_reflection(server: ServerProc) -> None:
    with grpc.insecure_channel(server.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        reply = health.Check(health_pb2.HealthCheckRequest(service="daxfs.v1.Daxfs"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert "daxfs.v1.Daxfs" in names


def test_health_verb(server: ServerProc, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", server.address]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["health", f"unix:{workdir}/none.sock", "--wait", "0.5"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_fresh_server_creates_the_embedded_region_and_reopens_it(workdir: Path) -> None:
    region = workdir / "fresh.region"
    v = Volume(workdir, str(region), str(region) + ".meta")
    srv = start_server(v, "--size", "64M")
    assert srv.stop() == 0
    assert region.stat().st_size == 64 * 1024 * 1024
    assert oct(region.stat().st_mode & 0o777) == "0o600"
    again = start_server(v)  # no --size: reopen
    assert again.stop() == 0


def test_server_over_tcp(volume: Volume) -> None:
    from daxfs.client import connect

    with tcp_server(volume, "127.0.0.1:0", "--insecure") as address:
        assert address.startswith("127.0.0.1:")
        with connect(address) as c, c.open("/tcp", "wb") as f:
            f.write(b"over tcp")


# -- a damaged superblock --------------------------------------------------------


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        return int(reply.status)


def test_a_live_server_notices_a_damaged_superblock_and_fsck_repair_brings_it_back(
    volume: Volume, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from daxfs.client import connect

    srv = start_server(volume)
    srv.allowed_log.append("superblock damaged")
    try:
        with connect(srv.address) as c, c.open("/kept", "wb") as f:
            f.write(b"still here")
        assert _health(srv.address) == health_pb2.HealthCheckResponse.SERVING
        with open(volume.region, "r+b") as f:
            f.write(os.urandom(60) + b"\xff\xff\xff\xff" + b"\xff\xff\xff\xff")  # 68 bytes
        # The watchdog probes once a sweep period; the deadline only ends a hang.
        deadline = time.monotonic() + 120
        while _health(srv.address) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "health still SERVING:\n" + srv.log.read_text()
            time.sleep(0.1)
        log = srv.log.read_text()
        advice = f"daxfs fsck --repair --region {volume.region} --meta {volume.meta}"
        assert "superblock damaged" in log and advice in log
        assert "do not run mkfs" in log
        # While it runs, its lock refuses the repair.
        assert main(["fsck", "--repair", "--region", volume.region, "--meta", volume.meta]) == 1
        assert f"in use by pid {srv.proc.pid}" in capsys.readouterr().err
    finally:
        assert srv.stop() == 0
    assert_log_clean(srv.log, srv.allowed_log)
    assert mkfs_main(["--size", "64M", volume.region]) == 1  # not without --force
    assert "fsck --repair" in capsys.readouterr().err
    assert main(["fsck", "--repair", "--region", volume.region, "--meta", volume.meta]) == 0
    assert "REPAIRED: rewrote the superblock" in capsys.readouterr().out
    again = start_server(volume)
    try:
        with connect(again.address) as c, c.open("/kept", "rb") as f:
            assert f.read() == b"still here"
    finally:
        assert again.stop() == 0
    assert_log_clean(again.log, srv.allowed_log)  # the same file, the first server's lines too
    assert fsck_main([volume.region]) == 0
