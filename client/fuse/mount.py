"""The life cycle of the FUSE daemon: checks, the front end in the foreground, unmount.

:func:`run_mount` checks the mountpoint and /dev/fuse, connects (Hello, then
maps the region) and serves the mount in this process, in the foreground,
through one of two front ends (``--backend``): ``libfuse`` (mfusepy over
libfuse 3's high-level API) or ``kernel`` (``daxfs.client.fuse.kernel``: the
daemon speaks the kernel's FUSE protocol itself; mount(2) needs root). Both
drive the same :class:`~daxfs.client.fuse.operations.DaxfsOperations`. Neither
forks: a gRPC channel does not survive a fork. The ``daxfs
mount`` and ``daxfs umount`` verbs (``daxfs.cli.mount``) call it, and start it
again as a detached child when asked for the background form.

Signals: SIGTERM, SIGINT and SIGHUP unmount (lazily if the mount is busy, so
open files keep working until closed); libfuse then returns and the session
ends with Goodbye. A server that goes
away mid-run makes calls fail with EIO once their deadline (``--timeout``)
passes; nothing waits forever.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import os
import signal
import stat
import subprocess
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from daxfs.shared.address import normalize_address
from daxfs.shared.errors import DaxfsError, QuietError
from daxfs.shared.mman import libc

if TYPE_CHECKING:
    from daxfs.client.fuse.kernel.fastio import FastPath
    from daxfs.client.library import Client

log = logging.getLogger(__name__)

FUSE_DEVICE = "/dev/fuse"
#: Options mount(8) passes that mean nothing to libfuse.
_MOUNT8_ONLY = {"defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "owner"}
_MNT_DETACH = 2


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


def check_mountpoint(mountpoint: str) -> None:
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


def check_device() -> None:
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
        if libc.umount2(os.fsencode(mountpoint), _MNT_DETACH if lazy else 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), mountpoint)
        return
    fusermount_unmount(mountpoint, lazy=lazy)


#: The errors fusermount3 reports by their strerror text, as it prints them.
_FUSERMOUNT_ERRNOS = (
    errno.EBUSY,
    errno.EPERM,
    errno.EACCES,
    errno.EINVAL,
    errno.ENOENT,
    errno.ENOTCONN,
)


def fusermount_unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """``fusermount3 -u`` (the setuid helper, for users other than root).

    A failure is an OSError whose text is fusermount3's own words, with the
    errno they name (EBUSY only when it says the mount is busy): "not yours",
    "not mounted" and "busy" need different answers.
    """
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        text = r.stderr.strip() or f"fusermount3 exited {r.returncode} and said nothing"
        code = next((e for e in _FUSERMOUNT_ERRNOS if os.strerror(e) in text), errno.EIO)
        if code == errno.EIO and "not found in" in text:
            code = errno.EINVAL  # "entry for X not found in /etc/mtab": not a mount of ours
        raise OSError(code, text, mountpoint)


def mount_users(mountpoint: str) -> list[str]:
    """Who keeps a mount busy: processes with a file open, a mapping or their
    working directory under it, one line each ("pid 12 (cat): open /mnt/f").

    Read from /proc by path, never by stat (a stat would ask the FUSE daemon,
    which may be the thing that hangs). Only processes this user may inspect
    are seen.
    """
    top = os.path.abspath(mountpoint)

    def under(target: str) -> bool:
        return target == top or target.startswith(top + "/")

    users: list[str] = []
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        base = f"/proc/{pid}"
        seen: list[str] = []
        try:
            for link, what in (("cwd", "works in"), ("root", "is chrooted in")):
                target = os.readlink(f"{base}/{link}")
                if under(target):
                    seen.append(f"{what} {target}")
            for fd in os.listdir(f"{base}/fd"):
                try:
                    target = os.readlink(f"{base}/fd/{fd}")
                except OSError:
                    continue
                if under(target.removesuffix(" (deleted)")):
                    seen.append(f"has {target} open (fd {fd})")
            with open(f"{base}/maps") as maps:
                # address perms offset dev inode [path]: anonymous mappings have no path.
                fields = (line.split(maxsplit=5) for line in maps)
                mapped = {f[5].strip() for f in fields if len(f) == 6 and under(f[5].strip())}
            seen.extend(f"maps {m}" for m in sorted(mapped))
            if seen:
                with open(f"{base}/comm") as f:
                    comm = f.read().strip()
                users.append(f"pid {pid} ({comm}) {', '.join(seen)}")
        except OSError:
            continue  # gone, or not ours to inspect
    return users


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
        unmount_or_detach(self.mountpoint)


def unmount_or_detach(mountpoint: str) -> None:
    """Unmount; if files are still open there, detach lazily (they keep working)."""
    try:
        unmount(mountpoint)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return  # the main loop noticed too and unmounted first
        log.warning("unmount of %s: %s; detaching it lazily", mountpoint, exc)
        try:
            unmount(mountpoint, lazy=True)
        except OSError as exc2:
            log.error("lazy unmount of %s failed: %s", mountpoint, exc2)


def _detach_stdio(log_path: str | None) -> None:
    """The detached child: its parent returns once fd 2 closes; later output goes to the log."""
    fd = os.open(log_path or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_mount(args: argparse.Namespace) -> int:
    """Mount and serve until unmounted (the --foreground form)."""
    from daxfs.client.fuse.operations import DaxfsFuse, DaxfsOperations
    from daxfs.client.library import Client

    mp = args.mountpoint
    check_device()
    check_mountpoint(mp)
    options = parse_options(args.options or [])
    stopper = _Stopper(mp)
    address = normalize_address(args.addr)
    try:
        client = Client(
            address,
            region_path=args.region,
            timeout=args.timeout,
            name=f"mount:{mp}",
            cache_metadata=getattr(args, "cache_metadata", False),
        )
    except DaxfsError as exc:
        raise QuietError(f"cannot use the daxfs server at {address}: {exc}", 1) from None
    if getattr(args, "backend", "libfuse") == "kernel":
        try:
            _serve_kernel(args, client, options)
        finally:
            client.close()
        log.info("unmounted %s", mp)
        return 0

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


def _fast_path(client: Client) -> FastPath | None:
    """The compiled data path over the client's region (kernel/fastio.py), or
    None: turned off (DAXFS_FASTIO=0) or not buildable here."""
    from daxfs.client.fuse.kernel import fastio

    if not fastio.enabled():
        return None
    lib = fastio.library()
    if lib is None:
        return None
    u8 = client.region.u8
    return fastio.FastPath(lib, u8.ctypes.data, u8.nbytes)


def _serve_kernel(args: argparse.Namespace, client: Client, options: dict[str, Any]) -> None:
    """The kernel backend: mount(2) a /dev/fuse channel and serve it until unmounted.

    SIGTERM, SIGINT and SIGHUP unmount (lazily if files are open), which ends
    the serving threads; then the operations close what is left open.
    """
    from daxfs.client.fuse.kernel.channel import Channel, MountOptions
    from daxfs.client.fuse.kernel.dispatch import Dispatcher, Negotiated
    from daxfs.client.fuse.kernel.notifier import Notifier
    from daxfs.client.fuse.kernel.session import KernelSession
    from daxfs.client.fuse.operations import DaxfsOperations

    mp = args.mountpoint
    if os.geteuid() != 0:
        raise QuietError("--backend kernel mounts with mount(2), as root; use --backend libfuse", 1)
    try:
        mount_options = MountOptions.parse(options)
    except DaxfsError as exc:
        raise QuietError(str(exc), 2) from None

    def ready(negotiated: Negotiated) -> None:
        log.info(
            "mounted %s at %s (kernel protocol 7.%d, %s)",
            client.address, mp, negotiated.minor, "cached" if args.cache else "direct_io",
        )  # fmt: skip
        if args.detached_child:
            _detach_stdio(args.log)

    ops = DaxfsOperations(
        client,
        cache=args.cache,
        attr_timeout=args.attr_timeout,
        context=lambda: dispatcher.context(),
    )
    dispatcher = Dispatcher(ops, on_init=ready)
    notifier = None
    stop = threading.Event()
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in signals}
    channel = Channel.open()
    try:
        try:
            channel.mount(mp, mount_options)
        except OSError as exc:
            raise QuietError(f"mounting {mp} failed: {exc.strerror}", 1) from None
        if mount_options.allow_other and not mount_options.default_permissions:
            # The kernel checks no permission then; a name it keeps would let
            # another user skip the server's search-permission check.
            log.info("allow_other without default_permissions: the kernel caches nothing")
        elif client.caches_metadata:
            # The kernel caches what the server granted, for the rest of the
            # lease, and drops it when told (client/fuse/kernel/notifier.py).
            notifier = Notifier(channel, dispatcher.nodes)
            client.cache_listeners.append(notifier)
            dispatcher.cache_ttl = client.cache_ttl
            dispatcher.cache_epoch = lambda: client.meta_cache.epoch
        fast = _fast_path(client)
        if fast is not None:
            client.state.watch_copies(fast.bump)
            ops.iostats.compiled = fast.counts
        session = KernelSession(channel, dispatcher, fast=fast)
        # The reader token goes to another serving thread before a call waits
        # on gRPC or on queued releases; over the frame socket, only if a
        # request comes before the reply.
        client.server.conn.before_blocking = session.hand_over
        client.server.conn.awaiting_reply = session.await_reply
        client.server.releases.before_wait = session.hand_over
        session.start()
        while session.running():
            if stop.wait(0.2):
                log.info("asked to exit: unmounting %s", mp)
                unmount_or_detach(mp)
                break
        session.join()
        session.take_written()  # before the operations close what is left open
    finally:
        if notifier is not None:
            client.cache_listeners.remove(notifier)
            notifier.close()
        channel.close()
        ops.destroy("/")
        for s, handler in previous.items():
            signal.signal(s, handler)
