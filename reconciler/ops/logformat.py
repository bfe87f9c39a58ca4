"""Log lines journald keeps as they are: one line per event, logfmt-style.

`level=INFO resource=firewall reason=RulesetDrifted msg="..." detail="..."`
journald adds the timestamp; SyslogIdentifier names the agent. Fields come
from `extra={"resource":..., "reason":..., "detail":...}`. Newlines inside
values are escaped so one event is one journal entry.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

_FIELDS = ("resource", "reason", "detail")


def _quote(value: object) -> str:
    s = str(value)
    if s and all(c.isalnum() or c in "._-/:@" for c in s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
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
        return " ".join(parts)


def setup_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """One handler on the root logger: every module's records (ours under
    `compliance_agent.*`, others under their module names) come out as logfmt."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore"):  # request lines would drown the agent's events
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
