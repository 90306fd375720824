"""The on-region format: golden bytes, and every way a superblock can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from daxfs.shared.errors import FormatError, SuperblockDamaged
from daxfs.shared.format import SUPERBLOCK_SIZE, Superblock, parse_size, unchecked_fields

GOLDEN = Path(__file__).parent / "data" / "superblock-v1.0.bin"
GOLDEN_SB = Superblock(
    uuid=bytes(range(16)),
    region_size=64 * 1024 * 1024,
    block_size=4096,
    data_offset=4096,
    created_ns=1_700_000_000_000_000_000,
)


def test_superblock_bytes_match_the_golden_file() -> None:
    # A change here is a format change: bump FORMAT_MAJOR/MINOR and add a new golden file.
    assert GOLDEN_SB.pack() == GOLDEN.read_bytes()
    assert len(GOLDEN.read_bytes()) == SUPERBLOCK_SIZE


def test_golden_superblock_parses() -> None:
    assert Superblock.unpack(GOLDEN.read_bytes()) == GOLDEN_SB


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"X", "bad magic"),
        (8, b"\x02", "checksum"),
        (64, b"\x00", "checksum"),
    ],
)
def test_damaged_superblocks_are_refused(offset: int, value: bytes, message: str) -> None:
    raw = bytearray(GOLDEN.read_bytes())
    raw[offset : offset + len(value)] = value
    with pytest.raises(SuperblockDamaged, match=message) as caught:
        Superblock.unpack(bytes(raw))
    # Whether mkfs is safe depends on the metadata, which the format does not know.
    assert "mkfs" not in str(caught.value)


def test_unchecked_fields_read_what_survives() -> None:
    raw = bytearray(GOLDEN.read_bytes())
    raw[0:8] = b"garbage!"
    magic, fields = unchecked_fields(bytes(raw))
    assert magic == b"garbage!"
    assert fields == GOLDEN_SB


def test_future_major_version_is_refused() -> None:
    sb = Superblock(GOLDEN_SB.uuid, GOLDEN_SB.region_size, 4096, 4096, major=2)
    with pytest.raises(FormatError, match="not supported"):
        Superblock.unpack(sb.pack())


@pytest.mark.parametrize(
    ("size", "block"), [(1000 * 4096 + 1, 4096), (64 << 20, 8192), (4096 * 4, 4096)]
)
def test_bad_geometry_is_refused(size: int, block: int) -> None:
    with pytest.raises(FormatError):
        Superblock.new(size, block)


def test_huge_block_geometry() -> None:
    sb = Superblock.new(64 << 20, 2 << 20)
    assert sb.data_offset == 2 << 20
    assert Superblock.unpack(sb.pack()) == sb


@pytest.mark.parametrize(
    ("text", "value"), [("4096", 4096), ("64M", 64 << 20), ("1G", 1 << 30), ("2MiB", 2 << 20)]
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "1X"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
