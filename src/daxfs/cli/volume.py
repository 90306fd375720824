"""Host-side verbs on a volume: ``daxfs server``, ``daxfs mkfs``, ``daxfs fsck``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import stat
import sys
from typing import TYPE_CHECKING

from daxfs.cli.arguments import Subcommands, add_volume_options, block_size, byte_size, meta_path
from daxfs.shared.address import normalize_address
from daxfs.shared.errors import DaxfsError, QuietError
from daxfs.shared.format import DEFAULT_BLOCK_SIZE, GIB, HUGE_BLOCK_SIZE
from daxfs.shared.region import DEFAULT_REGION_PATH

if TYPE_CHECKING:
    from daxfs.server.auth import Keyring

log = logging.getLogger("daxfs")

#: The size of the region ``daxfs server`` creates when nothing exists yet.
DEFAULT_FRESH_SIZE = 1 * GIB


def _block_size_for(region: str, asked: int | None) -> int:
    """The block size asked for, else 2 MiB where the region's filesystem gives huge pages."""
    from daxfs.shared.hugepages import HUGE_PAGE, backing_page_size

    if asked is not None:
        return asked
    return HUGE_BLOCK_SIZE if backing_page_size(region) >= HUGE_PAGE else DEFAULT_BLOCK_SIZE


def cmd_server(args: argparse.Namespace) -> int:
    from daxfs.cli.descriptors import close_inherited, named_descriptors

    # Before anything of ours is open: a descriptor the starting shell had on a
    # FUSE mount would keep that mount busy for as long as this server runs.
    close_inherited(
        named_descriptors(
            [args.token_file, args.tls_cert, args.tls_key, args.tls_client_ca, args.region]
        )
    )
    from daxfs.server.daemon import DEFAULT_LISTEN, ServerConfig, serve

    if args.huge:
        from daxfs.shared.hugepages import HUGE_REGION_PATH, HUGE_TMPFS, mount_huge_tmpfs

        if args.region == DEFAULT_REGION_PATH:
            args.region = HUGE_REGION_PATH
            try:
                mount_huge_tmpfs(HUGE_TMPFS)
            except OSError as exc:
                raise QuietError(f"--huge: {exc.strerror}") from None
    meta = meta_path(args)
    fresh = not os.path.exists(args.region) and not os.path.exists(meta)
    do_format = bool(args.format)
    size = args.size
    if fresh and not do_format:
        # Nothing exists yet: creating is not reformatting.
        do_format = True
        size = size or DEFAULT_FRESH_SIZE
        log.info("no region at %s: creating one of %d bytes", args.region, size)
    if do_format and size is None and not os.path.exists(args.region):
        raise QuietError("--format needs --size for a new region file")
    config = ServerConfig(
        region=args.region,
        meta=meta,
        listen=normalize_address(args.listen or DEFAULT_LISTEN),
        size=size,
        block_size=_block_size_for(args.region, args.block_size),
        format=do_format,
        socket_mode=int(args.socket_mode, 8),
        announce_region=args.announce_region,
        lease_ns=None if args.lease_seconds is None else int(args.lease_seconds * 1e9),
        keyring=_server_keyring(args.token_file),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        socket_group=args.socket_group,
        insecure=args.insecure,
        peer_credentials=args.peer_credentials,
        frames=args.frames,
    )
    if args.max_sessions is not None:
        if args.max_sessions < 1:
            raise QuietError("--max-sessions must be at least 1")
        config = dataclasses.replace(config, max_sessions=args.max_sessions)
    code = serve(config)
    # The volume is closed and recorded clean: leave now. The interpreter's exit
    # would join gRPC's handler threads, and one that outlived its call would hold
    # a stopped server (and its socket's users) for good.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _server_keyring(path: str | None) -> Keyring | None:
    if path is None:
        return None
    from daxfs.server.auth import read_keyring

    try:
        return read_keyring(path)
    except (OSError, ValueError) as exc:
        raise QuietError(f"--token-file: {exc}", 1) from None


def cmd_mkfs(args: argparse.Namespace) -> int:
    from daxfs.server.volume import VolumeLock, format_volume, recorded_region, repair_advice
    from daxfs.shared.errors import SuperblockDamaged
    from daxfs.shared.region import read_superblock

    meta = meta_path(args)
    if os.path.exists(args.region) and not args.force:
        try:
            sb = read_superblock(args.region)
        except SuperblockDamaged as exc:
            # Damage is no licence to erase: the metadata may hold every file.
            if recorded_region(meta) is not None:
                raise QuietError(
                    f"{exc}; {repair_advice(args.region, meta)}; pass --force to erase it anyway",
                    1,
                ) from None
        except (OSError, DaxfsError):
            pass
        else:
            raise QuietError(
                f"{args.region} already holds daxfs region {sb.uuid_str}; pass --force to erase it",
                1,
            )
    is_dev = os.path.exists(args.region) and stat.S_ISCHR(os.stat(args.region).st_mode)
    if args.size is None and not is_dev:
        raise QuietError("mkfs of a file region needs --size (e.g. --size 1G)")
    with VolumeLock(meta, "mkfs"):
        format_volume(args.region, meta, args.size, _block_size_for(args.region, args.block_size))
    print(f"formatted {args.region} (metadata {meta})")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    from daxfs.server.fsck import fsck

    report = fsck(args.region, meta_path(args), repair=args.repair)
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.found:
        print(f"PROBLEM: {problem}")
    for action in report.repairs:
        print(f"REPAIRED: {action}")
    if args.repair:
        for problem in report.problems:
            print(f"NOT REPAIRED: {problem}")
    summary = (
        f"{report.files} inodes, used {report.used_bytes} B, free {report.free_bytes} B, "
        f"quarantined {report.quarantined_bytes} B"
    )
    if report.clean:
        print(f"clean{' after repair' if report.repairs else ''}: {summary}")
        return 0
    hint = "" if args.repair else "; `daxfs fsck --repair` fixes what it safely can"
    print(f"{len(report.problems)} problem(s){hint}: {summary}")
    return 1


BLOCK_HELP = "4K or 2M (default: 2M where the region's filesystem gives huge pages, else 4K)"


def register(sub: Subcommands) -> None:
    """Add ``server``, ``mkfs`` and ``fsck``."""
    p = sub.add_parser("server", help="run the host server")
    add_volume_options(p)
    p.add_argument("--size", type=byte_size, help="region size for a new region (e.g. 1G)")
    p.add_argument("--listen", help="unix:/path (default unix:/run/daxfs/daxfs.sock) or host:port")
    p.add_argument("--block-size", type=block_size, help=BLOCK_HELP)
    p.add_argument(
        "--huge",
        action="store_true",
        help="2 MiB pages: region on a huge=always tmpfs at /run/daxfs/huge (mounted if need be)",
    )
    p.add_argument("--format", action="store_true", help="erase and format the region first")
    p.add_argument("--socket-mode", default="600", help="octal mode of the unix socket")
    p.add_argument("--announce-region", help="region path to tell clients (default: --region)")
    p.add_argument(
        "--token-file",
        help="clients must send a token of this file: one token (>= 16 chars), or lines of "
        "NAME TOKEN POLICY (README, Security)",
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow TCP without TLS (a private network only)"
    )
    p.add_argument(
        "--peer-credentials",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on the unix socket, a non-root process acts as its own uid (SO_PEERCRED); "
        "default: on when the socket is shared (--socket-group, or --socket-mode with "
        "group or other bits)",
    )
    p.add_argument(
        "--frames",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="beside a unix socket, serve the unary calls on PATH.frames too, a cheaper "
        "transport local clients use by themselves (README, The frame socket)",
    )
    p.add_argument("--tls-cert", help="PEM certificate chain for TCP listening")
    p.add_argument("--tls-key", help="PEM private key for TCP listening")
    p.add_argument(
        "--tls-client-ca",
        help="PEM roots that sign guests' client certificates: every TCP connection must "
        "present one (mTLS); token file lines NAME cert:CN POLICY map them to policies",
    )
    p.add_argument("--socket-group", help="group allowed to use the unix socket (mode 0660)")
    p.add_argument(
        "--lease-seconds",
        type=float,
        help="layout lease duration (default 30); a dead guest's extents return after it",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        help="client sessions accepted at once (default 1024); each session stream "
        "holds one server thread",
    )
    p.set_defaults(fn=cmd_server, log_default=logging.INFO)

    p = sub.add_parser("mkfs", help="format a region and a fresh metadata file")
    add_volume_options(p)
    p.add_argument("--size", type=byte_size)
    p.add_argument("--block-size", type=block_size, help=BLOCK_HELP)
    p.add_argument("--force", action="store_true", help="erase an existing daxfs region")
    p.set_defaults(fn=cmd_mkfs)

    p = sub.add_parser("fsck", help="check a volume offline")
    add_volume_options(p)
    p.add_argument(
        "--repair",
        action="store_true",
        help="fix what can be fixed safely and say what was done; refused while a server "
        "uses the volume",
    )
    p.set_defaults(fn=cmd_fsck)
