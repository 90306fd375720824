"""The client library against a real server process on a real region file.

Behaviours the FUSE mount shares (holes, truncate, rename, unlink while open)
are in test_semantics.py, run against both front ends; this file keeps what only
the library does (numpy views, extents, layouts, the byte path)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from daxfs.client import Client, connect
from daxfs.client.library import ServerStats
from daxfs.proto import daxfs_pb2 as pb
from daxfs.shared import errors
from daxfs.shared.attr import SetAttr
from daxfs.testing import FaultyProxy, ServerProc, Volume

MIB = 1024 * 1024


def pattern(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_64mib_write_lands_at_the_region_offsets_the_layout_names(
    client: Client, server: ServerProc
) -> None:
    data = pattern(64 * MIB, seed=1)
    with client.open("/big", "wb") as f:
        for i in range(0, len(data), 4 * MIB):
            assert f.write(data[i : i + 4 * MIB]) == 4 * MIB
        f.fsync()
    extents = client.layout("/big", 0, len(data))
    assert sum(e.length for e in extents) == len(data)
    assert all(e.region_offset is not None for e in extents)
    # Read the region file itself, not through daxfs.
    with open(server.volume.region, "rb") as region:
        for e in extents:
            assert e.region_offset is not None
            region.seek(e.region_offset)
            got = region.read(e.length)
            assert got == data[e.file_offset : e.file_end]
    with client.open("/big", "rb") as f:
        assert f.read() == data
    assert client.stat("/big").size == len(data)


def test_numpy_store_through_array_is_seen_by_read_in_another_process(
    client: Client, server: ServerProc
) -> None:
    with client.open("/arr", "w+b") as f:
        a = f.array(np.int64, (256, 1024))
        a[:] = np.arange(256 * 1024, dtype=np.int64).reshape(256, 1024)
        a[17, 3] = -42
        f.persist()
    script = textwrap.dedent(
        f"""
        import numpy as np, sys
        from daxfs.client import connect
        with connect({server.address!r}) as c, c.open("/arr", "rb") as f:
            got = np.frombuffer(f.read(), dtype=np.int64).reshape(256, 1024)
        want = np.arange(256 * 1024, dtype=np.int64).reshape(256, 1024)
        want[17, 3] = -42
        sys.exit(0 if np.array_equal(got, want) else 3)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    # And a store after the other side opened: same memory, visible at once.
    with client.open("/arr", "r+b") as f:
        view = f.array(np.int64)
        view[0] = 7
    with client.open("/arr", "rb") as f:
        assert np.frombuffer(f.pread(8, 0), np.int64)[0] == 7


def test_array_is_zero_copy(client: Client) -> None:
    with client.open("/z", "w+b") as f:
        a = f.array(np.uint8, 3 * 4096)
        a[5000] = 99
        assert f.pread(1, 5000) == b"\x63"
        f.pwrite(b"\x07", 6000)
        assert a[6000] == 7


def test_fragmented_region_still_gives_one_contiguous_array(client: Client) -> None:
    # Fill with 1 MiB files, then free every other one: the free space is many 1 MiB holes.
    names = []
    i = 0
    while True:
        name = f"/frag{i}"
        try:
            with client.open(name, "wb") as f:
                f.write(b"\xaa" * MIB)
        except errors.NoSpace:
            client.unlink(name)
            break
        names.append(name)
        i += 1
    for name in names[::2]:
        client.unlink(name)
    assert client.statfs().blocks_free * 4096 >= 8 * MIB
    payload = pattern(6 * MIB, seed=5)
    with client.open("/scattered", "w+b") as f:
        f.write(payload)
        f.flush()
        arr = f.array(np.uint8)
        assert arr.flags.c_contiguous and arr.nbytes == len(payload)
        assert arr.tobytes() == payload
    extents = client.extents("/scattered")
    assert len(extents) > 1, "the region should have been fragmented"
    for name in names[1::2]:
        client.unlink(name)


def test_enospc_changes_nothing(client: Client) -> None:
    before = client.statfs().blocks_free
    with client.open("/huge", "wb") as f, pytest.raises(errors.NoSpace):
        f.pwrite(b"x" * MIB, 1024 * MIB * 1024)  # a huge sparse offset is fine...
        f.allocate(0, 10 * 1024 * MIB, contiguous=True)  # ...but this does not fit
    with client.open("/huge2", "wb") as f, pytest.raises(errors.NoSpace):
        f.allocate(0, 10 * 1024 * MIB)
    after = client.statfs().blocks_free
    assert after <= before  # /huge kept its one written block at most
    client.unlink("/huge")
    client.unlink("/huge2")
    assert client.statfs().blocks_free == before


def test_modes_seek_append_truncate(client: Client) -> None:
    with client.open("/m", "wb") as f:
        f.write(b"hello world")
    with client.open("/m", "ab") as f:
        f.write(b"!")
    with client.open("/m", "r+b") as f:
        assert f.read(5) == b"hello"
        f.seek(-1, os.SEEK_END)
        assert f.read() == b"!"
        f.seek(0)
        f.write(b"J")
        f.truncate(5)
    with client.open("/m", "rb") as f:
        assert f.read() == b"Jello"
        buf = bytearray(10)
        f.seek(1)
        assert f.readinto(buf) == 4
        assert bytes(buf[:4]) == b"ello"
        with pytest.raises(errors.BadHandle):
            f.write(b"no")
    with pytest.raises(errors.AlreadyExists):
        client.open("/m", "xb")
    with pytest.raises(errors.InvalidArgument):
        client.open("/m", "r")  # text mode
    with client.open("/m", "wb") as f:
        pass
    assert client.stat("/m").size == 0


def test_namespace_calls(client: Client) -> None:
    client.mkdir("/d")
    client.mkdir("/d/e")
    with client.open("/d/e/f", "wb") as f:
        f.write(b"abc")
    client.symlink("e/f", "/d/link")
    assert client.readlink("/d/link") == "e/f"
    client.link("/d/e/f", "/d/hard")
    assert client.stat("/d/hard").nlink == 2
    client.rename("/d/e/f", "/d/g")
    assert sorted(client.listdir("/d")) == ["e", "g", "hard", "link"]
    with pytest.raises(errors.DirectoryNotEmpty):
        client.rmdir("/d")
    with pytest.raises(errors.NotADirectory):
        client.listdir("/d/g")
    with pytest.raises(errors.IsADirectory):
        client.unlink("/d/e")
    client.chmod("/d/g", 0o600)
    assert client.stat("/d/g").mode & 0o777 == 0o600
    for p in ("/d/g", "/d/hard", "/d/link"):
        client.unlink(p)
    client.rmdir("/d/e")
    client.rmdir("/d")
    assert client.listdir("/") == []


def test_a_setattr_value_changes_what_it_names_by_path_or_through_an_open_file(
    client: Client,
) -> None:
    with client.open("/s", "wb") as f:
        f.write(b"0123456789")
        # Through the open file: its unpublished growth is published first.
        assert f.set_attr(SetAttr(size=4)).size == 4
        assert f.set_attr(SetAttr(mode=0o640)).mode & 0o7777 == 0o640
    before = client.stat("/s")
    after = client.set_attr(SetAttr(mtime_ns=10**18, size=2), "/s")
    assert (after.size, after.mtime_ns, after.mode) == (2, 10**18, before.mode)
    # The keyword form is the same call.
    assert client.setattr("/s", atime_ns=5 * 10**17).atime_ns == 5 * 10**17
    assert not SetAttr(mode=0o600, uid=1).touches_data and SetAttr(mtime_now=True).touches_data
    client.unlink("/s")


def test_a_cached_layout_costs_no_rpc(client: Client) -> None:
    with client.open("/c", "wb") as f:
        f.write(pattern(8 * MIB))
    with client.open("/c", "rb") as f:
        f.pread(4096, 0)
        before = client.stats().layouts
        for off in range(0, 8 * MIB, 64 * 1024):
            f.pread(4096, off)
        assert client.stats().layouts == before


def test_digest_survives_server_restart(volume, server: ServerProc) -> None:  # type: ignore[no-untyped-def]
    from daxfs.testing import start_server

    data = pattern(3 * MIB + 17, seed=9)
    with connect(server.address) as c, c.open("/keep", "wb") as f:
        f.write(data)
        f.fsync()
    assert server.stop() == 0
    again = start_server(volume)
    try:
        with connect(again.address) as c, c.open("/keep", "rb") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    finally:
        assert again.stop() == 0
    server.proc = again.proc  # the fixture's stop() sees an exited process


def test_huge_block_regions_align_extents_to_2mib(workdir) -> None:  # type: ignore[no-untyped-def]
    from daxfs.testing import Volume, start_server

    volume = Volume.create(workdir, size=64 * MIB, block_size=2 * MIB)
    srv = start_server(volume)
    try:
        with connect(srv.address) as c:
            with c.open("/h", "w+b") as f:
                f.write(pattern(5 * MIB, seed=3))
                f.flush()
                arr = f.array(np.uint8)
                assert arr.tobytes() == pattern(5 * MIB, seed=3)
            for e in c.extents("/h"):
                assert e.region_offset is not None
                assert e.region_offset % (2 * MIB) == 0 and e.length % (2 * MIB) == 0
            assert c.statfs().block_size == 2 * MIB
    finally:
        assert srv.stop() == 0
    from daxfs.testing import assert_fsck_clean

    assert_fsck_clean(volume)


def test_concurrent_clients_in_threads(server: ServerProc) -> None:
    import threading

    errors_seen: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with connect(server.address) as c:
                data = pattern(300_000 + i, seed=i)
                for _ in range(5):
                    with c.open(f"/t{i}", "wb") as f:
                        f.write(data)
                    with c.open(f"/t{i}", "rb") as f:
                        assert f.read() == data
                c.unlink(f"/t{i}")
        except BaseException as exc:
            errors_seen.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors_seen, errors_seen


def test_freed_extents_read_zero_and_give_memory_back(client: Client, server: ServerProc) -> None:
    data = b"\xee" * (16 * MIB)
    with client.open("/big", "wb") as f:
        f.write(data)
    extents = client.extents("/big")
    used = os.stat(server.volume.region).st_blocks
    client.unlink("/big")
    after = os.stat(server.volume.region).st_blocks
    assert used - after >= 16 * MIB // 512, "the region file should have shrunk by 16 MiB"
    with open(server.volume.region, "rb") as region:
        for e in extents:
            assert e.region_offset is not None
            region.seek(e.region_offset)
            assert region.read(e.length) == bytes(e.length)
    # A new file over the same blocks starts from zeros, unwritten parts included.
    with client.open("/again", "wb") as f:
        f.pwrite(b"x", 5 * MIB)
    with client.open("/again", "rb") as f:
        assert f.read() == bytes(5 * MIB) + b"x"
    client.unlink("/again")


def test_a_region_path_that_does_not_exist_asks_for_the_right_path(
    server: ServerProc, workdir: Path
) -> None:
    with pytest.raises(errors.NotFound, match="pass region_path="):
        connect(server.address, region_path=str(workdir / "no-such-region"))


def test_a_damaged_region_says_fsck_repair_not_another_path(
    server: ServerProc, volume: Volume, workdir: Path
) -> None:
    damaged = workdir / "damaged-region"
    with open(volume.region, "rb") as src, open(damaged, "wb") as dst:
        dst.write(b"\xa5" * 4096 + src.read(1 << 20)[4096:])
        dst.truncate(os.path.getsize(volume.region))
    with pytest.raises(errors.FormatError, match="fsck --repair") as caught:
        connect(server.address, region_path=str(damaged))
    assert str(damaged) in str(caught.value)


def test_stats_are_a_value_with_every_counter_the_server_sends(client: Client) -> None:
    wire = {f.name for f in pb.StatsReply.DESCRIPTOR.fields}
    assert {f.name for f in dataclasses.fields(ServerStats)} == wire
    with client.open("/counted", "wb") as f:
        f.write(b"x" * 4096)
    stats = client.stats()
    assert isinstance(stats, ServerStats)
    assert stats.layouts >= 1 and stats.sessions_open >= 1 and stats.free_bytes > 0


def test_close_does_not_wait_for_the_release_but_the_next_call_of_the_client_does(
    server: ServerProc, workdir: Path
) -> None:
    """The Release leaves close's critical path, not this client's order of calls."""
    proxy = FaultyProxy(server.address, str(workdir / "hold.sock"))
    try:
        with connect(proxy.address) as c:
            with c.open("/f", "wb") as f:
                f.write(b"released")
            c.wait_released()
            f = c.open("/f", "rb")
            proxy.hold_next("Release")
            closing = threading.Thread(target=f.close)
            closing.start()
            closing.join(10)
            assert not closing.is_alive(), "close waited for the Release reply"
            assert proxy.holding.wait(10), "the Release never reached the server"
            answered = threading.Event()
            later = threading.Thread(target=lambda: (c.stat("/f"), answered.set()))
            later.start()
            # The reply is held: a stat ordered behind the release cannot finish.
            assert not answered.wait(0.5), "the next call overtook the held Release"
            proxy.release()
            assert answered.wait(10)
            later.join()
            assert proxy.calls["Release"] == 2
    finally:
        proxy.close()
