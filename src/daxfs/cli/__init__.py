"""The ``daxfs`` command: server, mkfs, fsck, inspection verbs, mount and umount, bench.

One module per command group, each with a ``register(sub)`` that adds its
verbs (``volume``: server, mkfs, fsck; ``remote``: the verbs that take a
server address; ``mount``: mount and umount; ``bench``), listed in
:data:`COMMAND_GROUPS`. Every verb is ``main([...])`` first, so tests call it
in-process. User mistakes and daxfs errors print one line on stderr and exit
non-zero, with no traceback. ``mkfs.daxfs``, ``fsck.daxfs`` and
``mount.daxfs`` are the Unix-style names of the same verbs.

Only the console scripts and ``python -m daxfs`` import this package.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from daxfs.cli import bench, mount, remote, volume
from daxfs.cli.arguments import Subcommands
from daxfs.cli.logs import setup_logging
from daxfs.shared.errors import DaxfsError, QuietError

#: The command groups, in the order ``daxfs --help`` lists their verbs.
COMMAND_GROUPS: tuple[Callable[[Subcommands], None], ...] = (
    volume.register,
    remote.register,
    mount.register,
    bench.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daxfs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="verbose daxfs logs")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for register in COMMAND_GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.debug, getattr(args, "log_default", logging.WARNING))
    try:
        return int(args.fn(args))
    except QuietError as exc:
        print(f"daxfs: {exc}", file=sys.stderr)
        return exc.exit_code
    except DaxfsError as exc:
        print(f"daxfs {args.verb}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"daxfs {args.verb}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


_VALUE_FLAGS = ("--size", "--meta", "--block-size", "--region")


def _unix_style(verb: str, argv: Sequence[str] | None) -> int:
    """``mkfs.daxfs [options] REGION`` and ``fsck.daxfs [options] REGION``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[-1].startswith("-") and (len(args) == 1 or args[-2] not in _VALUE_FLAGS):
        args = [*args[:-1], "--region", args[-1]]
    return main([verb, *args])


def mkfs_main(argv: Sequence[str] | None = None) -> int:
    return _unix_style("mkfs", argv)


def fsck_main(argv: Sequence[str] | None = None) -> int:
    return _unix_style("fsck", argv)


def mount_main(argv: Sequence[str] | None = None) -> int:
    """``mount.daxfs ADDR MOUNTPOINT [-sfnv] [-o opts]``, as ``mount -t daxfs`` calls it."""
    args = mount.mount8_argv(list(sys.argv[1:] if argv is None else argv))
    if args is None:
        print("usage: mount.daxfs ADDR MOUNTPOINT [-o options]", file=sys.stderr)
        return 2
    return main(args)
