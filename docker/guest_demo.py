#!/usr/bin/env python3
"""The two-guest scenario of the compose demo; runs inside guest-a and guest-b.

guest-a writes a text file through its FUSE mount and a numpy array through
the library; guest-b reads both (the array zero-copy) and checks their
digests; guest-b then holds a layout (a numpy view) of a third file while
guest-a truncates it, and guest-b sees the server's recall: its view is fenced
and the file reads empty. The guests coordinate through daxfs itself.
Prints ``VERDICT: PASS`` and exits 0 when every check held.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from daxfs.client import connect
from daxfs.testing import Mount, start_mount

ADDRESS = os.environ.get("DAXFS_ADDRESS", "unix:/run/daxfs/daxfs.sock")
MOUNT = os.environ.get("DAXFS_MOUNT", "/mnt/daxfs")
TIMEOUT_S = 120.0
NAME = "guest-?"


def say(text: str) -> None:
    print(f"[{NAME}] {text}", flush=True)


def wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"[{NAME}] timed out waiting for {what}")
        time.sleep(0.05)


def mount() -> Mount:
    m = start_mount(ADDRESS, Path(MOUNT), timeout=TIMEOUT_S, log=Path(f"/tmp/{NAME}-mount.log"))
    say(f"mounted daxfs at {MOUNT} (daemon log: {m.log})")
    return m


def guest_a() -> None:
    fuse = mount()
    try:
        with connect(ADDRESS) as c:
            os.makedirs(f"{MOUNT}/demo", exist_ok=True)
            text = b"Hello from guest-a, through FUSE, straight into shared memory.\n" * 1000
            with open(f"{MOUNT}/demo/hello.txt", "wb") as f:
                f.write(text)
                os.fsync(f.fileno())
            say(f"wrote /demo/hello.txt through the mount ({len(text)} bytes)")
            with c.open("/demo/matrix.f64", "w+b") as f:
                m = f.array(np.float64, (1024, 1024))
                m[:] = np.arange(1024 * 1024, dtype=np.float64).reshape(1024, 1024) / 7.0
                f.persist()
                matrix_digest = hashlib.sha256(m.tobytes()).hexdigest()
            say("stored a 1024x1024 float64 matrix through a zero-copy numpy view")
            with c.open("/demo/victim.bin", "wb") as f:
                f.write(b"\x5a" * (4 * 1024 * 1024))
            digests = {
                "hello.txt": hashlib.sha256(text).hexdigest(),
                "matrix.f64": matrix_digest,
            }
            with c.open("/demo/digests.json", "wb") as f:
                f.write(json.dumps(digests).encode())
            with c.open("/demo/ready", "wb"):
                pass
            say("published digests; waiting for guest-b to hold a layout of /demo/victim.bin")
            wait_for(lambda: c.exists("/demo/b-holding"), "guest-b's layout")
            c.truncate("/demo/victim.bin", 0)
            say("truncated /demo/victim.bin to 0 while guest-b maps it")
            wait_for(lambda: c.exists("/demo/b-done"), "guest-b's verdict")
    finally:
        fuse.stop(check=False)
    say("VERDICT: PASS")


def guest_b() -> None:
    fuse = mount()
    try:
        with connect(ADDRESS) as c:
            say("waiting for guest-a's files")
            wait_for(lambda: c.exists("/demo/ready"), "guest-a")
            with c.open("/demo/digests.json", "rb") as f:
                digests = json.loads(f.read())
            with open(f"{MOUNT}/demo/hello.txt", "rb") as f:
                text = f.read()
            assert hashlib.sha256(text).hexdigest() == digests["hello.txt"], "hello.txt differs"
            say(f"read /demo/hello.txt through its own mount: digest matches ({len(text)} bytes)")
            extents = os.getxattr(f"{MOUNT}/demo/hello.txt", "user.daxfs.extents").decode()
            say(f"its extent map (xattr user.daxfs.extents): {extents.strip()}")
            with c.open("/demo/matrix.f64", "rb") as f:
                m = f.array(np.float64, (1024, 1024))
                assert hashlib.sha256(m.tobytes()).hexdigest() == digests["matrix.f64"]
                corner = m[-1, -1]
                say(f"zero-copy view of /demo/matrix.f64: digest ok, m[1023,1023]={corner:.3f}")
            victim = c.open("/demo/victim.bin", "rb")
            view = victim.array(np.uint8)
            assert int(view[:4096].sum()) == 0x5A * 4096
            recalls_before = c.recalls
            with c.open("/demo/b-holding", "wb"):
                pass
            say("holding a layout (numpy view) of /demo/victim.bin; waiting for the recall")
            wait_for(lambda: c.recalls > recalls_before, "a layout recall")
            say(f"recall received ({c.recalls - recalls_before}); my view is fenced")
            assert int(view.sum()) == 0, "a recalled view must not show the old bytes"
            victim.close()
            assert os.path.getsize(f"{MOUNT}/demo/victim.bin") == 0
            say("the mount sees /demo/victim.bin empty")
            with c.open("/demo/b-done", "wb"):
                pass
    finally:
        fuse.stop(check=False)
    say("VERDICT: PASS")


def main() -> int:
    global NAME
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    NAME = f"guest-{role}"
    if role == "a":
        guest_a()
    elif role == "b":
        guest_b()
    else:
        print("usage: guest_demo.py a|b", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
