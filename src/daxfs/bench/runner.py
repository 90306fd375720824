"""One ``daxfs bench`` run: a fresh region and server, every suite in order, one Results.

The run starts its own server on a fresh region in /dev/shm, mounts daxfs,
tmpfs and the naive FUSE beside it, measures every figure several times (the
suites are the other modules of ``daxfs.bench``), checks every byte it timed a
read of, and removes everything afterwards. Figures that are compared are
measured back to back within each repetition, and ratios are taken repetition
by repetition.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from daxfs.bench import cross, fio, memory, meta
from daxfs.bench.mounts import daxfs_mount, naive_mount, tmpfs_dir
from daxfs.bench.plan import Plan, size_label
from daxfs.bench.progress import Progress
from daxfs.bench.report import plot, table
from daxfs.bench.results import Results
from daxfs.client.library import Client, connect
from daxfs.testing import Volume, assert_fsck_clean, start_server

log = logging.getLogger(__name__)

FUSE_TARGETS = ("daxfs", "tmpfs", "naive")


def expected_figures(plan: Plan) -> set[str]:
    """Every figure a run of ``plan`` must report (the smoke test holds the JSON to it)."""
    names = {"lib.numpy_copy", "lib.numpy_tobytes", "net.grpc_read", "net.dax_read"}
    names |= {f"lib.{op}" for op in ("read", "readinto", "write")}
    for size in map(size_label, plan.seq_sizes):
        names |= {f"{kind}.{size}" for kind in ("limit.ram", "limit.shm", "dax.read", "dax.write")}
        names.add(f"dax.read_cold.{size}")
    for unit in ("4k", "64b"):
        names |= {f"limit.ram.load_{unit}", f"dax.load_{unit}"}
    for mode in ("msync", "pmem"):
        names |= {f"persist.{mode}.{size_label(s)}" for s in plan.persist_sizes}
    names |= {f"rpc.{call}.{q}" for call in ("getlayout", "check", "stats") for q in ("p50", "p99")}
    net = size_label(plan.net_size)
    names |= {f"layout.per_open.read.{net}", f"layout.per_open.write.{net}"}
    names |= {"layout.per_open.mount_read", "cross.region", "cross.daxfs", "cross.tmpfs"}
    for target in FUSE_TARGETS:
        names |= set(fio.figure_names(target))
        names |= {f"meta.{target}.{op}" for op in ("create", "stat", "unlink")}
    return names


def run(plan: Plan, *, parent: str, naive: Path | None, progress: Progress) -> Results:
    """Measure everything; the work directory (region, mounts) is removed afterwards.

    ``naive`` is another naive FUSE script to compare with (default: the packaged one).
    """
    res = Results(quick=plan.quick, reps=plan.reps, config=_config(plan))
    workdir = Path(tempfile.mkdtemp(prefix="daxfs-bench-", dir=parent))
    try:
        progress(f"formatting a {plan.region_size >> 20} MiB region in {workdir}")
        volume = Volume.create(workdir, size=plan.region_size)
        server = start_server(volume)
        try:
            with connect(server.address) as client:
                _memory_suites(client, res, plan, progress)
                with ExitStack() as mounts:
                    dirs = {
                        "daxfs": mounts.enter_context(daxfs_mount(server.address, workdir)),
                        "tmpfs": mounts.enter_context(tmpfs_dir(workdir)),
                        "naive": mounts.enter_context(naive_mount(naive, workdir)),
                    }
                    _fuse_suites(client, dirs, res, plan, progress)
        finally:
            code = server.stop()
        if code != 0:
            raise RuntimeError(f"the server exited {code}:\n{server.log.read_text()}")
        assert_fsck_clean(volume)
        res.info["fsck"] = "clean"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return res


def _config(plan: Plan) -> dict[str, Any]:
    cfg = {k: getattr(plan, k) for k in plan.__slots__}
    cfg["region_size"] = plan.region_size
    return cfg


def _memory_suites(client: Client, res: Results, plan: Plan, progress: Progress) -> None:
    res.info["flush_mode_main"] = str(client.flush_mode)
    memory.run_sequential(client, res, plan, progress)
    memory.run_random(client, res, plan, progress)
    memory.run_library(client, res, plan, progress)
    memory.run_network(client, res, plan, progress)
    memory.run_persist(client, res, plan, progress)
    meta.run_rpc_latency(client, res, plan, progress)
    meta.run_layouts_per_open(client, res, plan, progress)
    cross.run_region(client, res, plan, progress)


def _fuse_suites(
    client: Client, dirs: dict[str, Path], res: Results, plan: Plan, progress: Progress
) -> None:
    for target, d in dirs.items():
        progress(f"fio: writing {fio.DATA_FILE} through {target}")
        fio.prepare(d, plan, res, target)
    for rep in range(plan.fio_reps):
        for target, d in dirs.items():
            progress(f"fio on {target}: 1 MiB seq, 4 KiB random, 1 and 2 jobs "
                     f"(rep {rep + 1}/{plan.fio_reps})")  # fmt: skip
            fio.record(res, target, fio.run(d, plan))
            before = client.stats().layouts
            fio.verify(d, res, target)
            if target == "daxfs":
                res.add("layout.per_open.mount_read", "calls", client.stats().layouts - before,
                        higher_is_better=False)  # fmt: skip
    for w in fio.WORKLOADS:
        for j in fio.JOB_COUNTS:
            name = f"{w.name}.{j}j"
            goal = 2.0 if w.bs == "1M" else None
            res.ratio(f"fio.{name}.daxfs/naive", f"fio.daxfs.{name}", f"fio.naive.{name}",
                      target=goal)  # fmt: skip
            res.ratio(f"fio.{name}.daxfs/tmpfs", f"fio.daxfs.{name}", f"fio.tmpfs.{name}")
    for d in dirs.values():
        fio.clean(d)
    for rep in range(plan.reps):
        for target, d in dirs.items():
            progress(f"create/stat/unlink on {target} (rep {rep + 1}/{plan.reps})")
            meta.run_namespace(d, target, res, plan.meta_files)
    for op in ("create", "stat", "unlink"):
        res.ratio(f"meta.{op}.daxfs/tmpfs", f"meta.daxfs.{op}", f"meta.tmpfs.{op}")
        res.ratio(f"meta.{op}.daxfs/naive", f"meta.daxfs.{op}", f"meta.naive.{op}")
    cross.run_file(str(dirs["daxfs"] / "pingpong"), "daxfs", res, plan, progress)
    cross.run_file(str(dirs["tmpfs"] / "pingpong"), "tmpfs", res, plan, progress)
    res.ratio("cross.daxfs/region", "cross.daxfs", "cross.region")


def write_outputs(
    doc: dict[str, Any], *, json_out: str | None, png_out: str | None, markdown: bool
) -> None:
    """Write the JSON and the plot if asked, and print the table."""
    for out in (json_out, png_out):
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
    if json_out:
        Path(json_out).write_text(json.dumps(doc, indent=1) + "\n")
    if png_out:
        plot(doc, png_out)
    print(table(doc, markdown=markdown))
