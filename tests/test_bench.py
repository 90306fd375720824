"""``daxfs bench --quick`` end to end: every figure present, every digest checked, a plot drawn.

Timings are not asserted anywhere: this machine is shared and noisy. What is
checked is that the run is complete and honest (the bytes it timed were
verified), and that it leaves no mount, process or file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.bench.plan import Plan
from daxfs.bench.runner import expected_figures
from daxfs.testing import daxfs_cmd

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing"),
    pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed"),
]

#: Ratios the issues set targets for: they must be reported with the target.
TARGETED = {
    "dax.read.64M/limit.ram": (">=", 0.9),
    "dax.write.64M/limit.ram": (">=", 0.9),
    "fio.seqread.1j.daxfs/naive": (">=", 2.0),
    "fio.seqwrite.1j.daxfs/naive": (">=", 2.0),
    "fio.seqread.2j.daxfs/naive": (">=", 2.0),
    "fio.seqwrite.2j.daxfs/naive": (">=", 2.0),
    "net.dax_read/grpc_read": (">=", 10.0),
    "rpc.getlayout.p50/check.p50": ("<=", 1.2),
    "lib.read/numpy_copy": (">=", 0.5),
    "lib.readinto/numpy_copy": (">=", 0.5),
    "lib.write/numpy_copy": (">=", 0.5),
}


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A parent for the run's work directory, on tmpfs, of this test alone.

    Other test runs (and their benches) may share /dev/shm, so the clean-up
    check looks here only.
    """
    d = Path(tempfile.mkdtemp(prefix="daxfs-test-bench-", dir="/dev/shm"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_quick_bench_reports_every_figure(tmp_path: Path, shm_dir: Path) -> None:
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    run = subprocess.run(
        daxfs_cmd(
            "bench", "--quick", "--json", str(out), "--png", str(png), "--workdir", str(shm_dir)
        ),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    doc = json.loads(out.read_text())
    plan = Plan.quick_plan()
    assert doc["quick"] is True
    assert set(doc["figures"]) == expected_figures(plan)
    for name, fig in doc["figures"].items():
        per_fio_run = name.startswith(("fio.", "layout.per_open.mount"))
        runs = plan.fio_reps if per_fio_run else plan.reps
        assert len(fig["runs"]) == runs, name
        assert fig["min"] <= fig["median"] <= fig["max"], name
        assert all(v >= 0 for v in fig["runs"]), name
    for name, (op, target) in TARGETED.items():
        ratio = doc["ratios"][name]
        assert (ratio["target_is"], ratio["target"]) == (op, target), name
        assert isinstance(ratio["met"], bool), name
    # Digests: every timed read was checked against what was written.
    assert doc["digests"] and all(d["ok"] and d["checked"] >= 1 for d in doc["digests"].values())
    assert doc["info"]["fsck"] == "clean"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "digests:" in run.stdout and "ratio" in run.stdout
    # Everything cleaned up: the work directory (region, mounts) is gone.
    assert os.listdir(shm_dir) == []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert str(shm_dir) not in f.read()

    # A saved run draws again without measuring anything.
    again = subprocess.run(
        daxfs_cmd("bench", "--from-json", str(out), "--markdown", "--png", str(tmp_path / "b.png")),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert again.stdout.count("| ") > len(doc["figures"])
    assert (tmp_path / "b.png").stat().st_size > 0
