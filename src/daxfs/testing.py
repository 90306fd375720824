"""Test and benchmark support: a real volume, a real server process, a real FUSE mount,
fsck assertions.

Shipped in the package (like zarr's ``testing``) so tests, benchmarks and the
demos share one way to start a server and one to mount it; it imports no test
framework.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from daxfs.client.fuse.mount import is_mounted
from daxfs.server.fsck import fsck
from daxfs.server.volume import format_volume

DEFAULT_TEST_REGION = 256 * 1024 * 1024

#: The environment variable that picks the FUSE front end of every mount
#: :func:`start_mount` starts without an explicit ``backend`` ("libfuse" or
#: "kernel"), so one suite runs against either: ``DAXFS_TEST_BACKEND=kernel pytest``.
BACKEND_ENV = "DAXFS_TEST_BACKEND"


def default_backend() -> str:
    """The FUSE front end tests mount with unless they name one."""
    return os.environ.get(BACKEND_ENV, "libfuse")


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
    #: Substrings of log records this test expects (see :func:`assert_log_clean`).
    allowed_log: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; raises if the server does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)  # its threads' stacks into the log
                time.sleep(1)
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"server did not stop on SIGTERM within {timeout} s; its log ends:\n"
                    + self.log.read_text()[-6000:]
                ) from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """After SIGSTOP: wait until every thread of ``pid`` is stopped.

    kill(2) returns before the stop takes effect: one thread takes the signal
    and stops the others, and meanwhile another may still answer a call (the
    frame socket answers in tens of microseconds).
    """
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                continue
        if states and all(s in "Tt" for s in states):
            return
        assert time.monotonic() < deadline, f"threads of {pid} not stopped: {states}"
        time.sleep(0.01)


def daxfs_cmd(*args: str) -> list[str]:
    """The daxfs CLI as a subprocess command line, with this interpreter."""
    return [sys.executable, "-m", "daxfs", *args]


#: A log record's level, as the daxfs log format writes it (``level=warning``).
_LEVEL = re.compile(r"\blevel=(\w+)")
_BAD_LEVELS = {"warning", "error", "critical"}
#: Records that report the test machine, not daxfs: always allowed. A loaded
#: machine (tests in parallel on two cores) can stall the server past its sweep
#: period, which it rightly logs; tests never assert timings.
MACHINE_WARNINGS = ("server stalled",)


def log_problems(text: str, allowed: Sequence[str] = ()) -> list[str]:
    """The lines of a daxfs process's log that report a problem.

    A problem is a record at WARNING or above, or a traceback, unless the
    record names one of the ``allowed`` substrings (a traceback belongs to the
    record before it). libfuse's own lines carry no level and are not judged.
    """
    problems = []
    record_allowed = False
    for line in text.splitlines():
        level = _LEVEL.search(line)
        if level:
            record_allowed = any(a in line for a in (*allowed, *MACHINE_WARNINGS))
            if level.group(1) in _BAD_LEVELS and not record_allowed:
                problems.append(line)
        elif line.startswith("Traceback") and not record_allowed:
            problems.append(line)
    return problems


def assert_log_clean(log: Path, allowed: Sequence[str] = ()) -> None:
    """Fail on any warning, error or traceback in ``log`` the test did not expect."""
    text = log.read_text(errors="replace")
    problems = log_problems(text, allowed)
    assert not problems, (
        f"unexpected problems in {log}:\n" + "\n".join(problems) + (f"\n--- whole log ---\n{text}")
    )


def assert_fsck_clean(volume: Volume) -> None:
    report = fsck(volume.region, volume.meta)
    assert report.clean, "fsck found problems:\n" + "\n".join(report.problems)


def start_server(
    volume: Volume, *extra: str, timeout: float = 60.0, env: dict[str, str] | None = None
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


@dataclass
class Mount:
    """A running ``daxfs mount --foreground`` and its mountpoint."""

    path: Path
    proc: subprocess.Popen[bytes]
    #: The daemon's stdout and stderr.
    log: Path
    #: Substrings of log records this test expects (see :func:`assert_log_clean`).
    allowed_log: list[str] = field(default_factory=list)
    #: The FUSE front end serving it ("libfuse" or "kernel").
    backend: str = "libfuse"

    def iostats(self) -> dict[str, int]:
        """The mount's counters of kernel reads and writes (its virtual xattr)."""
        doc: dict[str, int] = json.loads(os.getxattr(self.path, "user.daxfs.iostats"))
        return doc

    def stop(self, *, check: bool = True, timeout: float = 60.0) -> None:
        """SIGTERM: the daemon unmounts and exits 0. Anything left is detached lazily.

        With ``check``, a daemon that does not exit 0 or that logged a traceback
        fails (AssertionError); a daemon that does not stop at all always does.
        """
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise AssertionError("mount daemon did not stop on SIGTERM") from None
                if check:
                    assert code == 0, f"mount daemon exited {code}:\n{self.log.read_text()}"
        finally:
            if is_mounted(str(self.path)):
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        if check:
            assert_log_clean(self.log, self.allowed_log)


def start_mount(
    address: str,
    mountpoint: Path,
    *extra: str,
    timeout: float = 60.0,
    log: Path | None = None,
    backend: str | None = None,
) -> Mount:
    """``daxfs mount --foreground`` in a subprocess; returns once the mount is live.

    The one way tests, the bench and the demos start a FUSE mount. The daemon's
    output goes to ``log`` (default: ``MOUNTPOINT.mount.log`` beside the
    mountpoint); a daemon that exits or does not mount within ``timeout``
    seconds fails with its log in the message. ``backend`` is the front end
    (``--backend``; default :func:`default_backend`).
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = log or mountpoint.parent / f"{mountpoint.name}.mount.log"
    backend = backend or default_backend()
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            daxfs_cmd(
                "mount", address, str(mountpoint), "--foreground", "--backend", backend, *extra
            ),
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    m = Mount(mountpoint, proc, log, backend=backend)
    deadline = time.monotonic() + timeout
    while not is_mounted(str(mountpoint)):
        if proc.poll() is not None:
            raise AssertionError(f"daxfs mount exited {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            m.stop(check=False)
            raise AssertionError(f"mount did not appear:\n{log.read_text()}")
        time.sleep(0.02)
    return m


@contextlib.contextmanager
def fuse_mount(
    address: str,
    mountpoint: Path,
    *extra: str,
    timeout: float = 60.0,
    log: Path | None = None,
    check: bool = True,
    backend: str | None = None,
) -> Iterator[Mount]:
    """:func:`start_mount`, stopped on the way out (see :meth:`Mount.stop` for ``check``)."""
    m = start_mount(address, mountpoint, *extra, timeout=timeout, log=log, backend=backend)
    try:
        yield m
    finally:
        m.stop(check=check)


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
def tcp_server(
    volume: Volume, listen: str, *extra: str, log: Path | None = None, timeout: float = 60.0
) -> Iterator[str]:
    """A server on TCP (port 0 allowed); yields the address it logged, stops it cleanly after.

    With ``log`` the server's output goes to that file (for the test to read).
    """
    if log is None:
        proc = subprocess.Popen(server_argv(volume, listen, *extra), stderr=subprocess.PIPE)
    else:
        with open(log, "ab") as logf:
            proc = subprocess.Popen(
                server_argv(volume, listen, *extra), stdout=logf, stderr=subprocess.STDOUT
            )
    try:
        address = None
        if proc.stderr is not None:
            for raw in proc.stderr:
                line = raw.decode(errors="replace")
                if "serving address=" in line:
                    address = line.split("serving address=")[1].split()[0]
                    break
        else:
            assert log is not None
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                found = re.search(r"serving address=(\S+)", log.read_text(errors="replace"))
                if found:
                    address = found.group(1)
                    break
                time.sleep(0.05)
        assert address is not None, "the server never said where it listens"
        yield address
    finally:
        proc.terminate()
        code = proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()
        assert code == 0, f"server exited {code}"


class FrameProxy:
    """A real byte-forwarding proxy in front of a server's frame socket
    (client/frames.py), scripted to hold replies.

    Listens on ``path`` (give it ``<proxy's socket>.frames`` beside a
    :class:`FaultyProxy`, so that a client of that proxy finds it) and opens
    one connection to ``upstream`` per connection accepted. ``hold()``: the
    next bytes the server sends wait until ``release()``; ``holding`` is set
    once they do.
    """

    def __init__(self, upstream: str, path: str) -> None:
        self._upstream = upstream
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(path)
        self._listener.listen(16)
        self._hold = threading.Event()
        self._release = threading.Event()
        self.holding = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []  # guarded by _lock
        threading.Thread(target=self._accept, name="frame-proxy", daemon=True).start()

    def hold(self) -> None:
        self._release.clear()
        self.holding.clear()
        self._hold.set()

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst, replies in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, replies), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if replies and self._hold.is_set():
                    self._hold.clear()
                    self.holding.set()
                    self._release.wait(30)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


class FaultyProxy:
    """A real gRPC proxy (unix socket) in front of a server, scripted to misbehave.

    ``hold_next(method)`` makes the next reply of ``method`` (GetLayout unless
    named) wait, after the server answered, until ``release()``; ``cut_streams()`` breaks every
    Session stream and ``link_down`` refuses new ones, as a broken network would.
    ``calls`` counts the unary calls passed on, by method name (``"GetLayout"``).
    """

    def __init__(self, upstream: str, path: str) -> None:
        self._channel = grpc.insecure_channel(upstream)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        self._server.add_generic_rpc_handlers([self])
        self._server.add_insecure_port(f"unix:{path}")
        self.address = f"unix:{path}"
        self._hold = threading.Event()
        self._hold_method = "/GetLayout"
        self.holding = threading.Event()
        self._release = threading.Event()
        self.link_down = False
        self._lock = threading.Lock()
        self._streams: list[Any] = []  # guarded by _lock
        self.calls: collections.Counter[str] = collections.Counter()  # guarded by _lock
        self._server.start()

    def close(self) -> None:
        self._release.set()
        self._server.stop(grace=0).wait()
        self._channel.close()

    def hold_next(self, method: str = "GetLayout") -> None:
        self._hold_method = "/" + method
        self._release.clear()
        self.holding.clear()
        self._hold.set()

    def release(self) -> None:
        self._release.set()

    hold_next_layout = hold_next
    release_layout = release

    def cut_streams(self) -> None:
        with self._lock:
            streams, self._streams = self._streams, []
        for call in streams:
            call.cancel()

    # -- grpc.GenericRpcHandler ------------------------------------------------

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        if method.endswith("/Session"):
            return grpc.stream_stream_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    @staticmethod
    def _metadata(context: grpc.ServicerContext) -> list[tuple[str, str]]:
        return [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]

    @staticmethod
    def _fail(context: grpc.ServicerContext, exc: grpc.RpcError) -> None:
        context.set_trailing_metadata(exc.trailing_metadata() or ())
        context.abort(exc.code(), exc.details() or "")

    def _unary(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        call = self._channel.unary_unary(method)

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.calls[method.rsplit("/", 1)[-1]] += 1
            try:
                reply: bytes = call(request, metadata=self._metadata(context), timeout=30)
            except grpc.RpcError as exc:
                self._fail(context, exc)
                raise
            if method.endswith(self._hold_method) and self._hold.is_set():
                self._hold.clear()
                self.holding.set()
                self._release.wait(30)
            return reply

        return handle

    def _stream(self, method: str) -> Callable[[Iterator[bytes], grpc.ServicerContext], Any]:
        def handle(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            if self.link_down:
                context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: the link is down")
            call = self._channel.stream_stream(method)(requests, metadata=self._metadata(context))
            with self._lock:
                self._streams.append(call)
            try:
                yield from call
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: the link broke")
                self._fail(context, exc)

        return handle
