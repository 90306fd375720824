"""Shared fixtures: a real region in /dev/shm, a real server process, real clients.

A test that uses the ``server`` fixture gets an fsck of its volume after the
server stopped: an unclean volume, a non-zero exit, or a warning, error or
traceback in the server log that the test did not register in
``server.allowed_log`` fails the test. Mounts (``daxfs.testing.Mount``) are
held to the same rule.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.client import Client, connect
from daxfs.testing import ServerProc, Volume, assert_fsck_clean, assert_log_clean, start_server


@pytest.fixture
def workdir() -> Iterator[Path]:
    # /dev/shm: the embedded default's filesystem, and fast.
    d = Path(tempfile.mkdtemp(prefix="daxfs-test-", dir="/dev/shm"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def volume(workdir: Path) -> Volume:
    return Volume.create(workdir)


@pytest.fixture
def server(volume: Volume) -> Iterator[ServerProc]:
    srv = start_server(volume)
    try:
        yield srv
    finally:
        code = srv.stop()
        text = srv.log.read_text()
        assert code == 0, f"server exited {code}:\n{text}"
        assert_log_clean(srv.log, srv.allowed_log)
        assert_fsck_clean(volume)


@pytest.fixture
def client(server: ServerProc) -> Iterator[Client]:
    c = connect(server.address)
    try:
        yield c
    finally:
        c.close()
