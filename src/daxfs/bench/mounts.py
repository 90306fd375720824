"""The file-system targets the FUSE benchmarks compare: a daxfs mount, tmpfs, a naive FUSE.

Each target is a context manager yielding a directory; mounts run as
subprocesses (as a user would run them) and are always unmounted on the way
out, even when the benchmark fails.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daxfs.client.fuse.mount import is_mounted
from daxfs.testing import fuse_mount


def naive_command(script: Path | None = None) -> list[str]:
    """The naive FUSE's command line: the packaged peer, or another script given by path."""
    if script is None:
        return [sys.executable, "-m", "daxfs.bench.naive_passthrough"]
    return [sys.executable, str(script)]


def _wait_naive_mounted(proc: subprocess.Popen[bytes], mountpoint: Path, log: Path) -> None:
    deadline = time.monotonic() + 60
    while not is_mounted(str(mountpoint)):
        if proc.poll() is not None:
            raise RuntimeError(
                f"mount at {mountpoint} exited {proc.returncode}:\n{log.read_text()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"mount at {mountpoint} did not appear:\n{log.read_text()}")
        time.sleep(0.02)


def _stop_naive(proc: subprocess.Popen[bytes], mountpoint: Path) -> None:
    """fusermount3 -u ends the naive FUSE's loop; then make sure nothing is left."""
    try:
        if proc.poll() is None:
            subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if is_mounted(str(mountpoint)):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


@contextmanager
def daxfs_mount(address: str, workdir: Path) -> Iterator[Path]:
    """``daxfs mount ADDR MNT --foreground`` (direct_io, 1 MiB requests)."""
    mp = workdir / "daxfs-mnt"
    with fuse_mount(address, mp, log=workdir / "daxfs-mount.log", check=False) as m:
        yield m.path


@contextmanager
def naive_mount(script: Path | None, workdir: Path) -> Iterator[Path]:
    """The naive mfusepy passthrough of a tmpfs directory (``daxfs.bench.naive_passthrough``,
    or ``script`` if given)."""
    src = workdir / "naive-src"
    mp = workdir / "naive-mnt"
    src.mkdir()
    mp.mkdir()
    log = workdir / "naive-mount.log"
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [*naive_command(script), str(src), str(mp)],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_naive_mounted(proc, mp, log)
        yield mp
    finally:
        _stop_naive(proc, mp)


@contextmanager
def tmpfs_dir(workdir: Path) -> Iterator[Path]:
    """A directory on tmpfs (the work directory lives in /dev/shm): the kernel's own."""
    d = Path(tempfile.mkdtemp(prefix="tmpfs-", dir=workdir))
    yield d
