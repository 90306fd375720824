"""Progress of a benchmark run on one console line (rewritten in place, only on a terminal)."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


class Progress:
    """``[  12 s] fio: daxfs seqread 2 jobs (rep 2/3)`` on one line of ``stream``."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = f"[{time.monotonic() - self.t0:5.0f} s] {message}"
        self.stream.write("\r" + line[:width] + "\x1b[K")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
