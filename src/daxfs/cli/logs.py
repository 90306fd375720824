"""Logging of every ``daxfs`` program: one key=value line per record, on stderr.

Configured only here, from ``main``; library modules just call
``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import sys
import time


class KeyValueFormatter(logging.Formatter):
    """Structured, greppable log lines: ts=... level=... logger=... msg=..."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        line = (
            f"ts={ts}.{int(record.msecs):03d} level={record.levelname.lower()} "
            f"logger={record.name} msg={record.getMessage()!r}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _MalformedRequestFilter(logging.Filter):
    """grpc logs a traceback for every request it cannot parse: one line is enough.

    Anyone can send garbage to the socket; a traceback per attempt would drown
    the log and suggest a bug in daxfs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "grpc._common" and "deserializ" in record.getMessage():
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed request refused (not a valid message)", ()
        return True


def setup_logging(debug: bool, default: int = logging.WARNING) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    handler.addFilter(_MalformedRequestFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else default)
