#!/usr/bin/env python3
"""Host side of the two-VM demo: one daxfs server, two QEMU guests, one region.

The region is a file in /dev/shm. The server formats and serves it on
127.0.0.1 (TLS + token); both guests get the same file as an ``ivshmem-plain``
PCI device (``memory-backend-file,share=on``) and reach the server through
QEMU's user-mode network (10.0.2.2 is the host's loopback). Each guest boots
Debian's cloud kernel from the cached image (vm/build-image.sh) and runs
vm/guest.py; the run's files (script, daxfs wheel, CA, token) reach it on a
second, read-only disk holding a tar archive.

After both guests power off, the host reads /vm/hello.bin's bytes from the
region file at the offsets ``daxfs extents`` prints, stops the server and runs
``daxfs fsck``. Exit 0 and ``VM-TEST: PASS`` when everything held.

Usage: run.py [--verbose] [--cache DIR] [--timeout S]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
REGION_MIB = 256  # an ivshmem BAR is a power of two
GUEST_MIB = 768
NVDIMM_MIB = 512
T0 = time.monotonic()


def log(text: str) -> None:
    print(f"vm-test [{time.monotonic() - T0:6.1f}s] {text}", flush=True)


def qemu_base(cache: Path, accel: str) -> list[str]:
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    return [
        "qemu-system-x86_64", *cpu, "-m", str(GUEST_MIB), "-smp", "1",
        "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", str(cache / "vmlinuz"), "-initrd", str(cache / "initrd.img"),
    ]  # fmt: skip


def probe_kvm(cache: Path) -> tuple[str, str]:
    """("kvm"|"tcg", why): KVM only if a guest kernel actually starts under it."""
    forced = os.environ.get("DAXFS_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced, "forced by DAXFS_VM_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    cmd = [*qemu_base(cache, "kvm"), "-append", "console=ttyS0 panic=-1 root=/dev/null"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = b""
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    if b"Linux version" in out:
        return "kvm", "a kernel started under KVM"
    tail = out.decode(errors="replace").strip().splitlines()[-1:] or ["no output in 20 s"]
    return "tcg", f"/dev/kvm exists but no guest ran under it ({tail[0][:100]})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tls(work: Path) -> tuple[Path, Path]:
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=daxfs-vm-host",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:10.0.2.2",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def conf_disk(work: Path, role: str, port: int, wheel: Path, ca: Path, token: Path) -> Path:
    """A tar archive the guest unpacks from its second disk: script, daxfs, secrets."""
    site = work / "site"
    if not site.exists():
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    env = (
        f"export ROLE={role}\nexport DAXFS_ADDRESS=10.0.2.2:{port}\n"
        "export DAXFS_TLS_CA=/run/conf/ca.pem\nexport DAXFS_TOKEN_FILE=/run/conf/token\n"
    )
    out = work / f"conf-{role}.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(HERE / "guest-init.sh", "guest-init.sh")
        tar.add(HERE / "guest.py", "guest.py")
        tar.add(ca, "ca.pem")
        tar.add(token, "token")
        tar.add(site, "site")
        info = tarfile.TarInfo("env")
        info.size = len(env)
        tar.addfile(info, io.BytesIO(env.encode()))
    return out


class Guest:
    """One QEMU process; its serial console is read line by line into ``lines``."""

    def __init__(self, role: str, cmd: list[str], verbose: bool) -> None:
        self.role = role
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.booted_s: float | None = None
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.verbose = verbose
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(line)
            if "daxfs-guest: booted" in line and self.booted_s is None:
                self.booted_s = time.monotonic() - self.started
            if self.verbose or line.startswith(("[guest-", "daxfs-guest:", "Traceback")):
                print(f"  vm-{self.role} | {line}", flush=True)

    def verdict(self) -> bool:
        return any(f"[guest-{self.role}] VERDICT: PASS" in line for line in self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "daxfs", *args], env=env, capture_output=True, text=True, timeout=120
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verbose", action="store_true", help="show the guests' whole consoles")
    ap.add_argument("--cache", default=os.environ.get("DAXFS_VM_CACHE", "/var/cache/daxfs-vm"))
    ap.add_argument("--wheels", default=str(REPO / "build" / "wheels"))
    ap.add_argument(
        "--no-devdax",
        dest="devdax",
        action="store_false",
        help="skip guest C (the /dev/dax path on an emulated NVDIMM)",
    )
    ap.add_argument("--roles", default="abc", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=900.0, help="for the guests, seconds")
    args = ap.parse_args()
    # `timeout` (vm-test.sh's budget) sends SIGTERM: still kill QEMU and the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    cache = Path(args.cache)
    wheel = next(Path(args.wheels).glob("daxfs-*.whl"))

    accel, why = probe_kvm(cache)
    log(f"accelerator: {accel.upper()} ({why})")

    work = Path(tempfile.mkdtemp(prefix="daxfs-vm.", dir="/var/tmp"))
    region = Path(f"/dev/shm/daxfs-vm-{os.getpid()}.region")
    nvdimm = Path(f"/dev/shm/daxfs-vm-{os.getpid()}.nvdimm")
    meta = work / "region.meta"
    guests: list[Guest] = []
    server: subprocess.Popen[bytes] | None = None
    try:
        cert, key = make_tls(work)
        token = work / "token"
        token.write_text(secrets.token_hex(16) + "\n")
        token.chmod(0o600)
        port = free_port()
        env = dict(os.environ, DAXFS_TLS_CA=str(cert), DAXFS_TOKEN_FILE=str(token))
        addr = f"127.0.0.1:{port}"
        server_cmd = [
            PY, "-m", "daxfs", "server", f"--region={region}", f"--meta={meta}",
            f"--size={REGION_MIB}M", "--format", f"--listen={addr}",
            f"--tls-cert={cert}", f"--tls-key={key}", f"--token-file={token}",
        ]  # fmt: skip
        log(f"server: {' '.join(server_cmd[1:])}")
        server_log = open(work / "server.log", "wb")  # noqa: SIM115
        server = subprocess.Popen(server_cmd, stdout=server_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while run_cli("ls", addr, "/", env=env).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                print((work / "server.log").read_text()[-3000:])
                raise SystemExit("vm-test: FAIL: the server did not start")
            time.sleep(0.5)
        log(f"server up on {addr} (TLS, token); region {region} ({REGION_MIB} MiB)")

        roles = [r for r in args.roles if r in "abc" and (args.devdax or r != "c")]
        for role in roles:
            disk = conf_disk(work, role, port, wheel, cert, token)
            base = qemu_base(cache, accel)
            if role == "c":
                # Guest C: the /dev/dax path on its own emulated NVDIMM (see guest_c).
                nvdimm.write_bytes(b"")
                os.truncate(nvdimm, NVDIMM_MIB << 20)
                base[base.index("-m") + 1] = f"{GUEST_MIB}M,slots=2,maxmem=4G"
                base += [
                    "-machine", "pc,nvdimm=on",
                    "-object", f"memory-backend-file,id=nv,share=on,mem-path={nvdimm},"
                    f"size={NVDIMM_MIB}M",
                    "-device", "nvdimm,memdev=nv,id=nv0",
                ]  # fmt: skip
            cmd = [
                *base,
                "-append", "console=ttyS0 root=/dev/vda rw init=/sbin/daxfs-init panic=-1 "
                + ("loglevel=6" if args.verbose else "quiet"),
                "-drive", f"file={cache / 'root.ext4'},format=raw,if=virtio,snapshot=on",
                "-drive", f"file={disk},format=raw,if=virtio,readonly=on",
                "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
            ]  # fmt: skip
            if role != "c":
                cmd += [
                    "-object", f"memory-backend-file,id=shm,share=on,mem-path={region},"
                    f"size={REGION_MIB}M",
                    "-device", "ivshmem-plain,memdev=shm",
                ]  # fmt: skip
            if role in ("a", "c"):
                log(f"guest {role}: {' '.join(cmd)}")
            guests.append(Guest(role, cmd, args.verbose))
        log(
            f"booted {len(guests)} guests ({GUEST_MIB} MiB, 1 vCPU each); "
            f"waiting up to {args.timeout:g} s"
        )
        deadline = time.monotonic() + args.timeout
        for g in guests:
            try:
                g.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"guest {g.role} did not finish in time; killing it")
                g.kill()
            g.reader.join(timeout=10)
        failed = [g.role for g in guests if not g.verdict()]
        for g in guests:
            boot = f"{g.booted_s:.1f} s" if g.booted_s is not None else "never"
            log(f"guest {g.role}: boot to init {boot}; ran {time.monotonic() - g.started:.1f} s;"
                f" verdict {'PASS' if g.verdict() else 'missing'}")  # fmt: skip
        if failed:
            for g in guests:
                if g.role in failed and not args.verbose:
                    print("\n".join(f"  vm-{g.role} | {x}" for x in g.lines[-40:]))
            raise SystemExit(f"vm-test: FAIL: no VERDICT: PASS from guest(s) {failed}")

        out = run_cli("extents", addr, "/vm/hello.bin", env=env)
        if out.returncode != 0:
            raise SystemExit(f"vm-test: FAIL: daxfs extents: {out.stderr}")
        log("host: daxfs extents /vm/hello.bin:")
        print("\n".join(f"    {x}" for x in out.stdout.splitlines()), flush=True)
        extents = [tuple(map(int, x.split())) for x in out.stdout.splitlines()[1:-1]]
        os.environ.update(DAXFS_TLS_CA=str(cert), DAXFS_TOKEN_FILE=str(token))
        from daxfs.client import connect

        with connect(addr, region_path=str(region)) as c:
            size = c.stat("/vm/hello.bin").size
            with c.open("/vm/digests.json", "rb") as f:
                digests = json.loads(f.read())
        data = bytearray()
        with open(region, "rb") as f:
            for _file_off, reg_off, length in sorted(extents):
                data += os.pread(f.fileno(), length, reg_off)
        want = digests["hello.bin"]
        text = bytes(data[:size])
        if hashlib.sha256(text).hexdigest() != want:
            raise SystemExit("vm-test: FAIL: the region file's bytes differ from A's digest")
        log(f"host: read {len(text)} bytes of /vm/hello.bin straight from {region}: digest ok")

        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        server = None
        fsck = run_cli("fsck", f"--region={region}", f"--meta={meta}", env=env)
        print("\n".join(f"    {x}" for x in (fsck.stdout + fsck.stderr).strip().splitlines()))
        if fsck.returncode != 0:
            raise SystemExit(f"vm-test: FAIL: daxfs fsck exited {fsck.returncode}")
        log("host: daxfs fsck clean")
        boots = ", ".join(f"{g.role} {g.booted_s:.1f} s" for g in guests if g.booted_s)
        log(f"VM-TEST: PASS ({accel.upper()}; boot to init: {boots})")
        return 0
    finally:
        for g in guests:
            g.kill()
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        region.unlink(missing_ok=True)
        nvdimm.unlink(missing_ok=True)
        if os.environ.get("DAXFS_VM_KEEP"):
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
