#!/usr/bin/env python3
"""What a user does on a mount, timed: daxfs vs the naive FUSE vs tmpfs, in one run (issue 16).

``.venv/bin/python benchmarks/macro.py [--files 2000] [--rounds 3] [--backend kernel]
[--cache-metadata] [--json out.json]`` (as root; /dev/fuse, git and tar needed)

Workloads, each on a fresh directory of each target, in interleaved rounds:

- ``tar x``: extract a tarball of N small files (1-8 KiB, 20 per directory,
  made once in /dev/shm) into the target;
- ``ls -lR``: list the extracted tree with attributes;
- ``git add+commit``: ``git init``, ``git add -A``, ``git commit`` of the tree;
- ``git status`` and ``git log``: in that repository, unchanged;
- ``sqlite WAL``: 500 single-row transactions (INSERT + COMMIT) into a WAL
  database (a shared mapping of its ``-shm`` file: the kernel backend serves
  it, libfuse 3.14 cannot);
- ``rm -rf``: remove the tree.

Targets: a daxfs mount (``--backend``, default the kernel protocol daemon),
the naive mfusepy passthrough of a tmpfs directory with direct_io
(``daxfs.bench.naive_passthrough``, the filesystem a user would write
instead), and a tmpfs directory. Prints the median seconds per workload and
target, and daxfs's speed as a ratio to each peer (peer time / daxfs time:
higher is better). Every extracted tree is checked against the tarball's
file count. Nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from daxfs.bench.mounts import naive_mount, tmpfs_dir
from daxfs.testing import Volume, fuse_mount, start_server

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def make_tarball(workdir: Path, files: int) -> Path:
    """A tarball of ``files`` small files, 20 per directory, 1-8 KiB of random bytes each."""
    rng = random.Random(7)
    src = workdir / "tree-src"
    for i in range(files):
        d = src / f"d{i // 400}" / f"e{i // 20}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(rng.randbytes(rng.randint(1024, 8192)))
    tarball = workdir / "tree.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(src, arcname="tree")
    shutil.rmtree(src)
    return tarball


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env=GIT_ENV)


def sqlite_wal(path: Path, rows: int = 500) -> None:
    db = sqlite3.connect(path / "bench.db", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        for i in range(rows):
            db.execute("BEGIN")
            db.execute("INSERT INTO t VALUES (?, ?)", (i, os.urandom(100)))
            db.execute("COMMIT")
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == rows
    finally:
        db.close()


def round_on(target: Path, tarball: Path, files: int) -> dict[str, float]:
    """Every workload once in a fresh directory of ``target``; seconds each."""
    work = Path(tempfile.mkdtemp(prefix="macro-", dir=target))
    times: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except (OSError, sqlite3.Error, subprocess.CalledProcessError) as exc:
            # A workload the target cannot run (the naive FUSE cannot map a
            # direct_io file, so SQLite's WAL fails there): recorded, not timed.
            print(f"{target}: {name} failed: {exc}", file=sys.stderr)
            times[name] = float("nan")
            return
        times[name] = time.perf_counter() - t0

    timed("tar x", lambda: run(["tar", "xf", str(tarball)], work))
    found = sum(len(f) for _, _, f in os.walk(work / "tree"))
    assert found == files, f"{target}: extracted {found} files of {files}"
    timed("ls -lR", lambda: run(["ls", "-lR", "tree"], work))
    timed("git add+commit", lambda: (
        run(["git", "init", "-q"], work),
        run(["git", "add", "-A"], work),
        run(["git", "commit", "-q", "-m", "tree"], work),
    ))  # fmt: skip
    timed("git status", lambda: run(["git", "status", "--porcelain"], work))
    timed("git log", lambda: run(["git", "log", "--stat", "-1"], work))
    timed("sqlite WAL", lambda: sqlite_wal(work))
    timed("rm -rf", lambda: shutil.rmtree(work))
    shutil.rmtree(work, ignore_errors=True)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="kernel", choices=("kernel", "libfuse"))
    ap.add_argument("--cache-metadata", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="daxfs-macro-", dir="/dev/shm"))
    load = os.getloadavg()[0]
    try:
        tarball = make_tarball(workdir, args.files)
        volume = Volume.create(workdir, size=4 << 30)
        server = start_server(volume)
        try:
            with ExitStack() as stack:
                extra = ["--backend", args.backend]
                if args.cache_metadata:
                    extra.append("--cache-metadata")
                m = stack.enter_context(
                    fuse_mount(server.address, workdir / "daxfs-mnt", *extra, check=False)
                )
                targets = {
                    "daxfs": m.path,
                    "naive": stack.enter_context(naive_mount(None, workdir)),
                    "tmpfs": stack.enter_context(tmpfs_dir(workdir)),
                }
                results: dict[str, dict[str, list[float]]] = {t: {} for t in targets}
                for r in range(args.rounds):
                    for name, path in targets.items():
                        print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
                        for work, secs in round_on(path, tarball, args.files).items():
                            results[name].setdefault(work, []).append(secs)
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    medians = {t: {w: statistics.median(v) for w, v in r.items()} for t, r in results.items()}
    title = f"{args.files} files, {args.rounds} rounds, backend {args.backend}"
    if args.cache_metadata:
        title += " with --cache-metadata"
    print(f"\n{title}; load average at start {load:.1f}")
    print("| workload | daxfs s | naive FUSE s | tmpfs s | vs naive | vs tmpfs |")
    print("|---|---|---|---|---|---|")
    for work, secs in medians["daxfs"].items():
        n, t = medians["naive"][work], medians["tmpfs"][work]
        print(f"| {work} | {secs:.3f} | {n:.3f} | {t:.3f} | {n / secs:.2f} | {t / secs:.3f} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"title": title, "load": load, "median_s": medians, "runs": results}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
