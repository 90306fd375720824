"""``daxfs mount``, ``daxfs umount`` and ``mount.daxfs``: the command lines of the FUSE daemon.

``daxfs mount ADDR MOUNTPOINT`` runs the daemon (``daxfs.client.fuse.mount``) in
the foreground with ``--foreground``; without it the command starts itself
again as a detached child and returns once the mount is live, or prints the
child's error and fails. ``mount.daxfs`` is the form mount(8) calls for
``mount -t daxfs``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from daxfs.cli.arguments import Subcommands
from daxfs.cli.descriptors import close_inherited, named_descriptors
from daxfs.client.fuse.mount import (
    check_device,
    check_mountpoint,
    is_mounted,
    mount_users,
    run_mount,
    unmount,
)
from daxfs.client.rpc import DEFAULT_TIMEOUT_S
from daxfs.shared.errors import QuietError


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
            users = mount_users(mp)
            who = "; ".join(users) if users else "no process this user can see holds it"
            raise QuietError(
                f"cannot unmount {mp}: {exc.strerror} ({who}); close those, "
                "or use --lazy to detach it now",
                1,
            ) from None
        raise QuietError(f"cannot unmount {mp}: {exc.strerror}", 1) from None
    if dead:
        print(f"daxfs: {mp} had no daemon; detached it", file=sys.stderr)
    return 0


def _spawn_detached(args: argparse.Namespace, argv: list[str]) -> int:
    """Start the foreground form as a detached child; return when it is mounted or dead."""
    check_device()
    check_mountpoint(args.mountpoint)
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
        # The daemon lives as long as the mount: it keeps nothing of its starter's
        # (a file open on another mount would keep that one busy).
        close_inherited(named_descriptors([args.region, args.log]))
        return run_mount(args)
    return _spawn_detached(args, _child_argv(args))


def _child_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--debug"] if args.debug else []
    argv += ["mount", args.addr, args.mountpoint, "--timeout", str(args.timeout)]
    if args.region:
        argv += ["--region", args.region]
    if args.cache:
        argv.append("--cache")
    argv += ["--backend", args.backend]
    if args.attr_timeout is not None:
        argv += ["--attr-timeout", str(args.attr_timeout)]
    if args.cache_metadata:
        argv.append("--cache-metadata")
    if args.debug_fuse:
        argv.append("--debug-fuse")
    if args.log:
        argv += ["--log", args.log]
    for opt in args.options or []:
        argv += ["-o", opt]
    return argv


def register(sub: Subcommands) -> None:
    """Add ``mount`` and ``umount``."""
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
    p.add_argument(
        "--backend",
        choices=("libfuse", "kernel"),
        default="libfuse",
        help="FUSE front end: libfuse (mfusepy; default) or kernel (the daemon speaks the "
        "kernel's FUSE protocol itself: one copy per read, shared mmap; root only)",
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
    p.add_argument(
        "--cache-metadata",
        action="store_true",
        help="answer stat and lookups from the mount's own cache (and, on the kernel "
        "backend, the kernel's), kept coherent by the server's invalidations "
        "(README: Coherent metadata caching)",
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


def mount8_argv(args: Sequence[str]) -> list[str] | None:
    """``mount.daxfs ADDR MOUNTPOINT [-sfnv] [-o opts]`` (as mount -t daxfs calls it) as
    ``daxfs`` arguments; None when the command line does not have that shape.

    daxfs's own options ride in -o: region=PATH, cache, timeout=S, log=PATH, backend=NAME.
    """
    positional: list[str] = []
    opts: list[str] = []
    ours: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-o" and i + 1 < len(args):
            for item in args[i + 1].split(","):
                key, sep, val = item.partition("=")
                if key in ("region", "timeout", "log", "backend") and sep:
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
        return None
    extra = ["-o", ",".join(opts)] if opts else []
    return ["mount", *positional, *ours, *extra]
