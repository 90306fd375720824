"""The ``daxfs`` command: server, mkfs, fsck, inspection verbs, mount and umount.

Every verb is ``main([...])`` first, so tests call it in-process. User mistakes
and daxfs errors print one line on stderr and exit non-zero, with no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence

from daxfs.shared.errors import DaxfsError
from daxfs.shared.format import DEFAULT_BLOCK_SIZE, GIB, parse_size
from daxfs.shared.region import DEFAULT_REGION_PATH

log = logging.getLogger("daxfs")

DEFAULT_FRESH_SIZE = 1 * GIB


class QuietError(Exception):
    """A user mistake: print the message, exit with ``exit_code``, no traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class KeyValueFormatter(logging.Formatter):
    """Structured, greppable log lines: ts=... level=... logger=... msg=..."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        line = (
            f"ts={ts}.{int(record.msecs):03d} level={record.levelname.lower()} "
            f"logger={record.name} msg={record.getMessage()!r}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _MalformedRequestFilter(logging.Filter):
    """grpc logs a traceback for every request it cannot parse: one line is enough.

    Anyone can send garbage to the socket; a traceback per attempt would drown
    the log and suggest a bug in daxfs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "grpc._common" and "deserializ" in record.getMessage():
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed request refused (not a valid message)", ()
        return True


def setup_logging(debug: bool, default: int = logging.WARNING) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    handler.addFilter(_MalformedRequestFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else default)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _block_size(text: str) -> int:
    value = _size(text)
    if value not in (4096, 2 * 1024 * 1024):
        raise argparse.ArgumentTypeError("block size must be 4K or 2M")
    return value


def normalize_address(addr: str) -> str:
    """``unix:/path``, ``host:port``, or a bare socket path."""
    if addr.startswith("/"):
        return "unix:" + addr
    if addr.startswith("unix:") or ":" in addr:
        return addr
    raise QuietError(f"bad address {addr!r}: use unix:/path/to.sock or host:port")


def _volume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", default=DEFAULT_REGION_PATH, help="region file or /dev/dax device")
    p.add_argument("--meta", help="metadata file (default: REGION.meta)")


def _meta_path(args: argparse.Namespace) -> str:
    from daxfs.server.volume import default_meta_path

    return str(args.meta or default_meta_path(args.region))


# -- verbs -----------------------------------------------------------------


def cmd_server(args: argparse.Namespace) -> int:
    from daxfs.server.daemon import DEFAULT_LISTEN, ServerConfig, serve

    meta = _meta_path(args)
    fresh = not os.path.exists(args.region) and not os.path.exists(meta)
    do_format = bool(args.format)
    size = args.size
    if fresh and not do_format:
        # Nothing exists yet: creating is not reformatting.
        do_format = True
        size = size or DEFAULT_FRESH_SIZE
        log.info("no region at %s: creating one of %d bytes", args.region, size)
    if do_format and size is None and not os.path.exists(args.region):
        raise QuietError("--format needs --size for a new region file")
    config = ServerConfig(
        region=args.region,
        meta=meta,
        listen=normalize_address(args.listen or DEFAULT_LISTEN),
        size=size,
        block_size=args.block_size,
        format=do_format,
        socket_mode=int(args.socket_mode, 8),
        announce_region=args.announce_region,
        lease_ns=None if args.lease_seconds is None else int(args.lease_seconds * 1e9),
        token=_server_token(args.token_file),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        socket_group=args.socket_group,
    )
    return serve(config)


def _server_token(path: str | None) -> str | None:
    if path is None:
        return None
    from daxfs.server.auth import read_token

    try:
        return read_token(path)
    except (OSError, ValueError) as exc:
        raise QuietError(f"--token-file: {exc}", 1) from None


def cmd_mkfs(args: argparse.Namespace) -> int:
    from daxfs.server.volume import format_volume
    from daxfs.shared.region import read_superblock

    meta = _meta_path(args)
    if os.path.exists(args.region) and not args.force:
        try:
            sb = read_superblock(args.region)
        except (OSError, DaxfsError):
            pass
        else:
            raise QuietError(
                f"{args.region} already holds daxfs region {sb.uuid_str}; pass --force to erase it",
                1,
            )
    is_dev = os.path.exists(args.region) and stat.S_ISCHR(os.stat(args.region).st_mode)
    if args.size is None and not is_dev:
        raise QuietError("mkfs of a file region needs --size (e.g. --size 1G)")
    format_volume(args.region, meta, args.size, args.block_size)
    print(f"formatted {args.region} (metadata {meta})")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    from daxfs.server.fsck import fsck

    report = fsck(args.region, _meta_path(args), repair=args.repair)
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.found:
        print(f"PROBLEM: {problem}")
    for action in report.repairs:
        print(f"REPAIRED: {action}")
    if args.repair:
        for problem in report.problems:
            print(f"NOT REPAIRED: {problem}")
    summary = (
        f"{report.files} inodes, used {report.used_bytes} B, free {report.free_bytes} B, "
        f"quarantined {report.quarantined_bytes} B"
    )
    if report.clean:
        print(f"clean{' after repair' if report.repairs else ''}: {summary}")
        return 0
    hint = "" if args.repair else "; `daxfs fsck --repair` fixes what it safely can"
    print(f"{len(report.problems)} problem(s){hint}: {summary}")
    return 1


def _connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from daxfs.client import connect

    return connect(
        normalize_address(args.addr),
        region_path=args.region,
        token_file=args.token_file,
        tls_ca=args.tls_ca,
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


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server's gRPC health service says SERVING (for container healthchecks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = normalize_address(args.addr)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="daxfs.v1.Daxfs"), timeout=5
                )
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daxfs", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="verbose daxfs logs")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("server", help="run the host server")
    _volume_args(p)
    p.add_argument("--size", type=_size, help="region size for a new region (e.g. 1G)")
    p.add_argument("--listen", help="unix:/path (default unix:/run/daxfs/daxfs.sock) or host:port")
    p.add_argument("--block-size", type=_block_size, default=DEFAULT_BLOCK_SIZE)
    p.add_argument("--format", action="store_true", help="erase and format the region first")
    p.add_argument("--socket-mode", default="600", help="octal mode of the unix socket")
    p.add_argument("--announce-region", help="region path to tell clients (default: --region)")
    p.add_argument("--token-file", help="clients must send this file's token (>= 16 chars)")
    p.add_argument("--tls-cert", help="PEM certificate chain for TCP listening")
    p.add_argument("--tls-key", help="PEM private key for TCP listening")
    p.add_argument("--socket-group", help="group allowed to use the unix socket (mode 0660)")
    p.add_argument(
        "--lease-seconds",
        type=float,
        help="layout lease duration (default 30); a dead guest's extents return after it",
    )
    p.set_defaults(fn=cmd_server, log_default=logging.INFO)

    p = sub.add_parser("mkfs", help="format a region and a fresh metadata file")
    _volume_args(p)
    p.add_argument("--size", type=_size)
    p.add_argument("--block-size", type=_block_size, default=DEFAULT_BLOCK_SIZE)
    p.add_argument("--force", action="store_true", help="erase an existing daxfs region")
    p.set_defaults(fn=cmd_mkfs)

    p = sub.add_parser("fsck", help="check a volume offline")
    _volume_args(p)
    p.add_argument(
        "--repair",
        action="store_true",
        help="fix what can be fixed safely and say what was done (never with a server running)",
    )
    p.set_defaults(fn=cmd_fsck)

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
    q = sub.add_parser("health", help="exit 0 when the server is SERVING")
    q.add_argument("addr", metavar="ADDR")
    q.add_argument("--wait", type=float, default=0.0, help="keep trying for this many seconds")
    q.set_defaults(fn=cmd_health)

    _add_optional_verbs(sub)
    return parser


def _add_optional_verbs(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Verbs that live in their own modules (mount, bench) register themselves here."""
    import importlib

    for module in ("daxfs.client.mount", "daxfs.bench"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register_cli(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.debug, getattr(args, "log_default", logging.WARNING))
    try:
        return int(args.fn(args))
    except QuietError as exc:
        print(f"daxfs: {exc}", file=sys.stderr)
        return exc.exit_code
    except DaxfsError as exc:
        print(f"daxfs {args.verb}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"daxfs {args.verb}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


_VALUE_FLAGS = ("--size", "--meta", "--block-size", "--region")


def _unix_style(verb: str, argv: Sequence[str] | None) -> int:
    """``mkfs.daxfs [options] REGION`` and ``fsck.daxfs [options] REGION``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[-1].startswith("-") and (len(args) == 1 or args[-2] not in _VALUE_FLAGS):
        args = [*args[:-1], "--region", args[-1]]
    return main([verb, *args])


def mkfs_main(argv: Sequence[str] | None = None) -> int:
    return _unix_style("mkfs", argv)


def fsck_main(argv: Sequence[str] | None = None) -> int:
    return _unix_style("fsck", argv)
