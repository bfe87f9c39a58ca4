"""Periodic evidence snapshots run on the monotonic clock (issue 14, finding 3):
a wall clock stepped back 2 h must not stop them, one stepped forward must not
hurry them."""

from __future__ import annotations

from datetime import timedelta

from reconciler.evidence.recorder import EvidenceRecorder
from reconciler.runtime.reconcile import ReconcileResult
from tests.unit.test_trust_support import T0


class Writer:
    def __init__(self) -> None:
        self.checks: list[str] = []

    def record(self, **kw: object) -> str:
        self.checks.append(str(kw["check"]))
        return "id"


def result(wall_offset_seconds: float) -> ReconcileResult:
    at = T0 + timedelta(seconds=wall_offset_seconds)
    return ReconcileResult(kind="time", generation="g", started=at, finished=at, dry_run=False)


def test_snapshots_follow_the_monotonic_clock_whatever_the_wall_clock_does() -> None:
    mono = [100.0]
    writer = Writer()
    rec = EvidenceRecorder(writer, 60, lambda: None,  # type: ignore[arg-type]
                           monotonic=lambda: mono[0])
    rec(result(0))
    assert len(writer.checks) == 1
    mono[0] += 61
    rec(result(-7200 + 61))  # the wall clock was stepped back 2 h
    assert len(writer.checks) == 2, "a backward step must not stop snapshots"
    mono[0] += 1
    rec(result(3 * 86400))  # forward 3 days: not a reason for an early snapshot
    assert len(writer.checks) == 2
    mono[0] += 60
    rec(result(3 * 86400 + 60))
    assert len(writer.checks) == 3
