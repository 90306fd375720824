"""Argument types and option groups several command groups share."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from daxfs.shared.format import parse_size
from daxfs.shared.region import DEFAULT_REGION_PATH

if TYPE_CHECKING:
    #: What ``ArgumentParser.add_subparsers`` returns; each command group's
    #: ``register`` adds its verbs to it.
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subcommands = argparse._SubParsersAction


def byte_size(text: str) -> int:
    """A byte count such as ``4096``, ``64K`` or ``1G``."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def block_size(text: str) -> int:
    value = byte_size(text)
    if value not in (4096, 2 * 1024 * 1024):
        raise argparse.ArgumentTypeError("block size must be 4K or 2M")
    return value


def add_volume_options(p: argparse.ArgumentParser) -> None:
    """``--region`` and ``--meta``: the volume a host-side verb works on."""
    p.add_argument("--region", default=DEFAULT_REGION_PATH, help="region file or /dev/dax device")
    p.add_argument("--meta", help="metadata file (default: REGION.meta)")


def meta_path(args: argparse.Namespace) -> str:
    from daxfs.server.volume import default_meta_path

    return str(args.meta or default_meta_path(args.region))
