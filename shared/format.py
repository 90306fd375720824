"""The on-region format, declared once.

A daxfs region is a byte array (a file in /dev/shm, a file on a DAX filesystem or
a /dev/dax device). Its first block holds the superblock below; everything from
``data_offset`` on is handed out in extents of ``block_size`` bytes. The server,
the clients and fsck all read the superblock through this module only.

Superblock layout (little endian; every integer is u64 unless noted, because
regions and offsets pass 4 GiB and a fixed width keeps the layout identical on
every host)::

    0   magic         8 bytes  b"DAXFSRGN"
    8   major         u16      incompatible format changes
    10  minor         u16      compatible additions
    12  flags         u32      reserved, 0
    16  uuid          16 bytes identity; the metadata file records it
    32  region_size   total bytes of the region, a multiple of block_size
    40  block_size    allocation unit: 4 KiB (default) or 2 MiB (huge pages)
    48  data_offset   first allocatable byte, = block_size (block 0 is the superblock)
    56  created_ns    wall clock at mkfs, for humans
    64  crc32         u32 over bytes [0, 64): all fields prior
"""

from __future__ import annotations

import struct
import time
import uuid as _uuid
import zlib
from dataclasses import dataclass

from daxfs.shared.errors import FormatError, SuperblockDamaged

MAGIC = b"DAXFSRGN"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

#: Default allocation unit: the x86 base page, so every extent can be mmap()ed alone.
DEFAULT_BLOCK_SIZE = 4 * KIB
#: The huge-page option: extents line up with 2 MiB PMD mappings on DAX.
HUGE_BLOCK_SIZE = 2 * MIB
BLOCK_SIZES = (DEFAULT_BLOCK_SIZE, HUGE_BLOCK_SIZE)

_FIELDS = struct.Struct("<8sHHI16sQQQQ")
_CRC = struct.Struct("<I")
assert _FIELDS.size == 64, "superblock fields must stay 64 bytes"
SUPERBLOCK_SIZE = _FIELDS.size + _CRC.size
assert SUPERBLOCK_SIZE == 68

#: Smallest region: the superblock block plus 16 data blocks.
MIN_DATA_BLOCKS = 16


@dataclass(frozen=True, slots=True)
class Superblock:
    """The identity and geometry of a region."""

    uuid: bytes
    """16 bytes; the metadata file stores the same value and the server compares them."""
    region_size: int
    """Bytes, including the superblock block."""
    block_size: int
    """Bytes; every extent's region offset and length are multiples of it."""
    data_offset: int
    """Bytes; the first allocatable byte."""
    created_ns: int = 0
    """Nanoseconds since the epoch at mkfs."""
    major: int = FORMAT_MAJOR
    minor: int = FORMAT_MINOR

    @property
    def uuid_str(self) -> str:
        return str(_uuid.UUID(bytes=self.uuid))

    @property
    def data_size(self) -> int:
        """Bytes available for extents."""
        return self.region_size - self.data_offset

    def pack(self) -> bytes:
        fields = _FIELDS.pack(
            MAGIC,
            self.major,
            self.minor,
            0,
            self.uuid,
            self.region_size,
            self.block_size,
            self.data_offset,
            self.created_ns,
        )
        return fields + _CRC.pack(zlib.crc32(fields))

    @classmethod
    def new(cls, region_size: int, block_size: int = DEFAULT_BLOCK_SIZE) -> Superblock:
        """A superblock for a fresh region; raises FormatError for a bad geometry."""
        validate_geometry(region_size, block_size)
        return cls(
            uuid=_uuid.uuid4().bytes,
            region_size=region_size,
            block_size=block_size,
            data_offset=block_size,
            created_ns=time.time_ns(),
        )

    @classmethod
    def unpack(cls, raw: bytes, *, source: str = "region") -> Superblock:
        """Parse and check a superblock; every failure names what is wrong and what to do."""
        if len(raw) < SUPERBLOCK_SIZE:
            raise FormatError(f"{source}: too small to hold a daxfs superblock")
        fields = raw[: _FIELDS.size]
        magic, major, minor, _flags, uid, size, bsize, doff, created = _FIELDS.unpack(fields)
        # No advice here: whether `daxfs fsck --repair` can rewrite the superblock
        # depends on the metadata file, which the volume layer knows (server/volume.py).
        if magic != MAGIC:
            raise SuperblockDamaged(
                f"{source}: no daxfs superblock (bad magic {magic!r})", source=source
            )
        (crc,) = _CRC.unpack(raw[_FIELDS.size : SUPERBLOCK_SIZE])
        if crc != zlib.crc32(fields):
            raise SuperblockDamaged(f"{source}: superblock checksum mismatch", source=source)
        if major != FORMAT_MAJOR:
            raise FormatError(
                f"{source}: format version {major}.{minor} is not supported "
                f"(this daxfs reads {FORMAT_MAJOR}.x)"
            )
        sb = cls(uid, size, bsize, doff, created, major, minor)
        validate_geometry(size, bsize, source=source)
        if doff != bsize:
            raise FormatError(f"{source}: data offset {doff} does not match block size {bsize}")
        return sb


def unchecked_fields(raw: bytes) -> tuple[bytes, Superblock]:
    """The magic and the fields of a superblock as they stand, checked for nothing.

    For fsck on a damaged superblock: which fields still agree with the metadata.
    """
    magic, major, minor, _flags, uid, size, bsize, doff, created = _FIELDS.unpack(
        raw[: _FIELDS.size]
    )
    return magic, Superblock(uid, size, bsize, doff, created, major, minor)


def validate_geometry(region_size: int, block_size: int, *, source: str = "region") -> None:
    if block_size not in BLOCK_SIZES:
        raise FormatError(f"{source}: block size {block_size} must be one of {BLOCK_SIZES}")
    if region_size % block_size:
        raise FormatError(
            f"{source}: size {region_size} is not a multiple of the block size {block_size}"
        )
    if region_size < block_size * (1 + MIN_DATA_BLOCKS):
        raise FormatError(
            f"{source}: size {region_size} is too small; "
            f"need at least {block_size * (1 + MIN_DATA_BLOCKS)} bytes"
        )


def parse_size(text: str) -> int:
    """Parse '64M', '1G', '4096', '2MiB' into bytes."""
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": KIB, "M": MIB, "G": GIB, "T": 1024 * GIB}
    mult = 1
    if s and s[-1] in units:
        mult = units[s[-1]]
        s = s[:-1]
    try:
        value = int(s) * mult
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 4096, 64M, 1G)") from None
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value
