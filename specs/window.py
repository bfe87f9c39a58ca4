"""The maintenance window: a daily UTC interval 'HH:MM-HH:MM' that may cross midnight.

Semantics: start inclusive, end exclusive. '22:00-02:00' contains 22:00 up to
01:59:59.999 and not 02:00.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from specs.config import WINDOW_RE
from specs.errors import ComplianceAgentError


class WindowFormatError(ComplianceAgentError, ValueError):
    pass


@dataclass(frozen=True)
class MaintenanceWindow:
    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> MaintenanceWindow:
        m = WINDOW_RE.fullmatch(text)
        if not m:
            raise WindowFormatError(f"{text!r} is not a UTC window 'HH:MM-HH:MM'")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if (h1, m1) == (h2, m2):
            raise WindowFormatError(f"{text!r} is an empty window")
        return cls(time(h1, m1), time(h2, m2))

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def contains(self, when: datetime) -> bool:
        t = _utc(when).time()
        if self.crosses_midnight:
            return t >= self.start or t < self.end
        return self.start <= t < self.end

    def next_opening(self, when: datetime) -> datetime:
        """The next moment the window opens (now if it's open)."""
        now = _utc(when)
        if self.contains(now):
            return now
        candidate = now.replace(
            hour=self.start.hour, minute=self.start.minute, second=0, microsecond=0
        )
        if candidate <= now:
            candidate += timedelta(days=1)
        return candidate

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("naive datetime: the maintenance window is defined in UTC")
    return when.astimezone(UTC)
