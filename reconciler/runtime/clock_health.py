"""How far the host's clock is off, as the clock guard judges it.

Two readings feed it, each from its own thread: the NTP offset the clock
controller's result reports (a reconcile listener, `NtpReading`), and the
offset the control plane's HTTP `Date` header implies (`note_http`). The
guard judges `effective_offset_ms()`: NTP's reading, unless the HTTP Date says
the clock is worse. That header has one-second resolution and the request a
round trip, so it only counts beyond `HTTP_DATE_TOLERANCE_MS`, and by what
exceeds it.

Sign convention (both readings): reference minus local, positive = the local
clock is behind.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from reconciler.runtime.reconcile import ReconcileResult

HTTP_DATE_TOLERANCE_MS = 1500.0  # HTTP Date has 1 s resolution, plus the round trip


class ClockHealth:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ntp_ms: float | None = None
        self._http_ms: float | None = None

    def note_ntp(self, offset_ms: float) -> None:
        with self._lock:
            self._ntp_ms = offset_ms

    def note_http(self, offset_ms: float | None) -> None:
        with self._lock:
            self._http_ms = offset_ms

    @property
    def ntp_offset_ms(self) -> float | None:
        """The last NTP offset measured; None before the first (or with no time resource)."""
        with self._lock:
            return self._ntp_ms

    def effective_offset_ms(self) -> float | None:
        """The offset the clock guard judges; None when nothing has been measured."""
        with self._lock:
            ntp, http = self._ntp_ms, self._http_ms
        candidates = [] if ntp is None else [ntp]
        if http is not None and abs(http) > HTTP_DATE_TOLERANCE_MS:
            candidates.append(http - math.copysign(HTTP_DATE_TOLERANCE_MS, http))
        return max(candidates, key=abs) if candidates else None


class NtpReading:
    """Reconcile listener: the NTP offset fact of the clock kind's results -> ClockHealth.

    A reconcile that measured nothing (no time daemon, observe failed) leaves
    the last reading in place, as an unknown offset is not a good one.
    """

    def __init__(self, health: ClockHealth, kind: str, fact: str = "ntp_offset_ms") -> None:
        self.health = health
        self.kind = kind
        self.fact = fact

    def __call__(self, res: ReconcileResult) -> None:
        if res.kind != self.kind:
            return
        offset = res.facts.get(self.fact)
        if isinstance(offset, int | float) and not isinstance(offset, bool):
            self.health.note_ntp(float(offset))


class HttpDateReading:
    """Reconcile listener: copies the control plane's latest HTTP Date offset into
    ClockHealth (the control-plane loop measures it on its own thread)."""

    def __init__(self, health: ClockHealth, http_offset_ms: Callable[[], float | None]) -> None:
        self.health = health
        self.http_offset_ms = http_offset_ms

    def __call__(self, _res: ReconcileResult) -> None:
        self.health.note_http(self.http_offset_ms())
