"""ClockHealth: what the clock guard judges, and how readings reach it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.runtime.clock_health import (
    HTTP_DATE_TOLERANCE_MS,
    ClockHealth,
    HttpDateReading,
    NtpReading,
)
from reconciler.runtime.reconcile import ReconcileResult, Runtime
from reconciler.service import guard_policy
from specs.kinds.services import ServicesSpec
from tests.unit.conftest import make_config
from tests.unit.test_runtime import NoHost, RecordingActuator, ScriptedController

INSIDE_WINDOW = datetime(2026, 11, 26, 2, 30, tzinfo=UTC)


def result(kind: str, **facts: object) -> ReconcileResult:
    return ReconcileResult(kind=kind, generation="g", started=INSIDE_WINDOW,
                           finished=INSIDE_WINDOW, dry_run=False, facts=dict(facts))


def test_nothing_measured_is_unknown() -> None:
    assert ClockHealth().effective_offset_ms() is None


@pytest.mark.parametrize("ntp,http,expected", [
    (12.0, None, 12.0),
    (None, 1400.0, None),  # within the Date header's resolution: says nothing
    (None, -1400.0, None),
    (None, 31_500.0, 30_000.0),  # beyond it: counts by what exceeds the tolerance
    (None, -31_500.0, -30_000.0),
    (-200.0, 1600.0, -200.0),  # NTP is worse than what HTTP can show
    (-200.0, -9500.0, -8000.0),  # HTTP says worse than NTP
])
def test_effective_offset_is_the_worse_of_ntp_and_widened_http(
    ntp: float | None, http: float | None, expected: float | None
) -> None:
    health = ClockHealth()
    if ntp is not None:
        health.note_ntp(ntp)
    health.note_http(http)
    assert health.effective_offset_ms() == expected
    assert health.ntp_offset_ms == ntp


def test_ntp_reading_comes_only_from_the_clock_kind_and_only_when_measured() -> None:
    health = ClockHealth()
    listen = NtpReading(health, kind="time")
    listen(result("services", ntp_offset_ms=99_999.0))
    assert health.ntp_offset_ms is None, "another kind's fact is not a clock reading"
    listen(result("time", ntp_offset_ms=-42.5))
    assert health.ntp_offset_ms == -42.5
    for unmeasured in (None, True, "12"):
        listen(result("time", ntp_offset_ms=unmeasured))
        assert health.ntp_offset_ms == -42.5, f"{unmeasured!r} keeps the last reading"
    listen(result("time"))
    assert health.ntp_offset_ms == -42.5


def test_http_date_reading_copies_the_latest_offset() -> None:
    health = ClockHealth()
    offsets = iter([10_000.0, None])
    listen = HttpDateReading(health, lambda: next(offsets))
    listen(result("services"))
    assert health.effective_offset_ms() == 10_000.0 - HTTP_DATE_TOLERANCE_MS
    listen(result("services"))
    assert health.effective_offset_ms() is None


def test_concurrent_readers_and_writers() -> None:
    health = ClockHealth()
    seen: list[float | None] = []

    def write() -> None:
        for i in range(2000):
            health.note_ntp(float(i))
            health.note_http(float(-i))

    def read() -> None:
        for _ in range(2000):
            seen.append(health.effective_offset_ms())

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(v is None or isinstance(v, float) for v in seen)


def test_guard_holds_disruptive_action_when_the_http_date_says_skewed(tmp_path: Path) -> None:
    """No NTP reading at all, but the control plane's Date is 20 s off: the
    runtime's clock guard judges the typed input, not a kind's result."""
    health = ClockHealth()
    health.note_http(20_000.0)
    world = {"state": "stale"}
    actuator = RecordingActuator(world)
    runtime = Runtime(guard_policy(make_config(tmp_path)), NoHost(), actuator,
                      {"services": ScriptedController(world, disruptive=True)}, None,
                      clock_offset_ms=health.effective_offset_ms, clock=lambda: INSIDE_WINDOW)
    res = runtime.reconcile("services", ServicesSpec(units=[]))
    assert res.verdicts[0][-1].reason == "ClockSkewed"
    assert actuator.executed == []
    health.note_http(None)
    res = runtime.reconcile("services", ServicesSpec(units=[]))
    assert [v.reason for v in res.verdicts[0]][-2:] == ["ClockUnchecked", "InsideWindow"]
    assert len(actuator.executed) == 1
