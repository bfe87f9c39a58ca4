"""Schedules are immune to wall-clock steps (issue 14, finding 3): periodic
evidence snapshots run on the monotonic clock (a wall clock stepped back 2 h
must not stop them, one stepped forward must not hurry them), and a persisted
action backoff never outlasts the delay it was given."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from reconciler.evidence.recorder import EvidenceRecorder
from reconciler.runtime.reconcile import ReconcileResult
from reconciler.store.database import open_store
from reconciler.store.status import StatusStore
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


def test_an_action_backoff_written_by_a_clock_3_days_ahead_does_not_hold_for_3_days(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "state.db")
    status = StatusStore(store)
    ahead = T0 + timedelta(days=3)
    nxt = status.note_attempt("services/restart:sshd", ahead, base=10, cap=900)
    assert nxt == ahead + timedelta(seconds=10)
    # The clock is corrected: the wait left is the delay that was scheduled.
    assert status.backoff_until("services/restart:sshd", T0) == T0 + timedelta(seconds=10)
    # A normal, unstepped wait is unchanged.
    assert status.backoff_until("services/restart:sshd", ahead) == nxt
    assert status.backoff_until("services/restart:sshd") == nxt
    store.close()


def test_a_backward_wall_clock_step_does_not_stop_snapshots_with_the_real_clock() -> None:
    """The same with the recorder's own (real) monotonic clock: results stamped
    2 h in the past still get their periodic snapshot once the interval passes."""
    import time

    writer = Writer()
    rec = EvidenceRecorder(writer, 0.05, lambda: None)  # type: ignore[arg-type]
    rec(result(0))
    deadline = time.monotonic() + 5
    while len(writer.checks) < 2 and time.monotonic() < deadline:
        rec(result(-7200))  # every later pass is stamped by a clock stepped back 2 h
        time.sleep(0.01)  # between passes; bounded by the deadline
    assert len(writer.checks) == 2, "periodic snapshots stopped after a backward step"
