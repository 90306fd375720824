"""How big and how often: the sizes and repetition counts of a full and a quick benchmark run."""

from __future__ import annotations

from dataclasses import dataclass

from daxfs.shared.format import GIB, KIB, MIB


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes in bytes, durations in seconds; every suite reads its numbers from here."""

    quick: bool
    reps: int
    """Repetitions of every in-memory and RPC figure (median, min, max over these)."""
    seq_sizes: tuple[int, ...]
    """Sequential copy sizes of the limit and the DAX path."""
    load_4k: int
    """Random 4 KiB loads per repetition (over the largest sequential file)."""
    load_64b: int
    """Random 64 B loads per repetition."""
    lib_size: int
    """Client library read/readinto/write size (issue 2's 64 MiB)."""
    net_size: int
    """The network-filesystem comparison's file (issue 5's 1 GiB)."""
    persist_sizes: tuple[int, ...]
    fio_size: int
    """Size of each fio file."""
    fio_runtime_ms: int
    fio_reps: int
    meta_files: int
    """Files created, stat'ed and unlinked per repetition."""
    rpc_calls: int
    """Round trips per repetition for the GetLayout latency figures."""
    ping_region: int
    """Ping-pong round trips through the shared region."""
    ping_mount: int
    """Ping-pong round trips through the mount."""

    @property
    def region_size(self) -> int:
        """Region big enough for every file a run keeps at once, with slack."""
        seq = sum(self.seq_sizes) * 2 + self.net_size
        return seq + self.lib_size + max(self.persist_sizes) + 5 * self.fio_size + 512 * MIB

    @classmethod
    def full(cls) -> Plan:
        return cls(
            quick=False,
            reps=5,
            seq_sizes=(64 * MIB, 256 * MIB, 1 * GIB),
            load_4k=32768,
            load_64b=1 << 21,
            lib_size=64 * MIB,
            net_size=1 * GIB,
            persist_sizes=(4 * KIB, 1 * MIB, 64 * MIB),
            fio_size=256 * MIB,
            fio_runtime_ms=3000,
            fio_reps=3,
            meta_files=1000,
            rpc_calls=2000,
            ping_region=20000,
            ping_mount=1000,
        )

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(
            quick=True,
            reps=3,
            seq_sizes=(16 * MIB, 64 * MIB),
            load_4k=4096,
            load_64b=1 << 18,
            lib_size=64 * MIB,
            net_size=64 * MIB,
            persist_sizes=(4 * KIB, 1 * MIB, 64 * MIB),
            fio_size=8 * MIB,
            fio_runtime_ms=100,
            fio_reps=2,
            meta_files=100,
            rpc_calls=100,
            ping_region=2000,
            ping_mount=100,
        )


def size_label(n: int) -> str:
    """64M, 1G, 4K: the size part of figure names."""
    for unit, suffix in ((GIB, "G"), (MIB, "M"), (KIB, "K")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)
