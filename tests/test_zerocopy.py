"""The zero-copy path at its limit: views that fault nothing in, cheap appends, huge pages.

Residency is read from /proc/self/smaps (the Rss of the view's mappings),
not mincore: mincore on a shared file mapping reports the page cache, which
holds the region's pages whether or not this view has page-table entries.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from daxfs.client import Client, connect
from daxfs.shared import growth, hugepages
from daxfs.shared.format import MIB
from daxfs.shared.region import read_superblock
from daxfs.testing import FaultyProxy, ServerProc, Volume, assert_fsck_clean, start_server

KIB = 1024


def smaps(addr: int, length: int) -> dict[str, int]:
    """Sum of each smaps field (in bytes) over the mappings inside [addr, addr+length)."""
    totals: dict[str, int] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo < addr + length and hi > addr
        elif inside and line.endswith(" kB"):
            name, value, _unit = line.split()
            totals[name.rstrip(":")] = totals.get(name.rstrip(":"), 0) + int(value) * KIB
    return totals


def address(arr: npt.NDArray[np.uint8]) -> int:
    return int(arr.ctypes.data)


def test_a_fresh_read_view_is_resident_before_it_is_touched(client: Client) -> None:
    with client.open("/r", "wb") as f:
        f.write(b"\x5a" * (8 * MIB))
    with client.open("/r", "rb") as f:
        arr = f.array()
    assert smaps(address(arr), arr.nbytes).get("Rss") == 8 * MIB
    assert int(arr[-1]) == 0x5A


def test_a_fresh_writable_view_is_resident_and_takes_stores(client: Client) -> None:
    with client.open("/w", "w+b") as f:
        arr = f.array(np.uint8, 4 * MIB)  # grows the file: fresh extents
        assert smaps(address(arr), arr.nbytes).get("Rss") == 4 * MIB
        arr[:] = 7
        assert f.pread(16, 4 * MIB - 16) == b"\x07" * 16


def test_a_populated_view_is_fenced_as_before(server: ServerProc) -> None:
    """A recall replaces populated pages too: the view reads zeros, its stores miss the region."""
    with connect(server.address) as owner, connect(server.address) as other:
        with owner.open("/f", "wb") as f:
            f.write(b"\x11" * MIB)
        (extent,) = owner.extents("/f")
        assert extent.region_offset is not None
        with other.open("/f", "r+b") as g:
            view = g.array()
        assert smaps(address(view), view.nbytes).get("Rss") == MIB
        owner.truncate("/f", 0)  # frees the extent: the other client's view is recalled
        deadline = time.monotonic() + 20
        while other.recalls == 0:
            assert time.monotonic() < deadline, "no recall arrived"
            time.sleep(0.01)
        assert not view.any(), "a recalled view must read zeros"
        view[:] = 0x22  # lands in private pages, never in the region
        r = extent.region_offset
        assert not (owner.region.u8[r : r + MIB] == 0x22).any()


def test_a_reader_opens_maps_and_closes_in_two_round_trips(
    server: ServerProc, workdir: Path
) -> None:
    """The layout comes with the open, the lease goes back with the release."""
    proxy = FaultyProxy(server.address, str(workdir / "count.sock"))
    try:
        with connect(server.address) as writer, connect(proxy.address) as reader:
            with writer.open("/fresh", "wb") as f:
                f.write(b"\x5a" * (8 * MIB))
            before = proxy.calls.copy()
            with reader.open("/fresh", "rb") as f:
                arr = f.array()
                assert int(arr[-1]) == 0x5A
                first = f.pread(4096, 0)
                del arr  # a live view would keep the lease past the close
            reader.wait_released()  # close does not wait for its Release
            assert first == b"\x5a" * 4096
            calls = proxy.calls - before
            assert calls == {"Open": 1, "Release": 1}, calls
            # The lease went back with the release: a truncate elsewhere recalls nothing.
            writer.truncate("/fresh", 0)
            assert reader.recalls == 0
    finally:
        proxy.close()


def test_appending_1gib_in_16mib_pieces_takes_at_most_3_layouts(workdir: Path) -> None:
    """Growth quadruples per layout call, and the last close gives the excess back."""
    # Sparse: only what is written uses memory. 8 GiB lets the chunk reach its 1 GiB cap.
    volume = Volume.create(workdir, size=8192 * MIB)
    srv = start_server(volume)
    try:
        with connect(srv.address) as c:
            piece = np.full(16 * MIB, 0xA5, dtype=np.uint8)
            before = c.stats().layouts
            with c.open("/log", "w+b") as f:
                for _ in range(64):
                    f.write(piece)
                calls = c.stats().layouts - before
                assert f.pread(16, 1024 * MIB - 16) == b"\xa5" * 16
            assert calls <= 3
            st = c.stat("/log")
            assert st.size == 1024 * MIB
            assert st.allocated == 1024 * MIB, "the last close trims the speculative growth"
            with c.open("/odd", "wb") as f:
                f.write(b"x" * (5 * MIB + 1))
            assert c.stat("/odd").allocated == 5 * MIB + 4 * KIB
            free_before = c.stats().free_bytes
            c.unlink("/log")
            assert c.stats().free_bytes == free_before + 1024 * MIB
    finally:
        assert srv.stop() == 0
    assert_fsck_clean(volume)


def test_allocate_gives_a_file_of_known_size_one_layout(client: Client) -> None:
    with client.open("/known", "wb") as f:
        before = client.stats().layouts
        f.allocate(0, 64 * MIB)
        for off in range(0, 64 * MIB, 8 * MIB):
            f.pwrite(b"\x01" * (8 * MIB), off)
        arr = f.array()
        assert client.stats().layouts - before == 1
        assert int(arr[-1]) == 1
    assert client.stat("/known").allocated == 64 * MIB


def test_growth_quadruples_files_up_to_1gib_chunks_and_an_eighth_of_the_volume() -> None:
    big = 64 * 1024 * MIB
    assert growth.chunk(0, 4 * KIB, big) == growth.MIN_GROWTH
    assert growth.chunk(16 * MIB, 4 * KIB, big) == 48 * MIB
    assert growth.chunk(4096 * MIB, 4 * KIB, big) == 1024 * MIB
    assert growth.chunk(16 * MIB, 4 * KIB, 256 * MIB) == 32 * MIB
    assert growth.chunk(5 * KIB, 2 * MIB, big) == 2 * MIB


@pytest.fixture
def huge_dir() -> Iterator[Path]:
    """A tmpfs mounted huge=always (2 MiB pages), or a skip saying why there is none."""
    d = Path(tempfile.mkdtemp(prefix="daxfs-test-huge-"))
    try:
        try:
            hugepages.mount_huge_tmpfs(str(d))
        except OSError as exc:
            pytest.skip(f"no huge-page tmpfs here: {exc}")
        try:
            if hugepages.backing_page_size(str(d)) < hugepages.HUGE_PAGE:
                pytest.skip("shmem_enabled is 'deny': tmpfs gives no huge pages on this kernel")
            yield d
        finally:
            subprocess.run(["umount", "-l", str(d)], check=False)
    finally:
        os.rmdir(d)


def test_a_2mib_block_view_on_a_huge_tmpfs_maps_2mib_pages(huge_dir: Path) -> None:
    volume = Volume.create(huge_dir, size=64 * MIB, block_size=2 * MIB)
    srv = start_server(volume)
    try:
        with connect(srv.address) as c:
            with c.open("/h", "w+b") as f:
                f.allocate(0, 8 * MIB)
                f.array()[:] = 0x5A
            with c.open("/h", "rb") as f:
                view = f.array()
            assert address(view) % (2 * MIB) == 0
            huge = hugepages.mapped_huge(address(view), view.nbytes)
            if huge == 0 and hugepages.measured_page_size(volume.region) < hugepages.HUGE_PAGE:
                pytest.skip("the kernel had no free 2 MiB pages (memory fragmented)")
            assert huge == 8 * MIB
            assert int(view[-1]) == 0x5A
    finally:
        assert srv.stop() == 0
    assert "pages=2M" in srv.log.read_text()
    assert_fsck_clean(volume)


def test_mkfs_picks_2mib_blocks_where_the_filesystem_gives_huge_pages(
    huge_dir: Path, workdir: Path
) -> None:
    from daxfs.cli import main

    assert main(["mkfs", "--region", str(huge_dir / "r"), "--size", "64M"]) == 0
    assert read_superblock(str(huge_dir / "r")).block_size == 2 * MIB
    assert (
        main(["mkfs", "--region", str(workdir / "r"), "--size", "64M", "--block-size", "4K"]) == 0
    )
    assert read_superblock(str(workdir / "r")).block_size == 4 * KIB
