#!/usr/bin/env python3
"""Regenerate the committed gencode from proto/daxfs.proto: the one codegen command.

The virtual include path ``daxfs/proto=proto`` makes protoc emit package imports
(``from daxfs.proto import daxfs_pb2``), so nothing is rewritten by hand.
``--check`` regenerates into a temporary folder and fails if the committed files differ.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("daxfs_pb2.py", "daxfs_pb2.pyi", "daxfs_pb2_grpc.py", "daxfs_pb2_grpc.pyi")


def generate(out: Path) -> None:
    import os

    import grpc_tools

    # protoc finds protoc-gen-mypy on PATH: the plugin lives beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{include}",
        f"-Idaxfs/proto={ROOT / 'proto'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        f"{ROOT / 'proto' / 'daxfs.proto'}",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        made = Path(tmp) / "daxfs" / "proto"
        if "--check" in argv:
            stale = [
                n
                for n in OUTPUTS
                if not (ROOT / "proto" / n).exists()
                or not filecmp.cmp(made / n, ROOT / "proto" / n, shallow=False)
            ]
            if stale:
                print(f"stale gencode: {', '.join(stale)}; run `make proto`", file=sys.stderr)
                return 1
            return 0
        for n in OUTPUTS:
            shutil.copyfile(made / n, ROOT / "proto" / n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
