"""Run pjdfstest and fsx (fetched and built elsewhere) on a fresh daxfs mount.

Fetches nothing; the suites' paths are arguments. As root:

    python scripts/conformance.py pjdfstest /work/ext/pjdfstest [tests/chmod ...]
    python scripts/conformance.py fsx /work/ext/fsx/fsx -- -N 100000 -S 1 -R -W

The mount is ``-o allow_other,default_permissions`` on a new volume in a
temporary directory; pjdfstest runs ``prove -r`` from a directory inside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from daxfs.testing import Volume, fuse_mount, start_server


def main(argv: list[str]) -> int:
    suite, path, *rest = argv
    if rest[:1] == ["--"]:
        rest = rest[1:]
    with tempfile.TemporaryDirectory(prefix="daxfs-conf-") as tmp:
        os.chmod(tmp, 0o755)
        volume = Volume.create(Path(tmp), size=1 << 30)
        server = start_server(volume)
        try:
            with fuse_mount(
                server.address,
                Path(tmp) / "mnt",
                "-o",
                "allow_other,default_permissions",
                check=False,
            ) as m:
                work = m.path / "work"
                work.mkdir()
                os.chmod(work, 0o777)
                if suite == "pjdfstest":
                    tests = [str(Path(path) / t) for t in rest] or [str(Path(path) / "tests")]
                    cmd = ["prove", "-r", *tests]
                else:
                    cmd = [path, *rest, str(work / "fsx.file")]
                return subprocess.run(cmd, cwd=work, check=False).returncode
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
