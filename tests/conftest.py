"""Shared fixtures: a real region in /dev/shm, a real server process, real clients.

A test that uses the ``server`` fixture gets an fsck of its volume after the
server stopped: an unclean volume, a non-zero exit, or a warning, error or
traceback in the server log that the test did not register in
``server.allowed_log`` fails the test. Mounts (``daxfs.testing.Mount``) are
held to the same rule, and so is the client library running inside the test
process: a warning or error it logs fails the test unless the test expects it
with ``@pytest.mark.client_log("substring", ...)`` (as pyfuse3's suite checks
every log of a test).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daxfs.client import Client, connect
from daxfs.testing import (
    FaultyProxy,
    ServerProc,
    Volume,
    assert_fsck_clean,
    assert_log_clean,
    start_server,
)


@pytest.fixture(autouse=True)
def client_log_clean(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """No unexpected warning, error or traceback from the client library in the test process.

    (A server core run inside the test process, as the simulation and the fuzzer
    do, logs the faults they cause on purpose: its records are not judged here.)
    """
    caplog.set_level(logging.WARNING, logger="daxfs.client")
    yield
    marker = request.node.get_closest_marker("client_log")
    # A loaded machine (tests in parallel on two cores) can keep a short test
    # lease from being renewed in time; the client rightly fences itself and
    # says so. Tests never assert timings, so that record alone fails nothing.
    allowed = (*(marker.args if marker is not None else ()), "lease ends unrenewed")
    problems = [
        f"{r.levelname} {r.name}: {r.getMessage()}" + (" (with traceback)" if r.exc_info else "")
        for r in caplog.get_records("call") + caplog.get_records("teardown")
        if r.name.startswith("daxfs.client")
        and r.levelno >= logging.WARNING
        and not any(a in r.getMessage() for a in allowed)
    ]
    report = os.environ.get("DAXFS_CLIENT_LOG_REPORT")
    if problems and report:
        with open(report, "a") as f:
            f.write(json.dumps({"test": request.node.nodeid, "problems": problems}) + "\n")
    elif problems:
        pytest.fail(
            "the client logged what the test did not expect (mark it with "
            "@pytest.mark.client_log if it should):\n" + "\n".join(problems)
        )


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


@pytest.fixture
def proxy_to(workdir: Path) -> Iterator[Callable[[str], FaultyProxy]]:
    """Starts a real gRPC proxy scripted to misbehave (``FaultyProxy``) in front of an address.

    ``proxy_to(server.address)``: the first listens on ``workdir/proxy.sock``.
    Each is closed after the test, before the server it stands in front of
    stops (when that server's fixture was set up first).
    """
    proxies: list[FaultyProxy] = []

    def start(upstream: str) -> FaultyProxy:
        name = f"proxy-{len(proxies) + 1}.sock" if proxies else "proxy.sock"
        proxies.append(FaultyProxy(upstream, str(workdir / name)))
        return proxies[-1]

    try:
        yield start
    finally:
        for p in reversed(proxies):
            p.close()


@pytest.fixture
def proxy(server: ServerProc, proxy_to: Callable[[str], FaultyProxy]) -> FaultyProxy:
    """A ``FaultyProxy`` in front of the ``server`` fixture's server."""
    return proxy_to(server.address)
