"""Run pjdfstest and fsx (fetched and built elsewhere) on a fresh daxfs mount.

Fetches nothing; the suites' paths are arguments. As root:

    python scripts/conformance.py pjdfstest /work/ext/pjdfstest [tests/chmod ...]
    python scripts/conformance.py fsx /work/ext/fsx/fsx -- -N 100000 -S 2 -R -W
    python scripts/conformance.py --backend kernel fsx /work/ext/fsx/fsx -- -N 100000 -S 2

The mount is ``-o allow_other,default_permissions`` on a new 1 GiB volume in a
temporary directory, with the front end ``--backend`` names (default: the
``DAXFS_TEST_BACKEND`` environment variable, else libfuse); pjdfstest runs
``prove -r`` from a directory inside it, fsx works on ``fsx.file`` there
(give fsx ``-P DIR`` to keep its logs). ``--logs DIR`` keeps the server's and
the mount daemon's logs. The exit status is the suite's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from daxfs.testing import Volume, default_backend, fuse_mount, start_server


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("libfuse", "kernel"), default=default_backend())
    p.add_argument("--logs", type=Path, help="copy the server and mount logs here at the end")
    p.add_argument("suite", choices=("pjdfstest", "fsx"))
    p.add_argument("path", help="pjdfstest's source tree, or the fsx binary")
    p.add_argument("args", nargs=argparse.REMAINDER, help="test dirs, or fsx's options after --")
    ns = p.parse_args(argv)
    if ns.args[:1] == ["--"]:
        ns.args = ns.args[1:]
    return ns


def main(argv: list[str]) -> int:
    ns = parse(argv)
    with tempfile.TemporaryDirectory(prefix="daxfs-conf-") as tmp:
        os.chmod(tmp, 0o755)
        volume = Volume.create(Path(tmp), size=1 << 30)
        server = start_server(volume)
        mountpoint = Path(tmp) / "mnt"
        try:
            with fuse_mount(
                server.address,
                mountpoint,
                "-o",
                "allow_other,default_permissions",
                check=False,
                backend=ns.backend,
            ) as m:
                work = m.path / "work"
                work.mkdir()
                os.chmod(work, 0o777)
                if ns.suite == "pjdfstest":
                    tests = [str(Path(ns.path) / t) for t in ns.args]
                    cmd = ["prove", "-r", *(tests or [str(Path(ns.path) / "tests")])]
                else:
                    cmd = [ns.path, *ns.args, str(work / "fsx.file")]
                print(f"daxfs conformance: backend {ns.backend}: {' '.join(cmd)}", flush=True)
                return subprocess.run(cmd, cwd=work, check=False).returncode
        finally:
            server.stop()
            if ns.logs is not None:
                ns.logs.mkdir(parents=True, exist_ok=True)
                for log in (server.log, mountpoint.parent / f"{mountpoint.name}.mount.log"):
                    if log.exists():
                        shutil.copy(log, ns.logs / log.name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
