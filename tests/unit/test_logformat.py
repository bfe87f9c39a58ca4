"""Journald priority prefixes on log lines (sd-daemon(3)), only when stderr is the journal."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest

from reconciler.ops.logformat import (
    LogfmtFormatter,
    journal_priority,
    setup_logging,
    stream_is_journal,
)


def record(level: int, msg: str = "hello") -> logging.LogRecord:
    return logging.LogRecord("compliance_agent.test", level, __file__, 1, msg, None, None)


@pytest.mark.parametrize(
    ("level", "prio"),
    [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3),
     (logging.CRITICAL, 2), (25, 6), (5, 7)],
)
def test_levels_map_to_sd_daemon_priorities(level: int, prio: int) -> None:
    assert journal_priority(level) == prio


def test_prefix_only_when_asked() -> None:
    assert LogfmtFormatter(journal_priorities=True).format(record(logging.WARNING)) == (
        "<4>level=WARNING msg=hello")
    assert LogfmtFormatter().format(record(logging.WARNING)) == "level=WARNING msg=hello"


def _dev_ino(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_stream_must_name_this_very_stream(tmp_path: Path) -> None:
    journal, other = tmp_path / "journal", tmp_path / "other"
    with journal.open("w") as j, other.open("w") as o:
        assert stream_is_journal(j, _dev_ino(journal))
        # set, but stderr was redirected elsewhere: no prefixes in a file
        assert not stream_is_journal(o, _dev_ino(journal))
        for junk in ("", "12", "a:b", "1:", ":2"):
            assert not stream_is_journal(j, junk)
        assert not stream_is_journal(j, None)
    assert not stream_is_journal(io.StringIO(), "1:2")  # no file descriptor


def test_setup_logging_prefixes_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    with path.open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", _dev_ino(path))
        setup_logging("DEBUG", stream)
        try:
            logging.getLogger("compliance_agent.t").warning("disk %s", "full")
            logging.getLogger("compliance_agent.t").debug("detail")
        finally:
            setup_logging("WARNING")
    assert path.read_text().splitlines() == ["<4>level=WARNING msg=\"disk full\"",
                                            "<7>level=DEBUG msg=detail"]
