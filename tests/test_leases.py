"""Many clients, one region: layout leases, recalls, quarantine and self-fencing.

Every client here is a real session with its own stream; the cross-process
tests run clients as separate processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daxfs.client import Client, connect
from daxfs.shared import errors
from daxfs.testing import (
    ServerProc,
    Volume,
    assert_fsck_clean,
    start_server,
    wait_stopped,
    wait_until,
)

MIB = 1024 * 1024


@pytest.fixture
def short_lease_server(volume: Volume) -> Iterator[ServerProc]:
    srv = start_server(volume, "--lease-seconds", "1.5")
    try:
        yield srv
    finally:
        assert srv.stop() == 0
        assert_fsck_clean(volume)


def write_file(c: Client, path: str, data: bytes) -> None:
    with c.open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("how", ["truncate", "unlink", "rename-over"])
def test_freeing_a_mapped_file_recalls_the_other_clients_view(server: ServerProc, how: str) -> None:
    with connect(server.address) as a, connect(server.address) as b:
        write_file(a, "/victim", b"\x5a" * (2 * MIB))
        write_file(a, "/other", b"o")
        with b.open("/victim", "rb") as f:
            view = f.array(np.uint8)  # the view outlives the handle, and keeps the lease
        assert int(view[:10].sum()) == 0x5A * 10
        before = b.recalls
        if how == "truncate":
            a.truncate("/victim", 0)
        elif how == "unlink":
            a.unlink("/victim")
        else:
            a.rename("/other", "/victim")
        wait_until(lambda: b.recalls > before, "the recall")
        assert int(view.sum()) == 0, "a recalled view must read zeros"
        wait_until(lambda: a.stats().quarantined_bytes == 0, "quarantine release")
        for path in ("/victim", "/other"):
            if a.exists(path):
                a.unlink(path)


def test_truncate_under_an_open_reader_shows_the_new_size(server: ServerProc) -> None:
    with connect(server.address) as a, connect(server.address) as b:
        write_file(a, "/t", b"t" * (2 * MIB))
        f = b.open("/t", "rb")
        assert f.pread(4, 0) == b"tttt"
        before = b.recalls
        a.truncate("/t", 4096)
        wait_until(lambda: b.recalls > before, "the recall")
        assert f.pread(10, 4090) == b"t" * 6  # reads stop at the new EOF
        assert f.pread(10, MIB) == b""
        f.close()
        a.unlink("/t")


def test_unlink_of_an_open_file_frees_nothing_until_the_last_close(server: ServerProc) -> None:
    with connect(server.address) as a, connect(server.address) as b:
        write_file(a, "/o", b"o" * MIB)
        f = b.open("/o", "rb")
        view = f.array(np.uint8)
        before = b.recalls
        a.unlink("/o")
        time.sleep(0.2)
        assert b.recalls == before and view[0] == ord("o") and f.pread(1, 0) == b"o"
        f.close()  # last close of an unlinked file: its extents are freed under the view
        wait_until(lambda: b.recalls > before, "the recall of the still-mapped view")
        assert int(view.sum()) == 0
        wait_until(lambda: a.stats().quarantined_bytes == 0, "quarantine release")


def test_a_recalled_reader_never_sees_the_next_owners_bytes(server: ServerProc) -> None:
    with connect(server.address) as a, connect(server.address) as b:
        write_file(a, "/old", b"\x11" * MIB)
        old = {e.region_offset for e in a.extents("/old")}
        reader = b.open("/old", "rb")
        view = reader.array(np.uint8)
        assert reader.pread(2, 0) == b"\x11\x11"
        a.truncate("/old", 0)  # frees the blocks while b reads and maps them
        wait_until(lambda: a.stats().quarantined_bytes == 0, "the recall to complete")
        # The freed blocks go to a new file full of a known pattern (best fit: same hole).
        write_file(a, "/new", b"\xab" * MIB)
        assert {e.region_offset for e in a.extents("/new")} == old, "expected the blocks reused"
        assert not np.any(view == 0xAB), "stale view showed the new owner's bytes"
        data = reader.pread(MIB, 0)
        assert b"\xab" not in data and data == b""  # EOF: the file is empty now
        reader.close()
        a.unlink("/new")
        a.unlink("/old")


def test_a_frozen_client_keeps_its_recalled_blocks_out_of_reuse_until_it_answers(
    short_lease_server: ServerProc,
) -> None:
    # Prefer losing space to leaking bytes: a guest frozen past its lease
    # (SIGSTOP, a paused VM) may still be in the middle of a copy, so what was
    # recalled from it waits until it thaws and acknowledges, not for a timer.
    srv = short_lease_server
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time, numpy as np
        from daxfs.client import connect
        c = connect({srv.address!r})
        f = c.open("/held", "rb")
        v = f.array(np.uint8)
        # Frozen with its session stream attached (it attaches in the background).
        while not any(s.attached for s in c.sessions() if s.client_id == c.client_id):
            time.sleep(0.05)
        print("holding", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while c.recalls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        print("recalled", c.recalls, int(v.sum()), flush=True)
        c.close()
        """
    )
    with connect(srv.address) as a:
        write_file(a, "/held", b"h" * MIB)
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "holding"
            wait_stopped(child.pid)
            t0 = time.monotonic()
            a.truncate("/held", 0)
            assert time.monotonic() - t0 >= 1.5, "truncate waits for the recall (2 s at most)"
            time.sleep(3 * 1.5)  # three leases: a timer would have released the blocks
            stats = a.stats()
            assert stats.quarantined_bytes == MIB, "the frozen client's blocks must wait"
            assert stats.sessions_open == 2, "a frozen client with its stream open is not gone"
            child.send_signal(signal.SIGCONT)
            assert child.stdout.readline().split() == ["recalled", "1", "0"]
            wait_until(lambda: a.stats().quarantined_bytes == 0, "the acknowledgement")
        finally:
            child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()
        a.unlink("/held")


def test_an_operator_evicts_a_frozen_client_and_its_blocks_return(
    short_lease_server: ServerProc,
) -> None:
    srv = short_lease_server
    script = textwrap.dedent(
        f"""
        import os, signal, time, numpy as np
        from daxfs.client import connect
        c = connect({srv.address!r})
        f = c.open("/held", "rb")
        v = f.array(np.uint8)
        # Frozen with its session stream attached (it attaches in the background).
        while not any(s.attached for s in c.sessions() if s.client_id == c.client_id):
            time.sleep(0.05)
        print(c.client_id, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
        """
    )
    with connect(srv.address) as a:
        write_file(a, "/held", b"h" * MIB)
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            frozen = int(child.stdout.readline())
            wait_stopped(child.pid)
            a.truncate("/held", 0)
            assert a.stats().quarantined_bytes == MIB
            listed = {s.client_id: s for s in a.sessions()}
            assert listed[frozen].unacknowledged_recalls == 1 and listed[frozen].attached
            # The operator's view and action, through the CLI.
            shown = subprocess.run(
                [sys.executable, "-m", "daxfs", "sessions", srv.address],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert shown.returncode == 0, shown.stderr
            row = next(line.split() for line in shown.stdout.splitlines() if str(frozen) in line)
            assert row[1:2] == ["yes"] and row[3:4] == ["1"], shown.stdout
            evicted = subprocess.run(
                [sys.executable, "-m", "daxfs", "evict", srv.address, str(frozen)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert evicted.returncode == 0, evicted.stderr
            assert a.stats().quarantined_bytes == 0
            assert frozen not in {s.client_id for s in a.sessions()}
        finally:
            child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()
        a.unlink("/held")


def test_a_killed_clients_leases_expire_and_its_extents_return(
    short_lease_server: ServerProc,
) -> None:
    srv = short_lease_server
    script = textwrap.dedent(
        f"""
        import numpy as np
        from daxfs.client import connect
        c = connect({srv.address!r})
        f = c.open("/k", "r+b")
        v = f.array(np.uint8)
        print("mapped", flush=True)
        import time; time.sleep(600)
        """
    )
    with connect(srv.address) as a:
        write_file(a, "/k", b"k" * (3 * MIB))
        free_before = a.statfs().blocks_free
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "mapped"
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        a.unlink("/k")
        # The dead client still "holds" the unlinked file open; its session lease
        # runs out, the server closes its files, and the extents come back.
        want = free_before + 3 * MIB // 4096
        wait_until(lambda: a.statfs().blocks_free == want, "expiry of the dead client")
        assert a.stats().quarantined_bytes == 0 and a.stats().open_files == 0
        # Everything else carries on.
        write_file(a, "/after", b"fine")
        with a.open("/after", "rb") as f:
            assert f.read() == b"fine"
        a.unlink("/after")


@pytest.mark.client_log("lease ends unrenewed")
def test_a_client_that_cannot_renew_fences_itself(short_lease_server: ServerProc) -> None:
    srv = short_lease_server
    with connect(srv.address, timeout=3) as c:
        write_file(c, "/fence", b"\x77" * MIB)
        f = c.open("/fence", "rb")
        view = f.array(np.uint8)
        assert view[0] == 0x77
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            # The client marks itself fenced, then remaps its views: wait for both.
            wait_until(lambda: c.fenced and not view.any(), "self-fencing", timeout=10)
            with pytest.raises(errors.StaleHandle):
                f.pread(10, 0)
            # Stay stopped past the server's stall threshold: on waking it must
            # grant a grace period rather than declare the client dead.
            time.sleep(2.5)
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: not c.fenced, "renewal after the server came back", timeout=20)
        assert f.pread(4, 0) == b"\x77" * 4
        f.close()
        c.unlink("/fence")


def test_eight_clients_in_eight_processes_all_acknowledge(
    server: ServerProc, workdir: Path
) -> None:
    n = 8
    script = textwrap.dedent(
        f"""
        import sys, time, numpy as np
        from daxfs.client import connect
        c = connect({server.address!r})
        f = c.open("/shared", "rb")
        v = f.array(np.uint8)
        assert int(v[:100].sum()) == 0x42 * 100
        # Its session stream attaches in the background (on gRPC, while the calls
        # take the frame socket): a recall before that is resent on attach, and
        # recalls_sent counts what a stream carried when it was made.
        while not any(s.attached for s in c.sessions() if s.client_id == c.client_id):
            time.sleep(0.05)
        print("mapped", flush=True)
        deadline = time.monotonic() + 60
        while c.recalls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        ok = c.recalls > 0 and int(v.sum()) == 0
        print("fenced" if ok else "NOT FENCED", flush=True)
        f.close(); c.close()
        sys.exit(0 if ok else 1)
        """
    )
    with connect(server.address) as a:
        write_file(a, "/shared", b"\x42" * (2 * MIB))
        procs = [
            subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
            for _ in range(n)
        ]
        try:
            for p in procs:
                assert p.stdout is not None
                assert p.stdout.readline().strip() == "mapped"
            a.truncate("/shared", 0)
            for p in procs:
                assert p.wait(timeout=90) == 0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                assert p.stdout is not None
                p.stdout.close()
        wait_until(lambda: a.stats().quarantined_bytes == 0, "all acknowledgements")
        assert a.stats().recalls_sent >= n
        a.unlink("/shared")


def test_sessions_renew_and_cached_layouts_outlive_the_first_lease(
    short_lease_server: ServerProc,
) -> None:
    with connect(short_lease_server.address) as c:
        write_file(c, "/r", b"r" * 8192)
        with c.open("/r", "rb") as f:
            f.pread(1, 0)
            before = c.stats().layouts
            time.sleep(2.0)  # longer than one lease: renewals keep the cached layout valid
            assert f.pread(1, 4096) == b"r"
            assert c.stats().layouts == before
            assert not c.fenced
        c.unlink("/r")


def test_stats_reports_sessions(server: ServerProc) -> None:
    with connect(server.address) as a:
        with connect(server.address):
            wait_until(lambda: a.stats().sessions == 2, "two session streams")
        wait_until(lambda: a.stats().sessions == 1, "the closed client's stream to end")
