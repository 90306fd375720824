"""Faults caused for real: a full metadata disk, a region or metadata changed behind the
server's back. A failed volume refuses every call, says what to do, and logs it once."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from daxfs.client import Client, connect, rpc
from daxfs.proto import daxfs_pb2 as pb
from daxfs.proto import daxfs_pb2_grpc as pb_grpc
from daxfs.server.daemon import create_server
from daxfs.server.failed import FailedVolume
from daxfs.server.namespace import Namespace
from daxfs.server.volume import close_volume, format_volume, open_volume
from daxfs.shared import errors
from daxfs.testing import (
    Volume,
    assert_fsck_clean,
    assert_log_clean,
    daxfs_cmd,
    run_server,
    start_server,
)

MIB = 1024 * 1024


@pytest.fixture
def small_meta_fs(workdir: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs for the metadata file: the disk that fills up."""
    mnt = workdir / "metafs"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_metadata_disk_is_a_clean_enospc(workdir: Path, small_meta_fs: Path) -> None:
    volume = Volume(workdir, str(workdir / "region"), str(small_meta_fs / "meta"))
    format_volume(volume.region, volume.meta, 64 * MIB)
    ballast = small_meta_fs / "ballast"
    ballast.write_bytes(bytes(1024 * 1024))  # what the admin frees once the disk is full
    srv = start_server(volume)
    try:
        with connect(srv.address) as c:
            made = []
            with pytest.raises(errors.NoSpace, match="metadata"):
                for i in range(10_000):
                    path = f"/file-{i:05d}-" + "x" * 200
                    with c.open(path, "wb"):
                        pass
                    made.append(path)
                    pad = pb.XattrRequest(
                        caller=c.server.caller, path=path, name="user.pad", value=b"p" * 8000
                    )
                    c.server.call(rpc.SET_XATTR, pad)
            assert made, "some files fit before the disk filled"
            # The server is alive and consistent; freeing space on that disk makes it usable again.
            assert c.exists(made[0])
            ballast.unlink()
            for path in made[: len(made) // 2]:
                c.unlink(path)
            with c.open("/after", "wb") as f:
                f.write(b"room again")
            with c.open("/after", "rb") as f:
                assert f.read() == b"room again"
    finally:
        assert srv.stop() == 0
    assert_log_clean(srv.log)
    assert_fsck_clean(volume)


# The session stream is refused too (DATA_LOSS): the client says so and retries.
@pytest.mark.client_log("session stream lost")
def test_a_region_replaced_behind_the_servers_back_is_detected(volume: Volume) -> None:
    srv = start_server(volume)
    try:
        with connect(srv.address) as c:
            with c.open("/a", "wb") as f:
                f.write(b"data")
            c.mkdir("/d")
            # Replace the region file (new inode at the same path).
            os.rename(volume.region, volume.region + ".old")
            with open(volume.region, "wb") as f:
                f.truncate(64 * MIB)
            deadline = time.monotonic() + 10
            while "replaced" not in srv.log.read_text():
                assert time.monotonic() < deadline, "the server did not notice"
                time.sleep(0.1)
            _assert_everything_refused(c, srv.address, "replaced by another file")
        # New clients map the new file: refused with a clear message, not served garbage.
        with pytest.raises(errors.VolumeFailed, match="daxfs fsck"):
            connect(srv.address, region_path=volume.region)
        time.sleep(2.5)  # two sweep periods: a failed volume is not swept (no traceback each)
    finally:
        assert srv.stop() == 0
    _assert_failure_logged_once(srv.log)
    # Restarting on the replacement is refused too.
    out = run_server(volume)
    assert out.returncode != 0 and "bad magic" in out.stderr
    assert f"but {volume.region} has {64 * MIB}: it is not that region" in out.stderr


# The session stream is refused too (DATA_LOSS): the client says so and retries.
@pytest.mark.client_log("session stream lost")
def test_metadata_corrupted_behind_the_servers_back_fails_the_volume(volume: Volume) -> None:
    srv = start_server(volume)
    try:
        with connect(srv.address) as c:
            c.mkdir("/d")
            # What a stray tool could do: rewrite the schema through SQLite itself.
            with sqlite3.connect(volume.meta, isolation_level=None) as stray:
                stray.execute("PRAGMA writable_schema=ON")
                version = stray.execute("PRAGMA schema_version").fetchone()[0]
                stray.execute(
                    "UPDATE sqlite_master SET sql='CREATE TABLE inodes(' WHERE name='inodes'"
                )
                stray.execute(f"PRAGMA schema_version={version + 1}")
            stray.close()
            # The first call to reach SQLite finds it; it and every later call are refused.
            with pytest.raises(errors.VolumeFailed, match="malformed"):
                c.mkdir("/e")
            _assert_everything_refused(c, srv.address, "malformed")
        time.sleep(2.5)  # two sweep periods: the sweeper stopped without a word
    finally:
        assert srv.stop() == 0
    _assert_failure_logged_once(srv.log)


def test_a_failed_volume_refuses_every_verb_of_the_namespace(volume: Volume) -> None:
    """The wrapper has the namespace's whole interface and answers none of it."""
    ns = open_volume(volume.region, volume.meta)
    try:
        failed = FailedVolume("its region was removed", "Stop the server and run daxfs fsck")
        verbs = [name for name in dir(Namespace) if not name.startswith("_")]
        assert {"getattr", "readdir", "statfs", "sweep", "hello", "leases", "region"} <= {
            *verbs,
            *vars(ns),
        }
        for name in [*verbs, *vars(ns)]:
            if name.startswith("_"):
                continue
            with pytest.raises(errors.VolumeFailed, match=r"its region was removed.*daxfs fsck"):
                getattr(failed, name)
        assert not hasattr(failed, "__deepcopy__")  # special names stay ordinary
    finally:
        close_volume(ns)


def _assert_everything_refused(c: Client, address: str, reason: str) -> None:
    """Metadata-only calls too: nothing answers from metadata that no longer describes
    the region clients map. The refusal says why and what to do; health agrees."""
    for call in (
        lambda: c.stat("/"),
        lambda: c.listdir("/"),
        lambda: c.statfs(),
        lambda: c.mkdir("/f"),
        lambda: c.open("/d/x", "wb"),
    ):
        with pytest.raises(errors.VolumeFailed) as refused:
            call()
        message = str(refused.value)
        assert reason in message and "every call is refused" in message
        assert "daxfs fsck --repair" in message
        assert refused.value.errno == errno.EIO
    out = subprocess.run(daxfs_cmd("health", address), capture_output=True, text=True)
    assert out.returncode != 0 and "NOT_SERVING" in out.stdout + out.stderr


def _assert_failure_logged_once(log: Path) -> None:
    """One error line says what failed and what to do; no traceback, no sweep after it."""
    text = log.read_text()
    assert text.count("the volume failed") == 1, text
    assert_log_clean(log, ["the volume failed"])


def test_every_call_of_a_failed_volume_is_refused_but_stats(
    volume: Volume, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a real server in-process: every unary call and the session stream get
    DATA_LOSS/EIO named VolumeFailed, valid requests or not; only the operator's
    Stats answers; health says NOT_SERVING; the log has one error and no traceback."""
    caplog.set_level(logging.DEBUG, logger="daxfs.server")
    ns = open_volume(volume.region, volume.meta)
    server, address, servicer = create_server(ns, f"unix:{workdir}/s.sock", region_path="r")
    channel = grpc.insecure_channel(address)
    try:
        client_id = ns.hello().id
        servicer.fail("its region was removed")
        caller = pb.Caller(client_id=client_id)
        valid: dict[str, dict[str, object]] = {
            "Create": {"read": True},
            "Open": {"read": True},
            "GetLayout": {"mode": pb.LAYOUT_MODE_READ},
        }
        for name, typed in rpc.UNARY.items():
            call = channel.unary_unary(
                f"/daxfs.v1.Daxfs/{name}",
                request_serializer=typed.request.SerializeToString,
                response_deserializer=typed.reply.FromString,
            )
            request = typed.request(**valid.get(name, {}))
            if "caller" in typed.request.DESCRIPTOR.fields_by_name:
                request.caller.CopyFrom(caller)  # type: ignore[attr-defined]
            if name == "Stats":
                assert call(request, timeout=30).open_files == 0
                continue
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=30)
            _assert_refused(refused.value, name)
        stream = pb_grpc.DaxfsStub(channel).Session(
            iter([pb.SessionRequest(caller=caller)]), timeout=30
        )
        with pytest.raises(grpc.RpcError) as refused:
            next(stream)
        _assert_refused(refused.value, "Session")
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        channel.close()
        server.stop(grace=1).wait()
        close_volume(ns, clean=False)
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert [r.getMessage()[:40] for r in problems] == ["the volume failed (its region was remove"]
    assert not problems[0].exc_info


def _assert_refused(exc: grpc.RpcError, name: str) -> None:
    assert exc.code() == grpc.StatusCode.DATA_LOSS, (name, exc.code(), exc.details())
    trailing = dict(exc.trailing_metadata() or ())
    assert trailing["daxfs-errno"] == str(errno.EIO), name
    assert trailing["daxfs-error"] == "VolumeFailed", name
    assert "its region was removed" in exc.details() and "daxfs fsck --repair" in exc.details()
