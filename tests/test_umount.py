"""``daxfs umount``: a busy mount says who holds it, and a failure keeps its own words.

Real servers, real FUSE mounts, real processes holding files. Issue 13 reported
that after a server restart a mount whose file had been open stayed busy; as
root that does not happen (the restart test below), and what was "busy" was
``daxfs umount`` calling every failure of ``fusermount3 -u`` (the non-root
path) busy, whatever fusermount3 had said.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daxfs.client.fuse.mount import fusermount_unmount, is_mounted
from daxfs.testing import (
    ServerProc,
    Volume,
    daxfs_cmd,
    server_argv,
    start_mount,
    start_server,
)

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing: no FUSE in this machine"
    ),
]

#: A process that opens a file, says so, and holds it until its stdin closes.
HOLD = (
    "import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); print('held', flush=True); "
    "sys.stdin.read(); os.close(fd)"
)


def _hold(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    proc.stdout.close()


def _umount(mp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(daxfs_cmd("umount", str(mp)), capture_output=True, text=True, timeout=120)


def test_a_busy_mount_names_the_process_that_holds_it(server: ServerProc, workdir: Path) -> None:
    mp = workdir / "mnt"
    m = start_mount(server.address, mp)
    try:
        (mp / "f").write_bytes(b"x")
        holder = _hold(mp / "f")
        try:
            out = _umount(mp)
            assert out.returncode == 1
            assert os.strerror(errno.EBUSY) in out.stderr
            assert f"pid {holder.pid} (python" in out.stderr
            assert f"has {mp}/f open" in out.stderr
            assert "--lazy" in out.stderr and "Traceback" not in out.stderr
            assert is_mounted(str(mp))
        finally:
            _release(holder)
        out = _umount(mp)
        assert out.returncode == 0, out
        assert not is_mounted(str(mp))
        assert m.proc.wait(timeout=120) == 0  # unmounted: the daemon ends by itself
    finally:
        m.stop()


def test_a_file_held_across_a_server_restart_does_not_keep_the_mount_busy(
    volume: Volume, workdir: Path
) -> None:
    """Issue 13's case. A shell holds a file on the mount (``exec 3<> mnt/f``) and
    restarts the server; the new server inherits descriptor 3. Once the shell
    closes its copy, the mount must unmount: the server dropped what it inherited."""
    srv = start_server(volume)
    mp = workdir / "mnt"
    m = start_mount(srv.address, mp)
    # The mount sees its server vanish and its session end: it says so.
    m.allowed_log += ["session stream lost", "session ended by the server"]
    try:
        (mp / "f").write_bytes(b"before")
        fd = os.open(mp / "f", os.O_RDWR)
        try:
            srv.kill()
            os.unlink(srv.socket)
            # As a shell starts it: the open descriptor crosses fork and exec.
            with open(srv.log, "ab") as logf:
                proc = subprocess.Popen(
                    server_argv(volume, srv.address), stdout=logf, stderr=subprocess.STDOUT,
                    pass_fds=(fd,),
                )  # fmt: skip
            srv = ServerProc(volume, srv.address, srv.socket, proc, srv.log)
            while not os.path.exists(srv.socket):
                assert proc.poll() is None, srv.log.read_text()
                time.sleep(0.02)
        finally:
            os.close(fd)
        out = _umount(mp)
        assert out.returncode == 0, out
        assert not is_mounted(str(mp))
        assert m.proc.wait(timeout=120) == 0  # unmounted: the daemon ends by itself
    finally:
        try:
            m.stop()
        finally:
            assert srv.stop() == 0  # even when the mount's check failed: leave no server


def test_a_file_held_across_a_restart_by_another_process_never_pinned_the_mount(
    volume: Volume, workdir: Path
) -> None:
    srv = start_server(volume)
    mp = workdir / "mnt"
    m = start_mount(srv.address, mp)
    m.allowed_log += ["session stream lost", "session ended by the server"]
    try:
        (mp / "f").write_bytes(b"before")
        holder = _hold(mp / "f")
        try:
            srv.kill()
            srv = start_server(volume)
        finally:
            _release(holder)
        out = _umount(mp)
        assert out.returncode == 0, out
        assert m.proc.wait(timeout=120) == 0
    finally:
        try:
            m.stop()
        finally:
            assert srv.stop() == 0  # even when the mount's check failed: leave no server


def test_a_fusermount_failure_keeps_its_own_words(workdir: Path) -> None:
    # fusermount3 -u on a directory that is no mount: "Invalid argument", not "busy".
    with pytest.raises(OSError) as caught:
        fusermount_unmount(str(workdir))
    assert caught.value.errno == errno.EINVAL
    assert str(caught.value.strerror).startswith("fusermount3:")


def test_daemons_drop_what_they_inherited_and_keep_what_they_were_named(workdir: Path) -> None:
    code = (
        "import os; from daxfs.cli.descriptors import close_inherited, named_descriptors; "
        "import sys; keep = named_descriptors([sys.argv[1]]); "
        "print(sorted(close_inherited(keep)), sorted(int(f) for f in os.listdir('/proc/self/fd')))"
    )
    a = os.open(workdir, os.O_RDONLY)
    b = os.open(workdir, os.O_RDONLY)
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, f"/dev/fd/{b}"],
            pass_fds=(a, b),
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.close(a)
        os.close(b)
    closed, left = out.stdout.split("] [")
    assert closed == f"[{a}"
    assert str(b) in left.split(", ") or f"{b}]" in left
