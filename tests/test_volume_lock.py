"""The volume lock: one process at a time writes a volume, and a refusal names the holder.

Real server processes on real region files. The lock is an flock on
``<metadata>.lock``: the kernel drops it when the holder dies, however it dies.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path

import pytest

from daxfs.cli import main
from daxfs.server.volume import VolumeLock, close_volume, lock_holder, open_volume
from daxfs.shared.errors import VolumeBusy
from daxfs.testing import ServerProc, Volume, run_server, start_server


def test_a_second_server_on_a_live_volume_is_refused_naming_the_first(
    server: ServerProc, volume: Volume
) -> None:
    out = run_server(volume)
    assert out.returncode == 1
    assert f"in use by pid {server.proc.pid} on {socket.gethostname()}" in out.stderr
    assert "daxfs server --region" in out.stderr  # the holder's command
    assert "Traceback" not in out.stderr
    assert server.proc.poll() is None  # the first one serves on


def test_mkfs_and_a_repair_are_refused_on_a_live_volume(
    server: ServerProc, volume: Volume, capsys: pytest.CaptureFixture[str]
) -> None:
    before = Path(volume.meta).read_bytes()
    assert main(["mkfs", "--force", "--size", "64M", "--region", volume.region]) == 1
    assert f"in use by pid {server.proc.pid}" in capsys.readouterr().err
    assert main(["fsck", "--repair", "--region", volume.region, "--meta", volume.meta]) == 1
    err = capsys.readouterr().err
    assert f"in use by pid {server.proc.pid}" in err and "fsck --repair needs it alone" in err
    assert Path(volume.meta).read_bytes() == before


def test_a_plain_check_of_a_live_volume_runs_with_a_note(
    server: ServerProc, volume: Volume, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fsck", "--region", volume.region, "--meta", volume.meta]) == 0
    out = capsys.readouterr().out
    assert f"note: the volume is in use by pid {server.proc.pid}" in out
    assert "may see a change half made" in out


def test_a_killed_server_leaves_no_stale_lock(volume: Volume) -> None:
    srv = start_server(volume)
    srv.kill()  # SIGKILL: no cleanup runs
    assert lock_holder(volume.meta) is None
    again = start_server(volume)
    try:
        holder = lock_holder(volume.meta)
        assert holder is not None and holder.pid == again.proc.pid
    finally:
        assert again.stop() == 0
    assert lock_holder(volume.meta) is None
    assert main(["fsck", "--repair", "--region", volume.region, "--meta", volume.meta]) == 0


def test_the_lock_is_one_holder_even_within_a_process(volume: Volume) -> None:
    with VolumeLock(volume.meta, "a test"):
        holder = lock_holder(volume.meta)
        assert holder is not None and holder.pid == os.getpid()
        with pytest.raises(VolumeBusy, match=f"in use by pid {os.getpid()}"):
            VolumeLock(volume.meta, "another test")
    VolumeLock(volume.meta, "a third test").release()


def test_an_idle_sweep_needs_no_write_lock_on_the_metadata(volume: Volume) -> None:
    """The daemon sweeps every second: with no session gone and nothing quarantined
    it must not take SQLite's write lock (here held by another connection)."""
    ns = open_volume(volume.region, volume.meta)
    other = sqlite3.connect(volume.meta, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        assert ns.sweep() == 0
        other.execute("ROLLBACK")
    finally:
        other.close()
        close_volume(ns)
