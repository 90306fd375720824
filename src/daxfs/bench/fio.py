"""fio against a directory: sequential 1 MiB and random 4 KiB reads and writes, 1 and 2 jobs.

One fio process per target and repetition runs every workload in turn
(``stonewall``: one group at a time, ``group_reporting``: one result per
group), with psync (one system call per block) and buffered I/O: daxfs and
the naive FUSE are direct_io mounts, so nothing is cached there, and tmpfs's
memory *is* the page cache. fio runs with its working directory in a
temporary directory so it leaves no state file anywhere else.

Correctness: readers read ``data.bin``, which the benchmark writes with a known
pattern through the target first; after every fio run the file is read back
through the target and its digest compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daxfs.bench.plan import Plan
from daxfs.bench.results import Results, digest, pattern

MB = 1e6


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    """Figure name part: ``seqread``, ``seqwrite``, ``randread``, ``randwrite``."""
    rw: str
    bs: str


WORKLOADS = (
    Workload("seqread", "read", "1M"),
    Workload("seqwrite", "write", "1M"),
    Workload("randread", "randread", "4k"),
    Workload("randwrite", "randwrite", "4k"),
)
JOB_COUNTS = (1, 2)
DATA_FILE = "data.bin"


def job_file(directory: Path, plan: Plan) -> str:
    lines = [
        "[global]",
        "ioengine=psync",
        f"directory={directory}",
        f"size={plan.fio_size}",
        "time_based=1",
        f"runtime={plan.fio_runtime_ms}ms",
        "group_reporting=1",
        "stonewall=1",
        "fallocate=none",
        "invalidate=0",
        # Page-aligned buffers, as fio gives O_DIRECT jobs and dd uses: a direct_io
        # FUSE request pins the user's pages, and a 1 MiB buffer that starts
        # mid-page spans 257 pages, one more than the kernel's 256-page requests,
        # so daxfs would get every 1 MiB read as 1 MiB - 16 B plus 16 B.
        "iomem_align=4096",
        "",
    ]
    for w in WORKLOADS:
        for jobs in JOB_COUNTS:
            lines += [f"[{w.name}-{jobs}]", f"rw={w.rw}", f"bs={w.bs}", f"numjobs={jobs}"]
            if w.rw.endswith("read"):
                lines.append(f"filename={DATA_FILE}")
            else:
                # Overwrite files laid out before the timed phase, one per job.
                lines += ["overwrite=1", f"filename_format=w{w.name}.$jobnum"]
            lines.append("")
    return "\n".join(lines)


def prepare(directory: Path, plan: Plan, res: Results, target: str) -> None:
    """Write data.bin through the target; declare its digest."""
    data = pattern(plan.fio_size, 7)
    with open(directory / DATA_FILE, "wb") as f:
        f.write(data.tobytes())
    res.expect(f"fio.{target}.data", digest(data))


def verify(directory: Path, res: Results, target: str) -> None:
    with open(directory / DATA_FILE, "rb") as f:
        res.verify(f"fio.{target}.data", digest(f.read()))


def run(directory: Path, plan: Plan) -> dict[str, dict[str, float]]:
    """One fio run of every workload; returns {job: {"bw": bytes/s, "iops": ...}}."""
    with tempfile.TemporaryDirectory(prefix="daxfs-fio-") as cwd:
        jobs = Path(cwd) / "bench.fio"
        jobs.write_text(job_file(directory, plan))
        out = subprocess.run(
            ["fio", "--output-format=json", str(jobs)],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=600,
            check=False,
        )
    if out.returncode != 0:
        raise RuntimeError(f"fio failed on {directory}:\n{out.stdout}\n{out.stderr}")
    doc: dict[str, Any] = json.loads(out.stdout[out.stdout.index("{") :])
    result: dict[str, dict[str, float]] = {}
    for job in doc["jobs"]:
        if job.get("error"):
            raise RuntimeError(f"fio job {job['jobname']} on {directory}: error {job['error']}")
        side = job["read"] if job["job options"].get("rw", "").endswith("read") else job["write"]
        if not side["io_bytes"]:
            raise RuntimeError(f"fio job {job['jobname']} on {directory} moved no bytes")
        result[job["jobname"]] = {"bw": float(side["bw_bytes"]), "iops": float(side["iops"])}
    return result


def record(res: Results, target: str, result: dict[str, dict[str, float]]) -> None:
    for w in WORKLOADS:
        for jobs in JOB_COUNTS:
            r = result[f"{w.name}-{jobs}"]
            if w.bs == "1M":
                res.add(f"fio.{target}.{w.name}.{jobs}j", "MB/s", r["bw"] / MB)
            else:
                res.add(f"fio.{target}.{w.name}.{jobs}j", "kIOPS", r["iops"] / 1e3)


def figure_names(target: str) -> list[str]:
    return [f"fio.{target}.{w.name}.{j}j" for w in WORKLOADS for j in JOB_COUNTS]


def clean(directory: Path) -> None:
    for entry in os.listdir(directory):
        os.unlink(directory / entry)
