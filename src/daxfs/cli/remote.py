"""Verbs that talk to a running server: ``ls``, ``stat``, ``put``, ``get``, ``rm``,
``mkdir``, ``extents`` and ``health``."""

from __future__ import annotations

import argparse
import stat
import sys
import time
from collections.abc import Callable

from daxfs.cli.arguments import Subcommands
from daxfs.shared.address import normalize_address


def _connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from daxfs.client import connect

    return connect(
        normalize_address(args.addr),
        region_path=args.region,
        token_file=args.token_file,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def cmd_ls(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        for name, st in c.scandir(args.path):
            kind = "d" if st.is_dir else ("l" if stat.S_ISLNK(st.mode) else "-")
            mode = stat.filemode(st.mode)[1:]
            print(f"{kind}{mode} {st.nlink:3d} {st.uid:5d} {st.gid:5d} {st.size:12d} {name}")
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        st = c.stat(args.path)
        print(f"  File: {args.path}")
        print(f"  Size: {st.size}  Allocated: {st.allocated}  Inode: {st.ino}  Links: {st.nlink}")
        perms = f"{stat.filemode(st.mode)} ({st.mode & 0o7777:04o})"
        print(f"Access: {perms}  Uid: {st.uid}  Gid: {st.gid}")
        print(f"Modify: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.mtime_ns / 1e9))}")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    chunk = 8 * 1024 * 1024
    with _connect(args) as c, open(args.local, "rb") as src, c.open(args.remote, "wb") as dst:
        while block := src.read(chunk):
            dst.write(block)
        dst.fsync()
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    chunk = 8 * 1024 * 1024
    with _connect(args) as c, c.open(args.remote, "rb") as src, open(args.local, "wb") as dst:
        while block := src.read(chunk):
            dst.write(block)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        for path in args.paths:
            if args.recursive and c.stat(path).is_dir:
                _rmtree(c, path)
            else:
                c.unlink(path)
    return 0


def _rmtree(c, path: str) -> None:  # type: ignore[no-untyped-def]
    for name, st in c.scandir(path):
        child = path.rstrip("/") + "/" + name
        if st.is_dir:
            _rmtree(c, child)
        else:
            c.unlink(child)
    c.rmdir(path)


def cmd_mkdir(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        for path in args.paths:
            c.mkdir(path)
    return 0


def cmd_extents(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        exts = c.extents(args.path)
        print(f"{'file_offset':>14} {'region_offset':>14} {'length':>12}")
        for e in exts:
            print(f"{e.file_offset:14d} {e.region_offset:14d} {e.length:12d}")
        print(f"{len(exts)} extent(s)")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        sessions = [s for s in c.sessions() if s.client_id != c.client_id]  # not our own
        width = max([len("credential"), *(len(s.credential or "-") for s in sessions)])
        print(
            f"{'client_id':>20} {'stream':>6} {'idle_s':>8} {'recalls':>7}  "
            f"{'credential':<{width}}  name"
        )
        for s in sessions:
            print(
                f"{s.client_id:20d} {'yes' if s.attached else 'no':>6} "
                f"{s.idle_ns / 1e9:8.1f} {s.unacknowledged_recalls:7d}  "
                f"{s.credential or '-':<{width}}  {s.name}"
            )
    return 0


def cmd_evict(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        c.evict(args.client_id)
    print(f"evicted session {args.client_id}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server's gRPC health service says SERVING (for container healthchecks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from daxfs.client.rpc import Connection

    address = normalize_address(args.addr)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            # TLS (and a client certificate) as for every other verb; no token needed.
            conn = Connection(
                address, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key
            )
            try:
                reply = health_pb2_grpc.HealthStub(conn.channel).Check(
                    health_pb2.HealthCheckRequest(service="daxfs.v1.Daxfs"), timeout=5
                )
            finally:
                conn.close()
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                print("SERVING")
                return 0
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            status = f"unreachable ({exc.code().name})"
        if time.monotonic() >= deadline:
            print(f"daxfs server at {address}: {status}", file=sys.stderr)
            return 1
        time.sleep(0.2)


def register(sub: Subcommands) -> None:
    """Add the verbs that take a server address."""

    def client_verb(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_)
        q.add_argument("addr", metavar="ADDR", help="unix:/path or host:port")
        q.add_argument(
            "--region", help="where this host sees the region (default: as the server says)"
        )
        q.add_argument("--token-file", help="the server's token (default: $DAXFS_TOKEN_FILE)")
        q.add_argument("--tls-ca", help="PEM roots to verify a TLS server (default: $DAXFS_TLS_CA)")
        q.add_argument(
            "--tls-cert",
            help="PEM client certificate, for --tls-client-ca servers ($DAXFS_TLS_CERT)",
        )
        q.add_argument("--tls-key", help="its PEM private key (default: $DAXFS_TLS_KEY)")
        q.set_defaults(fn=fn)
        return q

    client_verb("ls", cmd_ls, "list a directory").add_argument("path", nargs="?", default="/")
    client_verb("stat", cmd_stat, "show a file's attributes").add_argument("path")
    q = client_verb("put", cmd_put, "copy a local file in")
    q.add_argument("local")
    q.add_argument("remote")
    q = client_verb("get", cmd_get, "copy a file out")
    q.add_argument("remote")
    q.add_argument("local")
    q = client_verb("rm", cmd_rm, "remove files")
    q.add_argument("-r", "--recursive", action="store_true")
    q.add_argument("paths", nargs="+")
    client_verb("mkdir", cmd_mkdir, "make directories").add_argument("paths", nargs="+")
    client_verb("extents", cmd_extents, "show a file's extent map").add_argument("path")
    client_verb("sessions", cmd_sessions, "list client sessions (root)")
    q = client_verb(
        "evict", cmd_evict, "declare a session gone: its files close, what it held is freed"
    )
    q.add_argument("client_id", type=int, help="as `daxfs sessions` lists it")
    q = sub.add_parser("health", help="exit 0 when the server is SERVING")
    q.add_argument("addr", metavar="ADDR")
    q.add_argument("--wait", type=float, default=0.0, help="keep trying for this many seconds")
    q.add_argument("--tls-ca", help="PEM roots to verify a TLS server (default: $DAXFS_TLS_CA)")
    q.add_argument("--tls-cert", help="PEM client certificate ($DAXFS_TLS_CERT)")
    q.add_argument("--tls-key", help="its PEM private key ($DAXFS_TLS_KEY)")
    q.set_defaults(fn=cmd_health)
