"""The tree itself: gencode freshness, layering, packaging, version floors."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
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


#: The server's modules in layers, from the floor up: a module imports its own layer
#: and those below, never one above. Below the edge is the core, which knows no
#: transport. A new module must be placed here (the test says so).
SERVER_LAYERS: list[tuple[str, set[str]]] = [
    ("stores", {"metadata", "cache_grants", "allocator", "leases"}),
    ("rules", {"paths", "acl", "access"}),
    ("parts of the core", {"extent_map", "lease_lifecycle", "open_files", "xattrs"}),
    ("core", {"namespace"}),
    ("volume", {"volume", "fsck", "failed"}),
    ("edge", {"auth", "peercred", "sessions", "service", "frames"}),
    ("process", {"daemon"}),
]
_SERVER_RANK = {
    f"daxfs.server.{name}": rank for rank, (_, names) in enumerate(SERVER_LAYERS) for name in names
}
_EDGE_RANK = [layer for layer, _ in SERVER_LAYERS].index("edge")


def test_no_server_module_imports_upward() -> None:
    modules = _modules()
    server = {m for m in modules if m.startswith("daxfs.server.")}
    assert server == set(_SERVER_RANK), "place every server module in SERVER_LAYERS"
    wrong = [
        f"{module} ({SERVER_LAYERS[_SERVER_RANK[module]][0]}) imports {target} "
        f"({SERVER_LAYERS[_SERVER_RANK[target]][0]})"
        for module in sorted(server)
        for target in sorted(_imports(module, modules[module], modules))
        if _SERVER_RANK.get(target, -1) > _SERVER_RANK[module]
    ]
    assert not wrong, "server imports against SERVER_LAYERS:\n" + "\n".join(wrong)


def test_core_imports_neither_grpc_nor_fuse() -> None:
    core = [path for m, path in _modules().items() if _SERVER_RANK.get(m, _EDGE_RANK) < _EDGE_RANK]
    core += list((ROOT / "shared").glob("*.py"))
    assert ROOT / "server" / "namespace.py" in core
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


#: Which parts of daxfs each part may import: the layers of the architecture.
#: shared is the floor; server and client stand on it and never on each other;
#: ``daxfs.testing`` drives a server and clients; the bench uses all of that; the
#: CLI sits on top, and only ``python -m daxfs`` (and the console scripts) use it.
MAY_IMPORT: dict[str, set[str]] = {
    "shared": {"shared"},
    "proto": {"proto"},
    "server": {"shared", "proto", "server"},
    "client": {"shared", "proto", "client"},
    "testing": {"shared", "proto", "server", "client", "testing"},
    "bench": {"shared", "proto", "server", "client", "testing", "bench"},
    "cli": {"shared", "proto", "server", "client", "bench", "cli"},
    "root": set(),
    "main": {"cli"},
}


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, from pyproject's package-dir."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    modules = {}
    for pkg, folder in mapping.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules.setdefault(".".join(parts), path)
    return modules


def _layer(module: str) -> str:
    parts = module.split(".")
    if module == "daxfs":
        return "root"
    if module == "daxfs.__main__":
        return "main"
    return parts[1]


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The daxfs modules ``module`` imports, anywhere in it (functions and
    TYPE_CHECKING blocks included: a deferred import is still a dependency)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()

    def resolve(name: str) -> None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                resolve(full if full in modules else base)
    found.discard(module)
    return found


def test_no_module_imports_upward() -> None:
    modules = _modules()
    wrong = []
    for module, path in sorted(modules.items()):
        for target in sorted(_imports(module, path, modules)):
            if _layer(target) not in MAY_IMPORT[_layer(module)]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layering (see MAY_IMPORT):\n" + "\n".join(wrong)


def test_the_client_core_knows_no_fuse_edge() -> None:
    """daxfs.client is the core every front end stands on; daxfs.client.fuse is one edge."""
    modules = _modules()
    edge = "daxfs.client.fuse"
    wrong = [
        f"{module} imports {target}"
        for module, path in sorted(modules.items())
        if module.startswith("daxfs.client") and not module.startswith(edge)
        for target in sorted(_imports(module, path, modules))
        if target.startswith(edge)
    ]
    assert not wrong, "the client core imports its FUSE edge:\n" + "\n".join(wrong)


def test_only_the_wire_and_the_session_stream_know_the_generated_code() -> None:
    """The client core speaks in daxfs.shared values: client/rpc.py (one typed method
    per call), client/frames.py (its frame socket) and client/session.py (the session
    stream) alone turn them into wire messages and back."""
    modules = _modules()
    wire = {"daxfs.client.rpc", "daxfs.client.frames", "daxfs.client.session"}
    wrong = [
        f"{module} imports {target}"
        for module, path in sorted(modules.items())
        if module.startswith("daxfs.client") and module not in wire
        for target in sorted(_imports(module, path, modules))
        if target.startswith("daxfs.proto")
    ]
    assert not wrong, "client modules that know the wire besides rpc and session:\n" + "\n".join(
        wrong
    )


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    # Tarjan's strongly connected components: any component of two or more
    # modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


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


def test_the_wheel_holds_every_module(tmp_path: Path) -> None:
    """What ships is what is here: every module (the CLI, the bench and its naive FUSE
    peer included), built from a clean copy so no stale build/ can hide a gap."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".*", "build", "dist", "*.egg-info", "__pycache__", "tests", "benchmarks"
        ),
    )
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "wheel"), str(src)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "wheel").glob("daxfs-*.whl")
    shipped = {
        n.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for n in zipfile.ZipFile(wheel).namelist()
        if n.startswith("daxfs/") and n.endswith(".py")
    }
    assert shipped == set(_modules())


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


def test_every_unary_rpc_is_typed_once_and_nothing_dispatches_by_string() -> None:
    """mypy sees every RPC: each unary call of the service has one typed ``Rpc`` in
    client/rpc.py with the descriptor's request and reply types, and no client
    code names a call by a string."""
    from daxfs.client import rpc
    from daxfs.proto import daxfs_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Daxfs"]
    unary = {m.name: m for m in service.methods if not (m.client_streaming or m.server_streaming)}
    assert set(rpc.UNARY) == set(unary)
    for name, typed in rpc.UNARY.items():
        assert typed.request.DESCRIPTOR is unary[name].input_type, name
        assert typed.reply.DESCRIPTOR is unary[name].output_type, name
    by_string = re.compile(r"""\bcall\(\s*["'][A-Z]""")
    for path in [*ROOT.glob("client/**/*.py"), *ROOT.glob("src/**/*.py"), *ROOT.glob("tests/*.py")]:
        assert not by_string.search(path.read_text()), f"{path}: an RPC named by a string"


def test_the_client_has_one_typed_method_per_unary_rpc_speaking_shared_values() -> None:
    """``rpc.Server`` offers each unary call as one method (GetAttr as ``get_attr``)
    whose parameters and result are plain or daxfs.shared values: never Any, never a
    wire message (only ``Server.call``, the raw form under them, takes one)."""
    import inspect

    from daxfs.client import rpc

    for name in rpc.UNARY:
        method = getattr(rpc.Server, re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower(), None)
        assert callable(method), f"rpc.Server has no method for {name}"
        annotations = [str(p.annotation) for p in inspect.signature(method).parameters.values()] + [
            str(inspect.signature(method).return_annotation)
        ]
        for text in annotations:
            assert "Any" not in text and "pb." not in text, f"{name}: {text}"
