"""Both flush paths: msync on page-cache mappings, libpmem when the mapping is (forced) pmem."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from daxfs.shared import flush
from daxfs.shared.region import Region
from daxfs.testing import Volume

HAVE_LIBPMEM = flush.libpmem() is not None


def test_msync_path_is_used_without_pmem(volume: Volume) -> None:
    with Region(volume.region) as region:
        if os.environ.get("PMEM_IS_PMEM_FORCE") != "1":
            assert region.flush_mode is flush.FlushMode.MSYNC
        region.u8[8192:8200] = 1
        region.persist(8192 + 3, 100)  # unaligned: rounded to pages inside
        region.flusher.drain()
    assert Path(volume.region).read_bytes()[8192:8200] == b"\x01" * 8


def test_persist_refuses_ranges_outside_the_mapping(volume: Volume) -> None:
    with Region(volume.region) as region:
        with pytest.raises(flush.InvalidArgument):
            region.persist(region.size - 10, 100)
        with pytest.raises(flush.InvalidArgument):
            region.persist(-1, 10)


def test_module_level_persist_on_a_numpy_view(volume: Volume) -> None:
    with Region(volume.region) as region:
        view = region.u8[4096 : 4096 * 3]
        view[:] = 5
        mode = flush.persist(view, 10, 4000)
        assert mode in (flush.FlushMode.MSYNC, flush.FlushMode.PMEM)
        assert flush.flush_mode(view) is mode
        flush.drain()
        del view


@pytest.mark.skipif(not HAVE_LIBPMEM, reason="libpmem1 is not installed (apt install libpmem1)")
def test_forced_pmem_path_uses_libpmem(volume: Volume) -> None:
    # libpmem reads PMEM_IS_PMEM_FORCE when loaded, so this runs in a fresh process.
    script = textwrap.dedent(
        f"""
        from daxfs.shared.region import Region
        with Region({volume.region!r}) as r:
            r.u8[4096:4100] = 7
            r.persist(4096, 4)
            r.flusher.drain()
            print(r.flush_mode)
        """
    )
    env = {**os.environ, "PMEM_IS_PMEM_FORCE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pmem"
    assert np.frombuffer(Path(volume.region).read_bytes()[4096:4100], np.uint8).tolist() == [7] * 4


def test_explicit_pmem_mode_without_libpmem_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one fault we cannot cause for real here: a machine without libpmem.
    monkeypatch.setattr(flush, "_pmem", None)
    monkeypatch.setattr(flush, "_pmem_loaded", True)
    with pytest.raises(flush.InvalidArgument, match="libpmem"):
        flush.Flusher(0, 4096, mode=flush.FlushMode.PMEM)
