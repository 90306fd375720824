#!/usr/bin/env python3
"""The two-VM scenario; runs inside QEMU guest A or B (``guest.py a|b``).

Each guest has its own kernel and page cache. The region is an ivshmem PCI
BAR the guest maps through sysfs (``$DAXFS_REGION``, .../resource2); the
server is on the host, reached over QEMU's user-mode network with TLS and a
token (``$DAXFS_ADDRESS``, ``$DAXFS_TLS_CA``, ``$DAXFS_TOKEN_FILE``). The
guests coordinate through daxfs itself (marker files).

1. A writes /vm/hello.bin through its FUSE mount; B reads it through its own
   mount and checks the digest (the host then reads the same bytes from the
   region file at the offsets GetLayout gives).
2. A stores a numpy matrix through a zero-copy view; B maps it and checks.
3. B reads 64 MiB through its mount; its page cache does not grow by it.
4. A truncates a file B has mapped; B sees the recall and its view is fenced.
5. Each guest prints ``VERDICT: PASS``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from daxfs.client import connect

ADDRESS = os.environ["DAXFS_ADDRESS"]
REGION = os.environ["DAXFS_REGION"]
MOUNT = "/mnt/daxfs"
TIMEOUT_S = float(os.environ.get("DAXFS_VM_WAIT_S", "300"))
BIG = 64 * 1024 * 1024
NAME = "guest-?"


def say(text: str) -> None:
    print(f"[{NAME}] {text}", flush=True)


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"[{NAME}] timed out after {TIMEOUT_S:g} s waiting for {what}")
        time.sleep(0.25)


def cached_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1])
    raise SystemExit("no Cached: line in /proc/meminfo")


def mount() -> subprocess.Popen[bytes]:
    os.makedirs(MOUNT, exist_ok=True)
    cmd = [sys.executable, "-m", "daxfs", "mount", ADDRESS, MOUNT, "--region", REGION, "-f"]
    proc = subprocess.Popen(cmd)
    wait_for(lambda: os.path.ismount(MOUNT) or proc.poll() is not None, "the FUSE mount")
    if proc.poll() is not None:
        raise SystemExit(f"[{NAME}] daxfs mount exited {proc.returncode}")
    say(f"mounted daxfs at {MOUNT} (region: {REGION})")
    return proc


def unmount(proc: subprocess.Popen[bytes]) -> None:
    subprocess.run([sys.executable, "-m", "daxfs", "umount", MOUNT], check=False)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def touch(c: object, path: str) -> None:
    with c.open(path, "wb"):  # type: ignore[attr-defined]
        pass


def guest_a() -> None:
    fuse = mount()
    try:
        with connect(ADDRESS, region_path=REGION) as c:
            say(f"connected; flush mode {c.flush_mode}")
            os.makedirs(f"{MOUNT}/vm", exist_ok=True)
            text = b"".join(
                b"guest A, kernel %s, line %6d\n" % (platform.release().encode(), i)
                for i in range(20000)
            )
            with open(f"{MOUNT}/vm/hello.bin", "wb") as f:
                f.write(text)
                os.fsync(f.fileno())
            say(f"step 1: wrote /vm/hello.bin through the FUSE mount ({len(text)} bytes)")
            with c.open("/vm/matrix.f64", "w+b") as f:
                m = f.array(np.float64, (1024, 1024))
                m[:] = np.arange(1024 * 1024, dtype=np.float64).reshape(1024, 1024) / 7.0
                f.persist()
                matrix_digest = hashlib.sha256(m.tobytes()).hexdigest()
                del m
            say("step 2: stored a 1024x1024 float64 matrix through a zero-copy view, persist()ed")
            big = np.arange(BIG // 4, dtype=np.uint32).tobytes()
            with c.open("/vm/big.bin", "wb") as f:
                for off in range(0, BIG, 8 << 20):
                    f.write(big[off : off + (8 << 20)])
            say("step 3: wrote /vm/big.bin (64 MiB) through the library for B to read")
            with c.open("/vm/victim.bin", "wb") as f:
                f.write(b"\x5a" * (4 << 20))
            digests = {
                "hello.bin": hashlib.sha256(text).hexdigest(),
                "matrix.f64": matrix_digest,
                "big.bin": hashlib.sha256(big).hexdigest(),
            }
            del big
            with c.open("/vm/digests.json", "wb") as f:
                f.write(json.dumps(digests).encode())
            touch(c, "/vm/a-ready")
            say("published digests; waiting for B to map /vm/victim.bin")
            wait_for(lambda: c.exists("/vm/b-holding"), "B's mapping of /vm/victim.bin")
            c.truncate("/vm/victim.bin", 0)
            say("step 4: truncated /vm/victim.bin to 0 while B maps it")
            wait_for(lambda: c.exists("/vm/b-done"), "B's verdict")
    finally:
        unmount(fuse)
    say("VERDICT: PASS")


def guest_b() -> None:
    fuse = mount()
    try:
        with connect(ADDRESS, region_path=REGION) as c:
            say(f"connected; flush mode {c.flush_mode}; waiting for A's files")
            wait_for(lambda: c.exists("/vm/a-ready"), "guest A")
            with c.open("/vm/digests.json", "rb") as f:
                digests = json.loads(f.read())
            with open(f"{MOUNT}/vm/hello.bin", "rb") as f:
                text = f.read()
            assert hashlib.sha256(text).hexdigest() == digests["hello.bin"], "hello.bin differs"
            say(f"step 1: read /vm/hello.bin through my own mount: digest ok ({len(text)} bytes)")
            say(f"        first line: {text.splitlines()[0].decode()!r}")
            with c.open("/vm/matrix.f64", "rb") as f:
                m = f.array(np.float64, (1024, 1024))
                assert hashlib.sha256(m.tobytes()).hexdigest() == digests["matrix.f64"]
                corner = m[-1, -1]
                say(f"step 2: zero-copy view of A's matrix: digest ok, corner {corner:.3f}")
                del m
            subprocess.run(["sync"], check=False)
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            before = cached_kib()
            h = hashlib.sha256()
            with open(f"{MOUNT}/vm/big.bin", "rb", buffering=0) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            after = cached_kib()
            assert h.hexdigest() == digests["big.bin"], "big.bin differs"
            grew = after - before
            say(
                f"step 3: read 64 MiB through my mount: digest ok; page cache (Cached) "
                f"{before} kB -> {after} kB ({grew:+d} kB)"
            )
            assert grew < 8 * 1024, f"the page cache grew by {grew} kB reading 64 MiB"
            victim = c.open("/vm/victim.bin", "rb")
            view = victim.array(np.uint8)
            assert int(view[:4096].sum()) == 0x5A * 4096
            recalls_before = c.recalls
            touch(c, "/vm/b-holding")
            say("step 4: mapping /vm/victim.bin (numpy view); waiting for the recall")
            wait_for(lambda: c.recalls > recalls_before, "a layout recall")
            assert int(view.sum()) == 0, "a recalled view must not show the old bytes"
            say(
                f"step 4: recall received ({c.recalls - recalls_before}); my view is fenced "
                "(reads zeros)"
            )
            victim.close()
            assert os.path.getsize(f"{MOUNT}/vm/victim.bin") == 0
            say("step 4: my mount sees /vm/victim.bin empty")
            touch(c, "/vm/b-done")
    finally:
        unmount(fuse)
    say("VERDICT: PASS")


def guest_c() -> None:
    """The /dev/dax path: server, FUSE mount and library all in this guest on an NVDIMM.

    The guest's NVDIMM (QEMU ``-device nvdimm``) is configured as a devdax
    namespace; the server formats /dev/dax0.0 (size from sysfs, no hole
    punching) and the mount and the library map it.
    """
    dax = os.environ["DAXFS_DAX"]
    sock = "unix:/run/daxfs.sock"
    cmd = [sys.executable, "-m", "daxfs", "server", f"--region={dax}", "--meta=/run/dax.meta",
           "--format", f"--listen={sock}"]  # fmt: skip
    server = subprocess.Popen(cmd)
    try:
        wait_for(lambda: os.path.exists("/run/daxfs.sock") or server.poll() is not None, "server")
        if server.poll() is not None:
            raise SystemExit(f"[{NAME}] daxfs server on {dax} exited {server.returncode}")
        say(f"daxfs server formatted and serves {dax}")
        global ADDRESS, REGION
        ADDRESS, REGION = sock, dax
        fuse = mount()
        try:
            with connect(sock) as c:
                say(f"library connected; region {c.region.path} ({c.region.size >> 20} MiB), "
                    f"flush mode {c.flush_mode}")  # fmt: skip
                data = np.arange(1 << 20, dtype=np.uint32).tobytes()
                with open(f"{MOUNT}/dax.bin", "wb") as f:
                    f.write(data)
                with c.open("/dax.bin", "rb") as f:
                    view = f.array(np.uint32)
                    assert view.tobytes() == data, "the library's view differs from the mount"
                    del view
                say("wrote 4 MiB through the mount; the library's zero-copy view matches")
                victim = c.open("/dax.bin", "rb")
                view = victim.array(np.uint32)
                before = c.recalls
                os.truncate(f"{MOUNT}/dax.bin", 0)
                wait_for(lambda: c.recalls > before, "a layout recall")
                assert int(view.sum()) == 0, "a recalled view must not show the old bytes"
                say("truncated it through the mount: the library's view was recalled and fenced")
                victim.close()
        finally:
            unmount(fuse)
    finally:
        server.terminate()
        server.wait(timeout=60)
    fsck = subprocess.run([sys.executable, "-m", "daxfs", "fsck", f"--region={dax}",
                           "--meta=/run/dax.meta"])  # fmt: skip
    assert fsck.returncode == 0, "daxfs fsck found problems on /dev/dax"
    say(f"daxfs fsck {dax}: clean")
    say("VERDICT: PASS")


def main() -> int:
    global NAME
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    NAME = f"guest-{role}"
    say(f"uname -r: {platform.release()} (this guest's own kernel)")
    if role == "a":
        guest_a()
    elif role == "b":
        guest_b()
    elif role == "c":
        guest_c()
    else:
        print("usage: guest.py a|b|c", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
