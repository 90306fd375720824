"""``daxfs mount`` and ``daxfs umount``: the life cycle of the FUSE daemon.

``daxfs mount ADDR MOUNTPOINT`` checks the mountpoint and /dev/fuse, connects
(Hello, then maps the region) and runs libfuse in this process, in the
foreground. libfuse itself never forks: a gRPC channel does not survive a
fork. Without ``--foreground`` the command starts itself again as a detached
child and returns once the mount is live, or prints the child's error and
fails.

Signals: SIGTERM, SIGINT and SIGHUP unmount (lazily if the mount is busy, so
open files keep working until closed); libfuse then returns and the session
ends with Goodbye. A server that goes
away mid-run makes calls fail with EIO once their deadline (``--timeout``)
passes; nothing waits forever.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from daxfs.cli import QuietError, normalize_address
from daxfs.client.rpc import DEFAULT_TIMEOUT_S
from daxfs.shared.errors import DaxfsError

log = logging.getLogger(__name__)

FUSE_DEVICE = "/dev/fuse"
#: Options mount(8) passes that mean nothing to libfuse.
_MOUNT8_ONLY = {"defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "owner"}
_MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


# -- mount state -----------------------------------------------------------


def _unescape(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 1 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def is_mounted(mountpoint: str) -> bool:
    """True when something is mounted at ``mountpoint``, a dead FUSE mount included."""
    target = os.path.abspath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return any(_unescape(line.split()[4]) == target for line in f)


def _check_mountpoint(mountpoint: str) -> None:
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise QuietError(f"mountpoint {mountpoint} does not exist", 1) from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise QuietError(
                f"{mountpoint} is a dead FUSE mount (its daemon is gone); "
                f"run: daxfs umount {mountpoint}",
                1,
            ) from None
        raise QuietError(f"mountpoint {mountpoint}: {exc.strerror}", 1) from None
    if not stat.S_ISDIR(st.st_mode):
        raise QuietError(f"mountpoint {mountpoint} is not a directory", 1)
    if is_mounted(mountpoint):
        raise QuietError(f"mountpoint {mountpoint} is busy: something is mounted there", 1)


def _check_device() -> None:
    if not os.path.exists(FUSE_DEVICE):
        raise QuietError(
            f"{FUSE_DEVICE} is missing: load the fuse module (modprobe fuse), or give the "
            "container the device (docker run --device /dev/fuse --cap-add SYS_ADMIN)",
            1,
        )


def parse_options(values: Sequence[str]) -> dict[str, Any]:
    """``-o a,b=c`` (repeatable) as libfuse keyword options: {"a": True, "b": "c"}."""
    opts: dict[str, Any] = {}
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item or item in _MOUNT8_ONLY:
                continue
            key, sep, val = item.partition("=")
            opts[key] = val if sep else True
    return opts


# -- unmount ---------------------------------------------------------------


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount; with ``lazy``, detach now and finish when the last file closes.

    Root calls umount2 itself (no fork in a process that holds gRPC threads);
    others go through the setuid helper fusermount3.
    """
    if os.geteuid() == 0:
        if _libc.umount2(os.fsencode(mountpoint), _MNT_DETACH if lazy else 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), mountpoint)
        return
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise OSError(errno.EBUSY, r.stderr.strip() or "fusermount3 failed", mountpoint)


def cmd_umount(args: argparse.Namespace) -> int:
    mp = args.mountpoint
    if not is_mounted(mp):
        raise QuietError(f"{mp} is not mounted", 1)
    dead = False
    try:
        os.stat(mp)
    except OSError as exc:
        dead = exc.errno == errno.ENOTCONN
    try:
        unmount(mp, lazy=args.lazy or dead)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise QuietError(
                f"{mp} is busy (files open there); use --lazy to detach it", 1
            ) from None
        raise QuietError(f"cannot unmount {mp}: {exc.strerror}", 1) from None
    if dead:
        print(f"daxfs: {mp} had no daemon; detached it", file=sys.stderr)
    return 0


# -- mount -----------------------------------------------------------------


class _Stopper:
    """Unmounts once libfuse's signal handler has asked the session to exit.

    libfuse's handler for SIGTERM, SIGINT and SIGHUP only sets the session's
    exit flag, and it may run in any thread (numpy's and gRPC's threads do not
    block signals); the main loop notices only when the main thread itself was
    interrupted. So this thread watches the flag and unmounts, which ends every
    worker's read of /dev/fuse and with it the loop.
    """

    POLL_S = 0.2

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.done = threading.Event()
        #: Set once the kernel's INIT arrived: the mount was live.
        self.started = threading.Event()

    def start(self) -> None:
        """Call from a FUSE request (init): the fuse context names the session."""
        import mfusepy

        self.started.set()
        lib = mfusepy._libfuse
        lib.fuse_get_session.restype = ctypes.c_void_p
        lib.fuse_get_session.argtypes = (ctypes.c_void_p,)
        lib.fuse_session_exited.argtypes = (ctypes.c_void_p,)
        session = lib.fuse_get_session(lib.fuse_get_context().contents.fuse)
        threading.Thread(
            target=self._watch, args=(lib, session), name="daxfs-exit", daemon=True
        ).start()

    def _watch(self, lib: Any, session: int) -> None:
        while not self.done.wait(self.POLL_S):
            if lib.fuse_session_exited(session):
                log.info("asked to exit: unmounting %s", self.mountpoint)
                self._unmount()
                return

    def _unmount(self) -> None:
        try:
            unmount(self.mountpoint)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return  # the main loop noticed too and unmounted first
            log.warning("unmount of %s: %s; detaching it lazily", self.mountpoint, exc)
            try:
                unmount(self.mountpoint, lazy=True)
            except OSError as exc2:
                log.error("lazy unmount of %s failed: %s", self.mountpoint, exc2)


def _detach_stdio(log_path: str | None) -> None:
    """The detached child: its parent returns once fd 2 closes; later output goes to the log."""
    fd = os.open(log_path or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_mount(args: argparse.Namespace) -> int:
    """Mount and serve until unmounted (the --foreground form)."""
    from daxfs.client.fuse_ops import DaxfsFuse, DaxfsOperations
    from daxfs.client.library import Client

    mp = args.mountpoint
    _check_device()
    _check_mountpoint(mp)
    options = parse_options(args.options or [])
    stopper = _Stopper(mp)
    address = normalize_address(args.addr)
    try:
        client = Client(address, region_path=args.region, timeout=args.timeout, name=f"mount:{mp}")
    except DaxfsError as exc:
        raise QuietError(f"cannot use the daxfs server at {address}: {exc}", 1) from None

    def ready() -> None:
        log.info("mounted %s at %s (%s)", address, mp, "cached" if args.cache else "direct_io")
        if args.detached_child:
            _detach_stdio(args.log)
        stopper.start()

    ops = DaxfsOperations(client, cache=args.cache, attr_timeout=args.attr_timeout, on_ready=ready)
    try:
        options.setdefault("fsname", "daxfs")
        options.setdefault("subtype", "daxfs")
        # libfuse 3.14.0 warns about its own unset thread limits unless both are given.
        options.setdefault("max_idle_threads", 10)
        options.setdefault("max_threads", 16)
        try:
            DaxfsFuse(
                ops,
                mp,
                foreground=True,
                debug=args.debug_fuse,
                raw_fi=False,
                **options,
            )
        except RuntimeError as exc:
            # fuse_main_real says 8 ("the loop failed") whenever a signal ended the
            # loop: libfuse's handler stores the signal number as the session's error.
            if stopper.started.is_set() and exc.args == (8,):
                log.debug("libfuse's loop ended (%s)", exc)
            else:
                raise QuietError(
                    f"mounting {mp} failed (libfuse said why above): {exc}", 1
                ) from None
    finally:
        stopper.done.set()
        client.close()
    log.info("unmounted %s", mp)
    return 0


def _spawn_detached(args: argparse.Namespace, argv: list[str]) -> int:
    """Start the foreground form as a detached child; return when it is mounted or dead."""
    _check_device()
    _check_mountpoint(args.mountpoint)
    cmd = [sys.executable, "-m", "daxfs", *argv, "--foreground", "--detached-child"]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stderr is not None
    # EOF: the child mounted (and moved fd 2 to its log) or it died.
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            sys.stderr.write(err)
            return code or 1
        if is_mounted(args.mountpoint):
            sys.stderr.write(err)
            return 0
        time.sleep(0.05)
    proc.kill()
    raise QuietError(f"the mount daemon for {args.mountpoint} did not start", 1)


def cmd_mount(args: argparse.Namespace) -> int:
    if args.foreground:
        return run_mount(args)
    return _spawn_detached(args, _child_argv(args))


def _child_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--debug"] if args.debug else []
    argv += ["mount", args.addr, args.mountpoint, "--timeout", str(args.timeout)]
    if args.region:
        argv += ["--region", args.region]
    if args.cache:
        argv.append("--cache")
    if args.attr_timeout is not None:
        argv += ["--attr-timeout", str(args.attr_timeout)]
    if args.debug_fuse:
        argv.append("--debug-fuse")
    if args.log:
        argv += ["--log", args.log]
    for opt in args.options or []:
        argv += ["-o", opt]
    return argv


def register_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "mount",
        help="mount a daxfs server with FUSE",
        description="Mount a daxfs server: files are read and written straight in the "
        "shared region, with no guest page cache (direct_io) unless --cache.",
    )
    p.add_argument("addr", metavar="ADDR", help="unix:/path or host:port")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument(
        "--region", help="where this guest sees the region (default: as the server says)"
    )
    p.add_argument(
        "--cache",
        action="store_true",
        help="use the guest page cache (no direct_io; close-to-open consistency only)",
    )
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument(
        "-o", dest="options", action="append", metavar="OPTS",
        help="FUSE mount options, e.g. allow_other,default_permissions",
    )  # fmt: skip
    p.add_argument("--debug-fuse", action="store_true", help="libfuse's request trace on stderr")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds before a server call fails with EIO (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--attr-timeout",
        type=float,
        help="seconds the kernel caches attributes and names (default 0, 1 with --cache)",
    )
    p.add_argument("--log", help="detached daemon's log file (default: discarded)")
    p.add_argument("--detached-child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_mount, log_default=logging.WARNING)

    q = sub.add_parser("umount", help="unmount a daxfs FUSE mount")
    q.add_argument("mountpoint", metavar="MOUNTPOINT")
    q.add_argument(
        "-z", "--lazy", action="store_true", help="detach now even if files are open there"
    )
    q.set_defaults(fn=cmd_umount)


def mount_main(argv: Sequence[str] | None = None) -> int:
    """``mount.daxfs ADDR MOUNTPOINT [-sfnv] [-o opts]``, as mount -t daxfs calls it.

    daxfs's own options ride in -o: region=PATH, cache, timeout=S, log=PATH.
    """
    from daxfs.cli import main

    args = list(sys.argv[1:] if argv is None else argv)
    positional: list[str] = []
    opts: list[str] = []
    ours: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-o" and i + 1 < len(args):
            for item in args[i + 1].split(","):
                key, sep, val = item.partition("=")
                if key in ("region", "timeout", "log") and sep:
                    ours += [f"--{key}", val]
                elif key == "cache" and not sep:
                    ours.append("--cache")
                elif item:
                    opts.append(item)
            i += 2
            continue
        if a.startswith("-") and len(a) > 1:
            i += 1  # -s (sloppy), -f (fake), -n (no mtab), -v (verbose): nothing to do
            continue
        positional.append(a)
        i += 1
    if len(positional) != 2:
        print("usage: mount.daxfs ADDR MOUNTPOINT [-o options]", file=sys.stderr)
        return 2
    extra = ["-o", ",".join(opts)] if opts else []
    return main(["mount", *positional, *ours, *extra])
