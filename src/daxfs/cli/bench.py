"""``daxfs bench``: the DAX path, the FUSE path, the gRPC byte path and the limit, side by side.

One run starts its own server on a fresh region in /dev/shm, measures every
figure several times, checks every byte it timed a read of, and prints a
table; ``--json`` writes every figure and ratio, ``--png`` draws them.
``--quick`` is the smoke-test size (well under two minutes on two cores).
Figures that are compared are measured back to back within each repetition,
and ratios are taken repetition by repetition.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

from daxfs.cli.arguments import Subcommands
from daxfs.shared.errors import QuietError


def cmd_bench(args: argparse.Namespace) -> int:
    # The bench (numpy, fio drivers, plots) loads only for this verb.
    from daxfs.bench.cross import PingTimeout
    from daxfs.bench.plan import Plan
    from daxfs.bench.progress import Progress
    from daxfs.bench.results import DigestMismatch
    from daxfs.bench.runner import run, write_outputs

    outputs = {"json_out": args.json, "png_out": args.png, "markdown": args.markdown}
    if args.from_json:
        write_outputs(json.loads(Path(args.from_json).read_text()), **outputs)
        return 0
    if not os.path.exists("/dev/fuse"):
        raise QuietError("daxfs bench needs /dev/fuse (the FUSE figures mount file systems)", 1)
    if shutil.which("fio") is None:
        raise QuietError("daxfs bench needs fio (apt install fio)", 1)
    naive = None
    if args.naive_fs is not None:
        naive = Path(args.naive_fs)
        if not naive.is_file():
            raise QuietError(f"--naive-fs {naive}: no such file", 1)
    plan = Plan.quick_plan() if args.quick else Plan.full()
    progress = Progress()
    try:
        res = run(plan, parent=args.workdir, naive=naive, progress=progress)
    except (DigestMismatch, PingTimeout) as exc:
        raise QuietError(f"bench failed: {exc}", 1) from None
    finally:
        progress.done()
    write_outputs(res.to_json(), **outputs)
    return 0


def register(sub: Subcommands) -> None:
    """Add ``bench``."""
    p = sub.add_parser(
        "bench",
        help="benchmark the DAX, FUSE and gRPC paths against tmpfs, a naive FUSE and memcpy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes, few runs (< 2 minutes)")
    p.add_argument("--json", metavar="OUT", help="write every figure and ratio as JSON")
    p.add_argument("--png", metavar="OUT", help="draw the figures (matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--from-json", metavar="IN", help="show a saved run again; measures nothing")
    p.add_argument(
        "--naive-fs",
        metavar="PATH",
        help="another naive FUSE script to compare with (default: daxfs.bench.naive_passthrough)",
    )
    p.add_argument("--workdir", default="/dev/shm", help="where the region and mounts go (tmpfs)")
    p.set_defaults(fn=cmd_bench, log_default=logging.WARNING)
