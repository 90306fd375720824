"""A client in a second language: examples/node, written from the .proto alone, on a real server.

It must say Hello with a token, keep its session renewed past several leases,
write a file through a WRITE layout by storing into the region, read files
back through READ layouts, and answer the recall its own truncate causes. The
Python client checks what it wrote. Skipped, with the reason, where Node.js
or the npm registry is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.client import connect
from daxfs.testing import ServerProc, Volume, assert_fsck_clean, start_server

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"
NODE_TOKEN = "node-example-token-0123456789"


def _installed() -> None:
    """node and the example's packages (npm ci from the registry once; node_modules is cached)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (apt-get install nodejs npm)")
    if (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return
    out = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        pytest.skip(f"npm ci failed (is the registry reachable?):\n{out.stderr[-2000:]}")


@pytest.fixture
def node_server(volume: Volume, workdir: Path) -> Iterator[tuple[ServerProc, Path]]:
    _installed()
    tokens = workdir / "tokens"
    tokens.write_text(f"python {'p' * 24} trusted\nnode {NODE_TOKEN} trusted\n")
    mine = workdir / "node.token"
    mine.write_text(NODE_TOKEN + "\n")
    srv = start_server(volume, "--token-file", str(tokens), "--lease-seconds", "1")
    yield srv, mine
    assert srv.stop() == 0
    assert "Traceback" not in srv.log.read_text()
    assert_fsck_clean(volume)


def test_the_node_example_moves_bytes_both_ways_and_answers_a_recall(
    node_server: tuple[ServerProc, Path],
) -> None:
    srv, node_token = node_server
    with connect(srv.address, token="p" * 24) as py:
        with py.open("/from-python.txt", "wb") as f:
            f.write(b"written by Python, read by Node")
        out = subprocess.run(
            [str(a) for a in ("node", EXAMPLE / "daxfs-example.js", srv.address)]
            + ["--read", "/from-python.txt", "--linger", "2.5"],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "DAXFS_TOKEN_FILE": str(node_token)},
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert 'read /from-python.txt: "written by Python, read by Node"' in out.stdout
        assert re.search(r"recall \d+ of ino \d+ .*: answered", out.stdout), out.stdout
        renewals = re.search(r"lingered 2.5 s: (\d+) renewals, session alive", out.stdout)
        assert renewals is not None and int(renewals.group(1)) >= 1, out.stdout
        assert "recalls answered 1, pending 0" in out.stdout
        with py.open("/hello-from-node.txt", "rb") as f:
            assert f.read().startswith(b"Hello from Node.js")
        assert not py.exists("/recall-me.txt")
        stats = py.stats()
        assert stats.pending_recalls == 0 and stats.quarantined_bytes == 0
    assert "name=node-example" in srv.log.read_text()
