#!/usr/bin/env python3
"""`make demo`: a scripted tour of daxfs on the embedded default (a region in /dev/shm).

It starts a real server, writes a file through the client library, shows where
its bytes live in the region, reads them back from the region file directly,
and shares a numpy array zero-copy with a second process. Exits 0 on success.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from daxfs.client import connect
from daxfs.server.fsck import fsck
from daxfs.testing import Volume, start_server

MIB = 1024 * 1024


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_two_guests(address: str, work: Path) -> bool:
    """The compose demo's scenario, with each guest a process in its own mount namespace."""
    step("two guests, each in its own mount namespace (unshare -m) with its own FUSE mount")
    guest = Path(__file__).resolve().parent.parent / "docker" / "guest_demo.py"
    mnt = work / "mnt"
    mnt.mkdir()
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "DAXFS_ADDRESS": address,
        "DAXFS_MOUNT": str(mnt),
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
    }
    procs = [
        subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", sys.executable, str(guest), role],
            env=env,
        )
        for role in ("a", "b")
    ]
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=180))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    # Each guest mounted inside its own namespace: the host namespace saw nothing.
    assert not os.path.ismount(mnt), "a guest's mount leaked into the host namespace"
    return codes == [0, 0]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="daxfs-demo-", dir="/dev/shm"))
    try:
        step(f"format a 256 MiB region in {work} and start the server")
        volume = Volume.create(work)
        server = start_server(volume)
        print(f"server answers on {server.address}")
        try:
            with connect(server.address) as c:
                step("write 16 MiB through the client library")
                data = np.random.default_rng(0).integers(0, 256, 16 * MIB, np.uint8).tobytes()
                with c.open("/hello.bin", "wb") as f:
                    f.write(data)
                    f.fsync()
                print(f"sha256 {hashlib.sha256(data).hexdigest()[:16]}…")

                step("where the bytes live: GetLayout")
                for e in c.layout("/hello.bin"):
                    print(
                        f"  file [{e.file_offset}, +{e.length}) -> region offset {e.region_offset}"
                    )

                step("read them from the region file directly, at those offsets")
                with open(volume.region, "rb") as region:
                    for e in c.layout("/hello.bin"):
                        assert e.region_offset is not None
                        region.seek(e.region_offset)
                        chunk = region.read(e.length)
                        assert chunk == data[e.file_offset : e.file_end]
                print("  identical")

                step("a zero-copy numpy view, stored here and read in another process")
                with c.open("/matrix.f64", "w+b") as f:
                    a = f.array(np.float64, (512, 512))
                    a[:] = np.eye(512) * 3.0
                    f.persist()
                    print(f"  flush path: {c.flush_mode}")
                code = textwrap.dedent(
                    f"""
                    import numpy as np
                    from daxfs.client import connect
                    with connect({server.address!r}) as c, c.open("/matrix.f64", "rb") as f:
                        m = f.array(np.float64, (512, 512))
                        print("  other process sees trace =", m.trace())
                    """
                )
                subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

                step("namespace")
                c.mkdir("/dir")
                c.rename("/hello.bin", "/dir/hello.bin")
                for name, st in c.scandir("/"):
                    print(f"  {name:12} {st.size:10d} bytes")
                c.unlink("/dir/hello.bin")
                c.rmdir("/dir")
                c.unlink("/matrix.f64")
            two_guests_ok = run_two_guests(server.address, work)
        finally:
            code = server.stop()
        step("fsck")
        report = fsck(volume.region, volume.meta)
        print("  clean" if report.clean else "\n".join(report.problems))
        ok = code == 0 and report.clean and two_guests_ok
        print("\ndemo " + ("passed" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
