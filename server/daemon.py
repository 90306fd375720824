"""The server process: open the volume, serve gRPC (and, on a unix socket, the
frame socket beside it), sweep leases, stop cleanly on a signal.

``create_server`` is separate from ``serve`` so that tests can bind a temporary
socket or port 0 and drive a real server in-process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import shutil
import signal
import socket
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from daxfs.proto import daxfs_pb2_grpc as pb_grpc
from daxfs.server.auth import Keyring, TokenAuthInterceptor
from daxfs.server.frames import FrameServer
from daxfs.server.leases import DEFAULT_MAX_SESSIONS
from daxfs.server.namespace import Namespace
from daxfs.server.peercred import PeerRelay, PeerTable, private_socket_dir
from daxfs.server.service import SERVICE_NAME, DaxfsServicer
from daxfs.server.volume import (
    VolumeLock,
    close_volume,
    format_volume,
    open_volume,
    repair_advice,
)
from daxfs.shared.address import unix_path
from daxfs.shared.errors import InvalidArgument, VolumeFailed
from daxfs.shared.format import DEFAULT_BLOCK_SIZE
from daxfs.shared.framing import frame_path
from daxfs.shared.hugepages import HUGE_PAGE, measured_page_size
from daxfs.shared.limits import MAX_MESSAGE

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "unix:/run/daxfs/daxfs.sock"
SWEEP_INTERVAL_S = 1.0
#: A stop still going after this long dumps every thread's stack into the log.
STOP_DIAGNOSIS_S = 15.0
#: How often the main thread looks up from waiting for a stop (see _serve_locked).
STOP_POLL_S = 0.5
#: Streams allowed beyond max_sessions: a client replacing its stream holds two briefly.
STREAM_HEADROOM = 16


@dataclass(frozen=True, slots=True)
class ServerConfig:
    region: str
    meta: str
    listen: str = DEFAULT_LISTEN
    size: int | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    format: bool = False
    socket_mode: int = 0o600
    workers: int = 64
    #: Region path announced to clients, if they see it elsewhere than the server does.
    announce_region: str | None = None
    #: Layout lease duration in ns (None: leases.DEFAULT_LEASE_NS).
    lease_ns: int | None = None
    #: Credentials clients must present (--token-file); None accepts everyone who
    #: can reach the socket, as trusted.
    keyring: Keyring | None = None
    #: TLS for TCP listening: PEM certificate chain and private key files.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: PEM roots that sign guests' client certificates: with it TLS requires and
    #: verifies one on every connection; ``cert:CN`` credentials name them.
    tls_client_ca: str | None = None
    #: Group (name or gid) that may use the unix socket; its mode becomes 0660.
    socket_group: str | None = None
    #: Sessions accepted at once; each attached session stream holds a thread.
    max_sessions: int = DEFAULT_MAX_SESSIONS
    #: Listen on TCP without TLS (the operator says the network is private).
    insecure: bool = False
    #: On the unix socket, a non-root peer acts as its own uid (SO_PEERCRED relay).
    #: None: whenever others than the server's own user may open the socket
    #: (see :func:`peer_credentials_for`).
    peer_credentials: bool | None = None
    #: Beside a unix socket, serve the unary calls on ``PATH.frames`` too
    #: (server/frames.py); ``--no-frames`` leaves clients on gRPC alone.
    frames: bool = True


class RunningServer:
    """The gRPC server and, beside a unix socket, its frame server: stopped together."""

    def __init__(
        self, grpc_server: grpc.Server, frames: FrameServer | None, private_dir: str | None
    ) -> None:
        self.grpc = grpc_server
        self.frames = frames
        #: gRPC's private socket directory behind the peer relay (removed at stop).
        self.private_dir = private_dir

    def stop(self, grace: float | None) -> threading.Event:
        """Refuse new calls on both sockets; calls in progress get ``grace`` seconds."""
        done: threading.Event = self.grpc.stop(grace)
        if self.frames is not None:
            self.frames.stop(grace)
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        return done


def create_server(
    ns: Namespace,
    listen: str,
    *,
    region_path: str,
    workers: int = 64,
    socket_mode: int = 0o600,
    keyring: Keyring | None = None,
    tls: tuple[bytes, bytes] | None = None,
    tls_client_ca: bytes | None = None,
    socket_gid: int | None = None,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    peer_credentials: bool = False,
    frames: bool = True,
) -> tuple[RunningServer, str, DaxfsServicer]:
    """Build and start a server; returns it, the address it answers on, and the servicer.

    A unix socket is bound under a temporary name and renamed into place after
    the server has started, so the path appears only once it can answer.

    A sync gRPC server runs every call, session streams included, on one thread
    pool. Streams are long-lived, so the pool holds ``workers`` threads for
    ordinary calls *plus* one per possible stream, and the servicer refuses
    streams beyond ``max_sessions`` (RESOURCE_EXHAUSTED): health and ordinary
    calls never wait behind sessions. Threads are created on demand.

    ``tls_client_ca`` (PEM roots, TCP with ``tls`` only) makes TLS require a
    client certificate they signed on every connection.

    ``peer_credentials`` (unix socket only) puts a relay on the public socket
    that tells the servicer which process each connection comes from
    (server/peercred.py); gRPC itself listens in a private 0700 directory.

    ``frames`` (unix socket only) serves the unary calls on ``PATH.frames`` as
    well (server/frames.py), with the same mode, group and peer rule; it
    appears before the gRPC socket does.
    """
    max_streams = max_sessions + STREAM_HEADROOM
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=workers + max_streams, thread_name_prefix="daxfs-rpc"
        ),
        interceptors=[TokenAuthInterceptor(keyring)] if keyring and keyring.required else [],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    path = unix_path(listen)
    frame_server: FrameServer | None = None
    private_dir: str | None = None
    peers = PeerTable() if peer_credentials and path is not None else None
    servicer = DaxfsServicer(
        ns, region_path=region_path, max_streams=max_streams, keyring=keyring, peers=peers
    )
    pb_grpc.add_DaxfsServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(servicer.health, server)
    _enable_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
    if path is not None:
        if not path:
            raise InvalidArgument(f"empty unix socket path in {listen!r}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)
        if peers is None:
            server.add_insecure_port(f"unix:{tmp}")
            server.start()
        else:
            private_dir = private_socket_dir(path)
            private = os.path.join(private_dir, "grpc.sock")
            server.add_insecure_port(f"unix:{private}")
            server.start()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(tmp)
            listener.listen(128)
            PeerRelay(listener, private, peers).start()
        if socket_gid is not None:
            socket_mode |= 0o060
        if frames:
            frame_server = _frame_server(path, servicer, socket_mode, socket_gid)
        _publish(tmp, path, socket_mode, socket_gid)
        address = f"unix:{path}"
    else:
        if tls is not None:
            # grpc-python can require a client certificate or not ask for one;
            # it cannot merely ask (auth.py says what that means for guests).
            creds = grpc.ssl_server_credentials(
                [(tls[1], tls[0])],
                root_certificates=tls_client_ca,
                require_client_auth=tls_client_ca is not None,
            )
            port = server.add_secure_port(listen, creds)
        else:
            port = server.add_insecure_port(listen)
        if port == 0:
            raise InvalidArgument(f"cannot listen on {listen!r}")
        server.start()
        host = listen.rsplit(":", 1)[0]
        address = f"{host}:{port}"
    for name in ("", SERVICE_NAME):
        servicer.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, frame_server, private_dir), address, servicer


def _publish(tmp: str, path: str, mode: int, gid: int | None) -> None:
    """Give the socket bound at ``tmp`` its mode and group, then its name."""
    if gid is not None:
        os.chown(tmp, -1, gid)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _frame_server(path: str, servicer: DaxfsServicer, mode: int, gid: int | None) -> FrameServer:
    """Listen on ``PATH.frames`` (server/frames.py), before the gRPC socket appears."""
    public = frame_path(path)
    tmp = f"{public}.{os.getpid()}.tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(tmp)
    listener.listen(128)
    frame_server = FrameServer(listener, servicer, servicer.keyring, servicer.peers)
    frame_server.start()
    _publish(tmp, public, mode, gid)
    return frame_server


#: grpc.reflection.v1 (what grpcurl and most tools ask for first); grpcio-reflection
#: ships only v1alpha, whose messages are the same on the wire.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(server: grpc.Server, services: tuple[str, ...]) -> None:
    """Serve reflection under both names, listing both."""
    names = (*services, reflection.SERVICE_NAME, REFLECTION_V1)
    servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": method}),)
    )


def socket_is_shared(config: ServerConfig) -> bool:
    """Whether users other than the server's own may open its unix socket."""
    return config.socket_group is not None or bool(config.socket_mode & 0o077)


def peer_credentials_for(config: ServerConfig) -> bool:
    """Whether the unix socket gets the SO_PEERCRED relay.

    By default exactly when the socket is shared (``--socket-group`` or a mode
    with group or other bits): then a process that is not root must not act as
    root by saying so. A 0600 socket is open only to the server's own user,
    which owns the region and the metadata anyway, so the relay's copy would
    buy nothing there.
    """
    if unix_path(config.listen) is None:
        return False
    if config.peer_credentials is None:
        return socket_is_shared(config)
    return config.peer_credentials


def check_transport(config: ServerConfig) -> None:
    """Refuse plain TCP, or TCP without credentials, unless the operator said
    --insecure; say why.

    Also refuse certificate credentials that nothing would verify.
    """
    plain = config.tls_cert is None and config.tls_key is None
    if config.keyring is not None and config.keyring.certificates and not config.tls_client_ca:
        raise InvalidArgument(
            "the token file names client certificates (cert:CN) but the server verifies none: "
            "pass --tls-client-ca with the CA that signs them (and TCP with --tls-cert, --tls-key)"
        )
    if config.tls_client_ca is not None and (plain or unix_path(config.listen) is not None):
        raise InvalidArgument(
            "--tls-client-ca applies to TLS on TCP: pass --tls-cert and --tls-key and a host:port"
        )
    if (
        unix_path(config.listen) is not None
        and config.peer_credentials is False
        and socket_is_shared(config)
    ):
        log.warning(
            "--no-peer-credentials on a socket others may open: every process that can "
            "open it acts as whatever uid it claims%s",
            " (its credential's policy still applies)" if config.keyring else ", root included",
        )
    if unix_path(config.listen) is None and config.peer_credentials:
        raise InvalidArgument("--peer-credentials applies to a unix socket (--listen unix:PATH)")
    if unix_path(config.listen) is not None:
        return
    if not plain:
        if config.keyring is None and not config.insecure:
            raise InvalidArgument(
                f"refusing to listen on {config.listen} without --token-file: anyone who "
                "reaches the port would act as any uid, root included. Pass --token-file "
                "(tokens, or cert:CN lines with --tls-client-ca), or --insecure if everyone "
                "who can reach the port may be root"
            )
        return
    if not config.insecure:
        raise InvalidArgument(
            f"refusing to listen on {config.listen} without TLS: tokens and every file's "
            "metadata would cross the network in clear"
            + (
                ""
                if config.keyring
                else ", and without --token-file anyone who reaches the "
                "port acts as any uid, root included"
            )
            + ". Pass --tls-cert and --tls-key, or --insecure if the network is private"
        )
    log.warning(
        "listening on %s without TLS (--insecure)%s",
        config.listen,
        "" if config.keyring else " and without a token: anyone who reaches it is root",
    )


def _read_tls(config: ServerConfig) -> tuple[bytes, bytes] | None:
    """(certificate chain, private key) PEM bytes, or None for plaintext."""
    if config.tls_cert is None and config.tls_key is None:
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
    if unix_path(config.listen) is not None:
        raise InvalidArgument(
            "TLS applies to TCP listening; a unix socket is protected by its mode"
        )
    with open(config.tls_cert, "rb") as c, open(config.tls_key, "rb") as k:
        return c.read(), k.read()


def _read_client_ca(config: ServerConfig) -> bytes | None:
    if config.tls_client_ca is None:
        return None
    with open(config.tls_client_ca, "rb") as f:
        return f.read()


def _group_id(group: str | None) -> int | None:
    if group is None:
        return None
    import grp

    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise InvalidArgument(f"no such group: {group}") from None


def _sweeper(servicer: DaxfsServicer, stop: threading.Event, region_path: str) -> None:
    """Every second: probe the region, then drop dead sessions and free due quarantine.

    It stops for good, with the one error line ``DaxfsServicer.fail`` logs, once
    the volume failed: nothing of a failed volume is swept.
    """
    core = servicer.core
    while not stop.wait(SWEEP_INTERVAL_S):
        problem = core.region.check()
        if problem:
            servicer.fail(f"region {core.region.path} was {problem}")
            return
        damage = core.region.check_superblock()
        if damage:
            # Whatever wrote block 0 may have written elsewhere: stop serving,
            # and say how to get the volume back without losing a file.
            servicer.fail(
                f"superblock damaged: region {region_path}: {damage}",
                "To recover: " + repair_advice(region_path, core.meta.path),
            )
            return
        try:
            released = servicer.ns.sweep()
        except VolumeFailed as exc:
            servicer.fail(str(exc))
            return
        except Exception:
            log.exception("lease sweep failed")
            continue
        if released:
            log.info("quarantine released bytes=%d", released)


def serve(config: ServerConfig, *, ready: threading.Event | None = None) -> int:
    """Run until SIGTERM or SIGINT; returns the exit status."""
    check_transport(config)
    with VolumeLock(config.meta, "a server"):
        return _serve_locked(config, ready)


def _serve_locked(config: ServerConfig, ready: threading.Event | None) -> int:
    if config.format:
        format_volume(config.region, config.meta, config.size, config.block_size)
    ns = open_volume(
        config.region,
        config.meta,
        size=config.size,
        lease_ns=config.lease_ns,
        max_sessions=config.max_sessions,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    # Before the socket appears: a SIGTERM sent as soon as it exists must stop
    # the server cleanly, not kill it with the default action.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # `kill -USR1 PID`: every thread's stack to stderr (the log), for a server
        # that hangs; it keeps running.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        server, address, servicer = create_server(
            ns,
            config.listen,
            region_path=config.announce_region or os.path.abspath(config.region),
            workers=config.workers,
            socket_mode=config.socket_mode,
            keyring=config.keyring,
            tls=_read_tls(config),
            tls_client_ca=_read_client_ca(config),
            socket_gid=_group_id(config.socket_group),
            max_sessions=config.max_sessions,
            peer_credentials=peer_credentials_for(config),
            frames=config.frames,
        )
    except BaseException:
        close_volume(ns)
        raise
    sweeper = threading.Thread(
        target=_sweeper,
        args=(servicer, stop, config.region),
        name="daxfs-sweep",
        daemon=True,
    )
    sweeper.start()

    sb = ns.region.superblock
    pages = measured_page_size(config.region)
    log.info(
        "serving address=%s region=%s uuid=%s size=%d block=%d flush=%s pages=%s",
        address,
        config.region,
        sb.uuid_str,
        sb.region_size,
        sb.block_size,
        ns.region.flush_mode,
        "2M" if pages >= HUGE_PAGE else "4K",
    )
    if pages < HUGE_PAGE:
        log.info("the region has 4 KiB pages; for 2 MiB pages see `daxfs server --huge`")
    elif sb.block_size < HUGE_PAGE:
        log.info("the region has 2 MiB pages, but 4 KiB blocks: views map 4 KiB pages")
    if ready is not None:
        ready.set()
    # In slices, not one wait: the kernel may deliver SIGTERM to any thread
    # (gRPC's, the frame socket's), and then Python runs the handler only when
    # the main thread next executes bytecode, which a wait without a timeout
    # never does. That was the rare "server did not stop on SIGTERM" (a stack
    # dump showed the main thread here, the handler never run).
    while not stop.wait(STOP_POLL_S):
        pass
    # A stop that takes longer than this is a bug: every thread's stack goes to
    # stderr (the log), and the stop goes on.
    faulthandler.dump_traceback_later(STOP_DIAGNOSIS_S)
    servicer.health.enter_graceful_shutdown()
    server.stop(grace=5).wait()
    sweeper.join()
    path = unix_path(config.listen)
    if path is not None:
        for name in (path, frame_path(path)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
    close_volume(ns, clean=not servicer.failed)
    faulthandler.cancel_dump_traceback_later()
    log.info("stopped")
    return 0
