"""What the log check of every test process counts as a problem (daxfs.testing.log_problems)."""

from __future__ import annotations

from daxfs.testing import log_problems

INFO = "ts=2026-01-01T00:00:00.000 level=info logger=daxfs.server msg='serving'"
WARNING = "ts=2026-01-01T00:00:00.000 level=warning logger=daxfs.client.session msg='stream lost'"
ERROR = "ts=2026-01-01T00:00:00.000 level=error logger=daxfs.server msg='sweep failed'"
TRACE = ["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: x"]


def test_info_and_libfuse_lines_are_clean() -> None:
    assert log_problems("\n".join([INFO, "fuse: warning: library too old"])) == []


def test_warnings_errors_and_tracebacks_are_problems() -> None:
    assert log_problems("\n".join([INFO, WARNING])) == [WARNING]
    assert log_problems("\n".join([ERROR, *TRACE])) == [ERROR, TRACE[0]]
    assert log_problems("\n".join(["oops", *TRACE])) == [TRACE[0]]


def test_an_expected_record_is_allowed_with_its_traceback() -> None:
    assert log_problems("\n".join([WARNING, ERROR, *TRACE]), ["stream lost"]) == [
        ERROR,
        TRACE[0],
    ]
    assert log_problems("\n".join([ERROR, *TRACE]), ["sweep failed"]) == []
