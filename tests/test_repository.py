"""The tree itself: gencode freshness, layering, packaging, version floors."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_every_proto_element_is_documented() -> None:
    assert (
        "Missing associated documentation comment"
        not in (ROOT / "proto" / "daxfs_pb2_grpc.py").read_text()
    )


def test_core_imports_neither_grpc_nor_fuse() -> None:
    core = [
        ROOT / "server" / n
        for n in (
            "namespace.py",
            "allocator.py",
            "metadata.py",
            "leases.py",
            "volume.py",
            "fsck.py",
        )
    ]
    core += list((ROOT / "shared").glob("*.py"))
    for path in core:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(("grpc", "mfusepy", "fuse", "daxfs.proto")), (
                    f"{path.name} imports {name}: the core must not know its edges"
                )


def test_packages_list_matches_the_folders() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(conf["packages"])
    mapping = conf["package-dir"]
    found = {"daxfs"}
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([pkg, *rel.parts]))
    assert found == packages, "add new subpackages to [tool.setuptools] packages"


def test_dependency_floors_satisfy_the_gencode() -> None:
    grpc_gen = (ROOT / "proto" / "daxfs_pb2_grpc.py").read_text()
    gen_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_gen)
    assert gen_version
    pb2 = (ROOT / "proto" / "daxfs_pb2.py").read_text()
    m = re.search(r"Domain.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb2)
    assert m
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"grpcio>={gen_version.group(1)}" in deps
    assert f"protobuf>={m.group(1)}.{m.group(2)}.{m.group(3)},<{int(m.group(1)) + 2}" in deps
