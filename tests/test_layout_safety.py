"""The layout safety invariant, under faults, on real servers and real clients.

    A byte of a block that now belongs to file Y is never read or written
    through a layout, view, handle or copy that was granted for another file.

Each test is one of the ways issue 11 found to break it (server restart, a
recall overtaking a layout reply, a frozen guest, a recall lost while the
stream reconnects, guessed session ids, too many streams, session-less
clients), rerun against the protocol that closes it. fsck cannot see a breach
(the metadata stays consistent while bytes leak), so every test checks the
bytes themselves: the other file's digest, and what the stale holder sees.

Network faults come from a real gRPC proxy between one client and the server,
scripted to hold a reply or cut a stream; nothing of daxfs is mocked.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from daxfs.client import Client, connect, rpc
from daxfs.proto import daxfs_pb2 as pb
from daxfs.shared import errors
from daxfs.testing import (
    FaultyProxy,
    ServerProc,
    Volume,
    assert_fsck_clean,
    fuse_mount,
    start_server,
    wait_stopped,
    wait_until,
)

MIB = 1024 * 1024
LEASE_S = 1.5


def digest(c: Client, path: str) -> str:
    with c.open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_file(c: Client, path: str, data: bytes) -> None:
    with c.open(path, "wb") as f:
        f.write(data)


def blocks_of(c: Client, path: str) -> set[int]:
    out: set[int] = set()
    for e in c.extents(path):
        assert e.region_offset is not None
        out.update(range(e.region_offset, e.region_offset + e.length, 4096))
    return out


@pytest.fixture
def small_volume(workdir: Path) -> Volume:
    """A region small enough that a new file must reuse a freed file's blocks."""
    return Volume.create(workdir, size=16 * MIB)


@pytest.fixture
def leased(small_volume: Volume) -> Iterator[ServerProc]:
    srv = start_server(small_volume, "--lease-seconds", str(LEASE_S))
    try:
        yield srv
    finally:
        srv.stop()
        assert_fsck_clean(small_volume)


@pytest.fixture
def proxy(leased: ServerProc, proxy_to: Callable[[str], FaultyProxy]) -> FaultyProxy:
    """The proxy in front of the short-lease server (conftest's ``proxy`` fronts ``server``)."""
    return proxy_to(leased.address)


# -- 1. server restart ------------------------------------------------------------


@pytest.mark.client_log(
    "lease ends unrenewed", "session ended by the server", "session stream lost"
)
def test_after_a_server_restart_an_old_view_and_handle_never_reach_the_next_owner(
    small_volume: Volume,
) -> None:
    srv = start_server(small_volume, "--lease-seconds", str(LEASE_S))
    a = connect(srv.address, timeout=5)
    try:
        write_file(a, "/x", b"\x11" * (8 * MIB))
        old_blocks = blocks_of(a, "/x")
        f = a.open("/x", "r+b")
        view = f.array(np.uint8)
        assert view[0] == 0x11
        srv.kill()
        srv = start_server(small_volume, "--lease-seconds", str(LEASE_S))
        with connect(srv.address) as b:
            b.unlink("/x")
            # The restart grace keeps /x's blocks from reuse for a lease; a file
            # needing them waits for space rather than taking them early.
            wait_until(lambda: a.session is not None and a.session.sessions_lost, "ESTALE")
            deadline = time.monotonic() + 30
            while True:
                try:
                    write_file(b, "/y", b"\xee" * (8 * MIB))
                    break
                except errors.NoSpace:
                    b.unlink("/y")
                    assert time.monotonic() < deadline, "the grace period never ended"
                    time.sleep(0.2)
            assert blocks_of(b, "/y") & old_blocks, "the test needs /y on /x's old blocks"
            want = digest(b, "/y")
            assert not np.any(view == 0xEE), "an old view shows the next owner's bytes"
            with pytest.raises(errors.StaleHandle):
                f.pread(4096, 0)
            with pytest.raises(errors.StaleHandle):
                f.pwrite(b"\x66" * MIB, 0)
            view[:] = 0x66  # stores into a fenced view go nowhere
            assert digest(b, "/y") == want
            # The client carries on with a new session.
            write_file(a, "/z", b"after")
            with a.open("/z", "rb") as g:
                assert g.read() == b"after"
            b.unlink("/z")
            b.unlink("/y")
        f.close()
    finally:
        a.close()
        srv.stop()
    assert_fsck_clean(small_volume)


def test_a_clean_stop_inside_a_restart_grace_leaves_the_grace_to_the_next_server(
    small_volume: Volume,
) -> None:
    """A crash, then a server that stops cleanly before its grace ended: the next one waits too.

    The second server held no lease of its own, but the first one's clients (a
    client frozen across both restarts, still mapping /x) may still use what it
    granted. Found by the simulation's soak (seed 3678637): the clean stop
    recorded "no lease left" and the third server freed /x's blocks at once.
    """
    srv = start_server(small_volume, "--lease-seconds", str(LEASE_S))
    with connect(srv.address) as a:
        write_file(a, "/x", b"\x11" * (8 * MIB))
    srv.kill()  # the first server's clients may still map /x for a lease
    srv = start_server(small_volume, "--lease-seconds", str(LEASE_S))
    assert srv.stop() == 0  # a clean stop, well inside its restart grace
    srv = start_server(small_volume, "--lease-seconds", str(LEASE_S))
    try:
        with connect(srv.address) as b:
            b.unlink("/x")
            assert b.stats().quarantined_bytes == 8 * MIB, "freed inside the grace"
    finally:
        srv.stop()
    assert_fsck_clean(small_volume)


@pytest.mark.fuse
def test_after_a_server_restart_an_open_fuse_file_fails_estale(
    small_volume: Volume, workdir: Path
) -> None:
    srv = start_server(small_volume, "--lease-seconds", str(LEASE_S))
    mnt = workdir / "mnt"
    try:
        with fuse_mount(srv.address, mnt, "--timeout", "5") as m:
            # The server restarts under the mount: the session's warnings are the point.
            m.allowed_log += ["session stream lost", "lease ends unrenewed", "session ended by"]
            (mnt / "x").write_bytes(b"\x11" * (8 * MIB))
            fd = os.open(mnt / "x", os.O_RDWR)
            try:
                assert os.pread(fd, 4, 0) == b"\x11" * 4
                srv.kill()
                srv = start_server(small_volume, "--lease-seconds", str(LEASE_S))
                with connect(srv.address) as b:
                    b.unlink("/x")
                    deadline = time.monotonic() + 30
                    while True:
                        try:
                            write_file(b, "/y", b"\xee" * (8 * MIB))
                            break
                        except errors.NoSpace:
                            b.unlink("/y")
                            assert time.monotonic() < deadline
                            time.sleep(0.2)
                    want = digest(b, "/y")
                    with pytest.raises(OSError) as read_err:
                        os.pread(fd, 4096, 0)
                    assert read_err.value.errno == errno.ESTALE
                    with pytest.raises(OSError) as write_err:
                        os.pwrite(fd, b"\x66" * MIB, 0)
                    assert write_err.value.errno == errno.ESTALE
                    assert digest(b, "/y") == want
                    # New opens on the same mount work.
                    assert (mnt / "y").read_bytes()[:4] == b"\xee" * 4
                    b.unlink("/y")
            finally:
                os.close(fd)
    finally:
        srv.stop()
    assert_fsck_clean(small_volume)


# -- 2. a recall overtakes the layout reply it conflicts with -------------------------


#: How a reader gets its first layout: from a GetLayout of its first read (a
#: handle open for writing too takes none with the open), or with the open
#: itself (OpenRequest.layout, which a read-only open asks for).
LAYOUT_SOURCES = {"GetLayout": "r+b", "Open": "rb"}


def held_read(
    a: Client, proxy: FaultyProxy, source: str, length: int
) -> tuple[threading.Thread, list[Any]]:
    """Open /x and read it in a thread, holding the reply that carries the first layout.

    Returns the thread and what it got: the bytes or the exception, then the file.
    """
    mode = LAYOUT_SOURCES[source]
    got: list[Any] = []
    f = a.open("/x", mode) if source == "GetLayout" else None
    proxy.hold_next(source)

    def read() -> None:
        g = f if f is not None else a.open("/x", mode)
        try:
            got.append(g.pread(length, 0))
        except BaseException as exc:  # reported by the test
            got.append(exc)
        got.append(g)

    reader = threading.Thread(target=read)
    reader.start()
    assert proxy.holding.wait(10), f"the reader sent no {source}"
    return reader, got


@pytest.mark.parametrize("source", sorted(LAYOUT_SOURCES))
def test_a_layout_reply_overtaken_by_its_recall_is_discarded(
    leased: ServerProc, proxy: FaultyProxy, source: str
) -> None:
    with connect(leased.address) as b, connect(proxy.address, timeout=10) as a:
        write_file(b, "/x", b"\x11" * (4 * MIB))
        old_blocks = blocks_of(b, "/x")
        reader, got = held_read(a, proxy, source, 4 * MIB)
        # The server granted /x's blocks; the reply is in flight. Free them and
        # give them to /y: the truncate recalls a's lease and a acknowledges
        # (it has nothing cached yet) before the reply arrives.
        free = b.statfs()
        b.truncate("/x", 0)
        # a's acknowledgement frees them (a loaded machine may deliver it after
        # the truncate returned: till then they wait in quarantine).
        wait_until(
            lambda: b.statfs().blocks_free >= free.blocks_free + 4 * MIB // free.block_size,
            "the recall's acknowledgement to free /x's blocks",
        )
        write_file(b, "/y", b"\xee" * (4 * MIB))
        assert blocks_of(b, "/y") & old_blocks, "the test needs /y on /x's old blocks"
        proxy.release_layout()
        reader.join(30)
        assert len(got) == 2 and not isinstance(got[0], BaseException), got
        assert b"\xee" not in got[0], "a read used a layout its recall had overtaken"
        if source == "Open":
            assert got[0] == b"", "the size came with the overtaken grant: learn it again"
        assert a.recalls >= 1
        got[1].close()
        b.unlink("/x")
        b.unlink("/y")


@pytest.mark.fuse
def test_through_fuse_a_layout_reply_overtaken_by_its_recall_is_discarded(
    leased: ServerProc, proxy: FaultyProxy, workdir: Path
) -> None:
    # A reader's open carries the whole file's layout (OpenRequest.layout), and
    # the mount uses it: the reply held is the Open's.
    mnt = workdir / "mnt"
    with connect(leased.address) as b, fuse_mount(proxy.address, mnt, "--timeout", "10"):
        write_file(b, "/x", b"\x11" * (4 * MIB))
        old_blocks = blocks_of(b, "/x")
        fds: list[int] = []
        try:
            proxy.hold_next("Open")
            got: list[bytes | BaseException] = []

            def read() -> None:
                try:
                    fds.append(os.open(mnt / "x", os.O_RDONLY))
                    got.append(os.pread(fds[0], 4 * MIB, 0))
                except BaseException as exc:  # reported below
                    got.append(exc)

            reader = threading.Thread(target=read)
            reader.start()
            assert proxy.holding.wait(10), "the open never reached the server"
            b.truncate("/x", 0)
            # Under load an acknowledgement can take longer than truncate waits.
            wait_until(lambda: b.stats().quarantined_bytes == 0, "/x's blocks to be free")
            write_file(b, "/y", b"\xee" * (4 * MIB))
            assert blocks_of(b, "/y") & old_blocks, "the test needs /y on /x's old blocks"
            proxy.release()
            reader.join(30)
            assert got, "the read never returned"
            # The read may fail or come back short (the file is empty now); it
            # must never carry the next owner's bytes.
            if not isinstance(got[0], BaseException):
                assert b"\xee" not in got[0], "a read used a layout its recall had overtaken"
            else:
                assert isinstance(got[0], OSError), got
        finally:
            for fd in fds:
                os.close(fd)
        b.unlink("/x")
        b.unlink("/y")


@pytest.mark.client_log("session ended by the server")
@pytest.mark.parametrize("source", sorted(LAYOUT_SOURCES))
def test_a_layout_reply_that_outlives_its_session_is_not_used(
    leased: ServerProc, proxy: FaultyProxy, source: str
) -> None:
    """Found while modelling the library for tests/test_protocol_sim.py."""
    with connect(leased.address) as b, connect(proxy.address, timeout=10) as a:
        write_file(b, "/x", b"\x11" * (4 * MIB))
        old_blocks = blocks_of(b, "/x")
        reader, got = held_read(a, proxy, source, 4 * MIB)
        # The reply is in flight when a's session ends (evicted here; a restart
        # does the same): /x's blocks go back without a recall and /y takes them.
        b.evict(a.client_id)
        wait_until(lambda: a.session is not None and a.session.sessions_lost > 0, "a new session")
        free = b.statfs()
        b.truncate("/x", 0)
        # a's acknowledgement frees them (a loaded machine may deliver it after
        # the truncate returned: till then they wait in quarantine).
        wait_until(
            lambda: b.statfs().blocks_free >= free.blocks_free + 4 * MIB // free.block_size,
            "the recall's acknowledgement to free /x's blocks",
        )
        write_file(b, "/y", b"\xee" * (4 * MIB))
        assert blocks_of(b, "/y") & old_blocks, "the test needs /y on /x's old blocks"
        proxy.release_layout()
        reader.join(30)
        assert len(got) == 2 and isinstance(got[0], errors.StaleHandle), got
        got[1].close()
        b.unlink("/x")
        b.unlink("/y")


# -- 3. a copy in flight when the guest is frozen --------------------------------------


def test_a_writer_frozen_mid_copy_never_lands_in_the_next_owners_blocks(
    leased: ServerProc,
) -> None:
    script = textwrap.dedent(
        f"""
        import numpy as np
        from daxfs.client import connect
        c = connect({leased.address!r})
        f = c.open("/x", "r+b")
        buf = np.full(8 * 1024 * 1024, 0x66, dtype=np.uint8)
        print("writing", flush=True)
        while True:
            try:
                f.pwrite(buf, 0)
            except OSError:
                pass
        """
    )
    with connect(leased.address) as b:
        write_file(b, "/x", b"\x11" * (8 * MIB))
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "writing"
            time.sleep(0.2)
            child.send_signal(signal.SIGSTOP)  # almost surely in the middle of a copy
            wait_stopped(child.pid)
            b.unlink("/x")  # the child still has it open: freed at its last close
            time.sleep(3 * LEASE_S)  # the frozen guest's lease is long over
            # Whatever /y gets, it must not be blocks the frozen writer may still hit.
            try:
                write_file(b, "/y", b"\xee" * (8 * MIB))
            except errors.NoSpace:
                b.unlink("/y")
                write_file(b, "/y", b"\xee" * (4 * MIB))
            want = digest(b, "/y")
            child.send_signal(signal.SIGCONT)
            time.sleep(1.0)  # the resumed copy finishes, then the loop meets ESTALE
            assert digest(b, "/y") == want, "a frozen writer's copy landed in another file"
        finally:
            child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()
        wait_until(lambda: b.stats().open_files == 0, "the killed child's files to close")
        b.unlink("/y")


@pytest.mark.fuse
def test_through_fuse_a_writer_frozen_with_its_mount_never_lands_in_the_next_owners_blocks(
    leased: ServerProc, workdir: Path
) -> None:
    """The guest freezes whole (a paused VM): the writing program and its mount."""
    mnt = workdir / "mnt"
    script = textwrap.dedent(
        f"""
        import os
        fd = os.open({str(mnt / "x")!r}, os.O_RDWR)
        buf = b"\\x66" * (8 * 1024 * 1024)
        print("writing", flush=True)
        while True:
            try:
                os.pwrite(fd, buf, 0)
            except OSError:
                pass
        """
    )
    with connect(leased.address) as b, fuse_mount(leased.address, mnt, "--timeout", "10") as m:
        # Frozen past its lease, the mount finds its session over when it thaws.
        m.allowed_log += ["session stream lost", "lease ends unrenewed", "session ended by"]
        write_file(b, "/x", b"\x11" * (8 * MIB))
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "writing"
            time.sleep(0.2)
            m.proc.send_signal(signal.SIGSTOP)  # the mount, almost surely mid-copy
            child.send_signal(signal.SIGSTOP)
            wait_stopped(m.proc.pid)
            b.unlink("/x")  # still open on the mount: freed at its last close
            time.sleep(3 * LEASE_S)  # the frozen guest's lease is long over
            try:
                write_file(b, "/y", b"\xee" * (8 * MIB))
            except errors.NoSpace:
                b.unlink("/y")
                write_file(b, "/y", b"\xee" * (4 * MIB))
            want = digest(b, "/y")
            m.proc.send_signal(signal.SIGCONT)
            child.send_signal(signal.SIGCONT)
            time.sleep(1.0)  # the resumed copy finishes, then the writes fail
            assert digest(b, "/y") == want, "a frozen mount's copy landed in another file"
        finally:
            m.proc.send_signal(signal.SIGCONT)
            child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()
        wait_until(lambda: b.stats().open_files == 0, "the mount to close /x")
        b.unlink("/y")


# -- 4. a recall sent while the stream reconnects -----------------------------------


# Under load the stream can stay down past the lease: the client then fences itself.
@pytest.mark.client_log("session stream lost", "lease ends unrenewed")
def test_a_recall_sent_while_the_stream_is_down_is_delivered_on_reattach(
    leased: ServerProc, proxy: FaultyProxy
) -> None:
    with connect(leased.address) as b, connect(proxy.address, timeout=10) as a:
        write_file(b, "/x", b"\x11" * (4 * MIB))
        old_blocks = blocks_of(b, "/x")
        f = a.open("/x", "rb")
        assert f.pread(4, 0) == b"\x11" * 4  # a caches /x's layout
        proxy.link_down = True
        proxy.cut_streams()
        wait_until(lambda: b.stats().sessions == 1, "a's stream to drop")
        b.truncate("/x", 0)  # the recall for a cannot be delivered now
        assert b.stats().pending_recalls == 1
        proxy.link_down = False  # a reattaches within its lease
        wait_until(lambda: a.recalls == 1, "the recall re-sent on reattach")
        wait_until(lambda: b.stats().quarantined_bytes == 0, "a's acknowledgement")
        write_file(b, "/y", b"\xee" * (4 * MIB))
        assert blocks_of(b, "/y") & old_blocks, "the test needs /y on /x's old blocks"
        time.sleep(2 * LEASE_S)  # renewals go on; the recalled layout must not come back
        data = f.pread(4 * MIB, 0)
        assert b"\xee" not in data
        f.close()
        b.unlink("/x")
        b.unlink("/y")


@pytest.mark.fuse
def test_through_fuse_a_recall_sent_while_the_stream_is_down_is_delivered_on_reattach(
    leased: ServerProc, proxy: FaultyProxy, workdir: Path
) -> None:
    mnt = workdir / "mnt"
    with connect(leased.address) as b, fuse_mount(proxy.address, mnt, "--timeout", "10") as m:
        m.allowed_log.append("session stream lost")  # the proxy cuts it: the point
        write_file(b, "/x", b"\x11" * (4 * MIB))
        old_blocks = blocks_of(b, "/x")
        fd = os.open(mnt / "x", os.O_RDONLY)
        try:
            assert os.pread(fd, 4, 0) == b"\x11" * 4  # the mount caches /x's layout
            proxy.link_down = True
            proxy.cut_streams()
            wait_until(lambda: b.stats().sessions == 1, "the mount's stream to drop")
            b.truncate("/x", 0)  # the recall for the mount cannot be delivered now
            assert b.stats().pending_recalls == 1
            proxy.link_down = False  # the mount reattaches within its lease
            wait_until(lambda: b.stats().quarantined_bytes == 0, "the mount's acknowledgement")
            write_file(b, "/y", b"\xee" * (4 * MIB))
            assert blocks_of(b, "/y") & old_blocks, "the test needs /y on /x's old blocks"
            time.sleep(2 * LEASE_S)  # renewals go on; the recalled layout must not come back
            assert b"\xee" not in os.pread(fd, 4 * MIB, 0)
        finally:
            os.close(fd)
        b.unlink("/x")
        b.unlink("/y")


# -- 5. sessions are capabilities -----------------------------------------------------


def test_session_ids_cannot_be_guessed_or_used_by_another_client(leased: ServerProc) -> None:
    with connect(leased.address) as a, connect(leased.address) as c:
        write_file(a, "/x", b"\x11" * MIB)
        f = a.open("/x", "rb")
        view = f.array(np.uint8)
        assert abs(a.client_id - c.client_id) > 1 << 20, "ids look sequential"
        guesses = [c.client_id + d for d in range(-50, 51) if d] + [1, 2, 3]
        for guess in guesses:
            me = pb.Caller(client_id=guess)
            # The wire, not the library's recovery.
            with pytest.raises(errors.StaleHandle):
                c.conn.call(rpc.GOODBYE, pb.GoodbyeRequest(caller=me))
            with pytest.raises(errors.StaleHandle):
                c.conn.call(rpc.RELEASE, pb.ReleaseRequest(caller=me, handle=f.handle))
            with pytest.raises(errors.StaleHandle):
                c.conn.call(rpc.GET_ATTR, pb.GetAttrRequest(caller=me, path="/x"))
        # A guessed id cannot attach a stream or acknowledge recalls either.
        with grpc.insecure_channel(leased.address) as ch:
            stub = ch.stream_stream(
                "/daxfs.v1.Daxfs/Session",
                request_serializer=pb.SessionRequest.SerializeToString,
                response_deserializer=pb.SessionEvent.FromString,
            )
            call = stub(iter([pb.SessionRequest(caller=pb.Caller(client_id=c.client_id + 1))]))
            with pytest.raises(grpc.RpcError) as info:
                next(iter(call))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # a was never disturbed: its file and view still work, and are recalled properly.
        assert f.pread(4, 0) == b"\x11" * 4
        c.truncate("/x", 0)
        assert a.recalls == 1 and int(view.sum()) == 0
        f.close()
        a.unlink("/x")


def test_client_id_0_opens_nothing_and_goodbye_is_final(leased: ServerProc) -> None:
    with connect(leased.address) as a:
        write_file(a, "/x", b"x")
        nobody = pb.Caller(client_id=0)
        with pytest.raises(errors.InvalidArgument, match="needs a session"):
            a.server.call(rpc.OPEN, pb.OpenRequest(caller=nobody, path="/x", read=True))
        with pytest.raises(errors.InvalidArgument, match="needs a session"):
            a.server.call(
                rpc.CREATE, pb.CreateRequest(caller=nobody, path="/y", mode=0o644, write=True)
            )
        assert a.stats().open_files == 0
        # Stateless calls need no session.
        assert a.server.call(rpc.GET_ATTR, pb.GetAttrRequest(caller=nobody, path="/x")).size == 1
        c = connect(leased.address, session=False)
        me = c.server.caller
        c.close()  # Goodbye
        with pytest.raises(errors.UnknownSession):
            a.server.call(rpc.OPEN, pb.OpenRequest(caller=me, path="/x", read=True))
        with pytest.raises(errors.UnknownSession):
            a.server.call(rpc.GOODBYE, pb.GoodbyeRequest(caller=me))
        a.unlink("/x")


def test_a_session_less_client_stalls_nobody(leased: ServerProc) -> None:
    with connect(leased.address) as b, connect(leased.address, session=False) as lone:
        # Its own growing file: the last close trims its own preallocation
        # without recalling itself.
        with lone.open("/grow", "wb") as f:
            f.write(b"g" * 100_000)
        assert b.stats().pending_recalls == 0 and b.stats().quarantined_bytes == 0
        # Another guest's truncate of a file it has a layout of: the recall
        # waits in the lease table for a stream that is not there, and the
        # truncate does not wait for it.
        g = lone.open("/grow", "rb")
        assert g.pread(4, 0) == b"gggg"
        before = b.stats().recall_waits_timed_out
        b.truncate("/grow", 0)
        stats = b.stats()
        assert stats.recall_waits_timed_out == before, "a truncate waited for a stream-less client"
        assert stats.pending_recalls == 1 and stats.quarantined_bytes > 0
        g.close()
    # Its Goodbye released what was recalled from it.
    with connect(leased.address) as b:
        assert b.stats().quarantined_bytes == 0
        b.unlink("/grow")


# -- 6. scale: streams never take the request workers -----------------------------------


def test_many_session_streams_leave_health_and_calls_answering(volume: Volume) -> None:
    srv = start_server(volume, "--max-sessions", "80")
    clients: list[Client] = []
    try:
        for _ in range(80):
            clients.append(connect(srv.address))
        wait_until(lambda: clients[0].stats().sessions == 80, "80 attached streams")
        # More than the 64 request workers are busy holding streams; ordinary
        # calls and health still answer.
        out = subprocess.run(
            [sys.executable, "-m", "daxfs", "health", srv.address],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        write_file(clients[0], "/f", b"fine")
        assert clients[-1].stat("/f").size == 4
        with pytest.raises(errors.TooManySessions, match="limit of 80 sessions"):
            connect(srv.address)
        clients[0].unlink("/f")
    finally:
        for c in clients:
            c.close()
        assert srv.stop() == 0
    assert_fsck_clean(volume)
