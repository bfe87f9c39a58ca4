"""Log lines journald keeps as they are: one line per event, logfmt-style.

`level=INFO resource=firewall reason=RulesetDrifted msg="..." detail="..."`
journald adds the timestamp; SyslogIdentifier names the agent. Fields come
from `extra={"resource":..., "reason":..., "detail":...}`. Newlines inside
values are escaped so one event is one journal entry.

When stderr is the journal (systemd sets `JOURNAL_STREAM=<dev>:<inode>` to
the stream's device and inode, systemd.exec(5)), each line starts with the
sd-daemon(3) priority prefix `<N>`. journald strips it and files the entry at
that priority, so `journalctl -p warning -u compliance-agent` shows warnings
and errors only. Anywhere else (a terminal, a pipe, a file) lines stay plain.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

_FIELDS = ("resource", "reason", "detail")

# sd-daemon(3): SD_CRIT 2, SD_ERR 3, SD_WARNING 4, SD_NOTICE 5, SD_INFO 6, SD_DEBUG 7.
_SD_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
SD_DEBUG = 7


def journal_priority(levelno: int) -> int:
    """The sd-daemon(3) priority of a `logging` level (custom levels round down)."""
    for threshold, priority in _SD_PRIORITIES:
        if levelno >= threshold:
            return priority
    return SD_DEBUG


def stream_is_journal(stream: TextIO, journal_stream: str | None) -> bool:
    """True when `stream` is the journal stream systemd named in JOURNAL_STREAM.

    Comparing device and inode (not just checking the variable is set) keeps a
    child whose stderr was redirected, e.g. `compliance-agent status 2>file`
    started from a unit, from writing `<4>` into a file.
    """
    if not journal_stream:
        return False
    dev, sep, ino = journal_stream.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or no real fd (StringIO)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _quote(value: object) -> str:
    s = str(value)
    if s and all(c.isalnum() or c in "._-/:@" for c in s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    """logfmt lines; with `journal_priorities` each starts with `<N>` (sd-daemon(3))."""

    def __init__(self, journal_priorities: bool = False) -> None:
        super().__init__()
        self.journal_priorities = journal_priorities

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"level={record.levelname}"]
        for name in _FIELDS[:2]:
            value = getattr(record, name, None)
            if value:
                parts.append(f"{name}={_quote(value)}")
        if not getattr(record, "resource", None) and record.name.startswith(("reconciler.",
                                                                            "controllers.")):
            parts.append(f"logger={record.name}")
        parts.append(f"msg={_quote(record.getMessage())}")
        detail = getattr(record, "detail", None)
        if detail:
            parts.append(f"detail={_quote(detail)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        line = " ".join(parts)
        if self.journal_priorities:
            return f"<{journal_priority(record.levelno)}>{line}"
        return line


def setup_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """One handler on the root logger: every module's records (ours under
    `compliance_agent.*`, others under their module names) come out as logfmt,
    with journald priority prefixes when the stream is the journal."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        LogfmtFormatter(journal_priorities=stream_is_journal(out, os.environ.get("JOURNAL_STREAM")))
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore"):  # request lines would drown the agent's events
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
