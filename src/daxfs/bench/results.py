"""What a benchmark run measured: figures, ratios paired run by run, digests, the machine.

A :class:`Figure` keeps every repetition, so the median, min and max are
computed from the same samples the JSON carries. A ratio divides two figures
*run by run* (repetition i of one by repetition i of the other, measured back
to back), so a noisy neighbour that slows one repetition slows both sides of
that pair. Digests are the benchmark's own check on itself: every byte it times
a read or copy of is checksummed against the bytes it wrote, and one mismatch
ends the run (:class:`DigestMismatch`).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


class DigestMismatch(Exception):
    """Bytes read back differ from the bytes written: the figure would be a fast wrong answer."""


@dataclass(slots=True)
class Figure:
    """One measured quantity, one sample per repetition."""

    name: str
    """Dotted key, e.g. ``dax.read.64M``; the JSON and the table use it."""
    unit: str
    """``GB/s`` (10^9 bytes), ``MB/s``, ``ops/s``, ``us`` or ``ns``."""
    higher_is_better: bool
    samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": min(self.samples) if self.samples else None,
            "max": max(self.samples) if self.samples else None,
            "runs": list(self.samples),
            "higher_is_better": self.higher_is_better,
            "note": self.note,
        }


@dataclass(slots=True)
class Ratio:
    """``numerator / denominator``, paired repetition by repetition."""

    name: str
    numerator: str
    denominator: str
    samples: list[float]
    target: float | None = None
    """The issue's target; ``at_most`` says which side of it passes."""
    at_most: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def met(self) -> bool | None:
        if self.target is None or not self.samples:
            return None
        return self.median <= self.target if self.at_most else self.median >= self.target

    def to_json(self) -> dict[str, Any]:
        return {
            "numerator": self.numerator,
            "denominator": self.denominator,
            "median": self.median,
            "min": min(self.samples) if self.samples else None,
            "max": max(self.samples) if self.samples else None,
            "runs": list(self.samples),
            "target": self.target,
            "target_is": None if self.target is None else ("<=" if self.at_most else ">="),
            "met": self.met,
        }


def digest(data: npt.NDArray[Any] | bytes | memoryview) -> int:
    """CRC-32 of the bytes (about 4 GB/s here): cheap enough to check every run."""
    if isinstance(data, np.ndarray):
        return zlib.crc32(np.ascontiguousarray(data).view(np.uint8).reshape(-1).data)
    return zlib.crc32(data)


def pattern(nbytes: int, seed: int = 1) -> npt.NDArray[np.uint8]:
    """``nbytes`` of a position-dependent pattern (a shifted block reads differently)."""
    words = (nbytes + 7) // 8
    x = np.arange(words, dtype=np.uint64)
    x *= np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(29)
    x += np.uint64(seed)
    return x.view(np.uint8)[:nbytes]


@dataclass(slots=True)
class DigestRecord:
    expected: int
    checked: int = 0


class Results:
    """Everything one run measured; JSON-serializable with :meth:`to_json`."""

    def __init__(self, *, quick: bool, reps: int, config: dict[str, Any]) -> None:
        self.quick = quick
        self.reps = reps
        self.config = config
        self.figures: dict[str, Figure] = {}
        self.ratios: dict[str, Ratio] = {}
        self.digests: dict[str, DigestRecord] = {}
        #: Load average at the start (``machine()`` in the JSON has it at the end):
        #: on a shared machine, how noisy the run was.
        self.info: dict[str, Any] = {"loadavg_start": list(os.getloadavg())}
        self.started = time.time()

    def figure(
        self, name: str, unit: str, *, higher_is_better: bool = True, note: str = ""
    ) -> Figure:
        fig = self.figures.get(name)
        if fig is None:
            fig = self.figures[name] = Figure(name, unit, higher_is_better, note=note)
        return fig

    def add(self, name: str, unit: str, value: float, *, higher_is_better: bool = True) -> None:
        self.figure(name, unit, higher_is_better=higher_is_better).samples.append(value)

    def ratio(
        self,
        name: str,
        numerator: str,
        denominator: str,
        *,
        target: float | None = None,
        at_most: bool = False,
    ) -> Ratio:
        a = self.figures[numerator].samples
        b = self.figures[denominator].samples
        if len(a) != len(b):
            raise ValueError(f"{numerator} and {denominator} have different repetition counts")
        r = Ratio(name, numerator, denominator, [x / y for x, y in zip(a, b, strict=True)])
        r.target, r.at_most = target, at_most
        self.ratios[name] = r
        return r

    def expect(self, name: str, expected: int) -> None:
        """Declare the digest the next :meth:`verify` calls of ``name`` must match."""
        rec = self.digests.get(name)
        if rec is None:
            self.digests[name] = DigestRecord(expected)
        else:
            rec.expected = expected

    def verify(self, name: str, got: int) -> None:
        rec = self.digests[name]
        if got != rec.expected:
            raise DigestMismatch(
                f"{name}: read back crc32 {got:08x}, wrote {rec.expected:08x}: "
                "the path under test returned wrong bytes"
            )
        rec.checked += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "quick": self.quick,
            "reps": self.reps,
            "config": self.config,
            "machine": machine(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "figures": {k: f.to_json() for k, f in self.figures.items()},
            "ratios": {k: r.to_json() for k, r in self.ratios.items()},
            "digests": {
                k: {"expected": f"{d.expected:08x}", "checked": d.checked, "ok": d.checked > 0}
                for k, d in self.digests.items()
            },
            "info": self.info,
        }


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, memory, kernel, load while running."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    fio = subprocess.run(["fio", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "fio": fio.stdout.strip(),
        "loadavg": list(os.getloadavg()),
    }
