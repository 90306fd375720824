"""Test and benchmark support: a real volume, a real server process, fsck assertions.

Shipped in the package (like zarr's ``testing``) so tests, benchmarks and the
demo share one way to start a server; it imports no test framework.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from daxfs.server.fsck import fsck
from daxfs.server.volume import format_volume

DEFAULT_TEST_REGION = 256 * 1024 * 1024


@dataclass
class Volume:
    dir: Path
    region: str
    meta: str

    @classmethod
    def create(
        cls, directory: Path, size: int = DEFAULT_TEST_REGION, block_size: int = 4096
    ) -> Volume:
        v = cls(directory, str(directory / "region"), str(directory / "region.meta"))
        format_volume(v.region, v.meta, size, block_size)
        return v


@dataclass
class ServerProc:
    volume: Volume
    address: str
    socket: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; raises if the server does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"server did not stop on SIGTERM within {timeout} s") from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def daxfs_cmd(*args: str) -> list[str]:
    """The daxfs CLI as a subprocess command line, with this interpreter."""
    return [sys.executable, "-m", "daxfs", *args]


def assert_fsck_clean(volume: Volume) -> None:
    report = fsck(volume.region, volume.meta)
    assert report.clean, "fsck found problems:\n" + "\n".join(report.problems)


def start_server(
    volume: Volume, *extra: str, timeout: float = 20.0, env: dict[str, str] | None = None
) -> ServerProc:
    """Start ``daxfs server`` on ``volume``; returns once its socket exists (= it answers)."""
    sock = str(volume.dir / "daxfs.sock")
    log = volume.dir / "server.log"
    if os.path.exists(sock):
        os.unlink(sock)  # left by a killed server: wait for the new one's socket
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            server_argv(volume, f"unix:{sock}", *extra),
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"server socket did not appear:\n{log.read_text()}")
        time.sleep(0.02)
    return ServerProc(volume, f"unix:{sock}", sock, proc, log)


@contextlib.contextmanager
def fuse_mount(
    address: str, mountpoint: Path, *extra: str, timeout: float = 20.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``daxfs mount`` in the foreground, unmounted (lazily if need be) on exit."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = mountpoint.parent / f"{mountpoint.name}.mount.log"
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            daxfs_cmd("mount", address, str(mountpoint), "-f", *extra),
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise AssertionError(f"daxfs mount exited {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"mount did not appear:\n{log.read_text()}")
            time.sleep(0.02)
        yield proc
    finally:
        subprocess.run(daxfs_cmd("umount", str(mountpoint)), capture_output=True, timeout=60)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)


def server_argv(volume: Volume, listen: str, *extra: str) -> list[str]:
    """``daxfs server`` on ``volume`` listening on ``listen``."""
    return daxfs_cmd(
        "server", "--region", volume.region, "--meta", volume.meta, "--listen", listen, *extra
    )


def run_server(
    volume: Volume, *extra: str, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run a server that is expected to refuse to start; returns its exit and output."""
    return subprocess.run(
        server_argv(volume, f"unix:{volume.dir}/refused.sock", *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def tcp_server(volume: Volume, listen: str, *extra: str) -> Iterator[str]:
    """A server on TCP (port 0 allowed); yields the address it logged, stops it cleanly after."""
    proc = subprocess.Popen(server_argv(volume, listen, *extra), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        address = None
        for line in proc.stderr:
            if "serving address=" in line:
                address = line.split("serving address=")[1].split()[0]
                break
        assert address is not None, "the server never said where it listens"
        yield address
    finally:
        proc.terminate()
        code = proc.wait(timeout=20)
        assert proc.stderr is not None
        proc.stderr.close()
        assert code == 0, f"server exited {code}"
