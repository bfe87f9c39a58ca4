from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.runtime.conditions import desired_conditions, host_summary, set_condition
from reconciler.runtime.guards import GuardContext, allowed, evaluate
from specs.actions import NixosRebuild, RestartUnit
from specs.drift import Drift, Remedy
from specs.status import (
    Condition,
    ConditionStatus,
    ConditionType,
    HostSummary,
    Outcome,
    ResourceStatus,
)
from specs.window import MaintenanceWindow

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_transition_time_changes_only_when_status_changes() -> None:
    conds, changed = set_condition([], ConditionType.Ready, ConditionStatus.true, "InSync", "", T0, "g1")
    assert changed
    t1 = T0 + timedelta(minutes=5)
    conds, changed = set_condition(conds, ConditionType.Ready, ConditionStatus.true, "Reconciled", "new msg", t1, "g2")
    assert not changed
    ready = conds[0]
    assert ready.last_transition_time == T0, "reason/message change must keep the old time"
    assert ready.reason == "Reconciled" and ready.observed_generation == "g2"
    t2 = T0 + timedelta(minutes=10)
    conds, changed = set_condition(conds, ConditionType.Ready, ConditionStatus.false, "UnitFailed", "", t2, "g2")
    assert changed and conds[0].last_transition_time == t2


def test_conditions_are_kept_in_type_order() -> None:
    conds: list[Condition] = []
    for ctype in (ConditionType.Stalled, ConditionType.Ready, ConditionType.Drifted):
        conds, _ = set_condition(conds, ctype, ConditionStatus.false, "X", "", T0, "g")
    assert [c.type for c in conds] == [ConditionType.Ready, ConditionType.Drifted, ConditionType.Stalled]


def drift(reason: str = "UnitFailed", remedy: Remedy = Remedy.remediate) -> Drift:
    return Drift(field="units.a", reason=reason, expected="active", actual="failed", remedy=remedy)


def test_desired_conditions_map() -> None:
    clean = desired_conditions(Outcome.success, [], [], None, "")
    assert clean[ConditionType.Ready][:2] == (ConditionStatus.true, "InSync")
    assert clean[ConditionType.Drifted][0] is ConditionStatus.false
    fixed = desired_conditions(Outcome.success, [], [drift()], None, "")
    assert fixed[ConditionType.Ready][:2] == (ConditionStatus.true, "Reconciled")
    deferred = desired_conditions(Outcome.deferred, [drift()], [], None, "OutsideMaintenanceWindow")
    assert deferred[ConditionType.Ready][:2] == (ConditionStatus.false, "UnitFailed")
    assert deferred[ConditionType.Reconciling][0] is ConditionStatus.true
    assert deferred[ConditionType.Stalled][0] is ConditionStatus.false
    alert = desired_conditions(Outcome.alert, [drift("NotEncrypted", Remedy.alert)], [], None, "")
    assert alert[ConditionType.Stalled][:2] == (ConditionStatus.true, "AlertOnly")
    broken = desired_conditions(Outcome.failed, [], [], "observe failed: boom", "")
    assert broken[ConditionType.Ready][:2] == (ConditionStatus.unknown, "ObserveFailed")


def status_with(**conds: ConditionStatus) -> ResourceStatus:
    return ResourceStatus(kind="x", conditions=[
        Condition(type=ConditionType(k), status=v, reason="R", last_transition_time=T0)
        for k, v in conds.items()
    ])


def test_host_summary() -> None:
    ok = status_with(Ready=ConditionStatus.true, Stalled=ConditionStatus.false)
    waiting = status_with(Ready=ConditionStatus.false, Reconciling=ConditionStatus.true)
    stalled = status_with(Ready=ConditionStatus.false, Stalled=ConditionStatus.true)
    assert host_summary([ok, ok]) is HostSummary.Current
    assert host_summary([ok, waiting]) is HostSummary.InProgress
    assert host_summary([ok, waiting, stalled]) is HostSummary.Failed


def ctx(now: datetime, **kw: object) -> GuardContext:
    base: dict[str, object] = dict(
        now=now, dry_run=False, window=MaintenanceWindow.parse("02:00-04:00"),
        allow_outside_window=False, max_skew_ms=5000, clock_offset_ms=10.0,
    )
    base.update(kw)
    return GuardContext(**base)  # type: ignore[arg-type]


REBUILD = NixosRebuild(target="/nix/store/abc-nixos-system")
RESTART = RestartUnit(unit="sshd.service")
INSIDE = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
OUTSIDE = datetime(2026, 11, 26, 13, 0, tzinfo=UTC)


def test_disruptive_outside_window_is_deferred() -> None:
    v = evaluate(REBUILD, ctx(OUTSIDE))
    assert not allowed(v)
    assert v[-1].guard == "maintenance_window" and v[-1].outcome is Outcome.deferred
    assert "02:00-04:00" in v[-1].message


def test_disruptive_inside_window_passes() -> None:
    assert allowed(evaluate(REBUILD, ctx(INSIDE)))


def test_outside_window_allowed_by_option() -> None:
    v = evaluate(REBUILD, ctx(OUTSIDE, allow_outside_window=True))
    assert allowed(v) and v[-1].reason == "OutsideWindowAllowed"


def test_non_disruptive_ignores_window_and_clock() -> None:
    assert allowed(evaluate(RESTART, ctx(OUTSIDE, clock_offset_ms=99999.0)))


def test_clock_skew_skips_disruptive_with_alert_even_inside_window() -> None:
    v = evaluate(REBUILD, ctx(INSIDE, clock_offset_ms=-6000.0))
    assert not allowed(v)
    assert v[-1].reason == "ClockSkewed" and v[-1].outcome is Outcome.alert


def test_dry_run_stops_everything_first() -> None:
    v = evaluate(RESTART, ctx(INSIDE, dry_run=True))
    assert len(v) == 1 and v[0].reason == "DryRun"


def test_order_authenticity() -> None:
    action = RestartUnit(unit="sshd.service", order_id="o-1")
    assert allowed(evaluate(action, ctx(INSIDE, admitted_orders=frozenset({"o-1"}))))
    v = evaluate(action, ctx(INSIDE, admitted_orders=frozenset()))
    assert v[-1].reason == "OrderNotAdmitted" and v[-1].outcome is Outcome.rejected


def test_backoff_defers_until_time() -> None:
    v = evaluate(RESTART, ctx(INSIDE, backoff_until=INSIDE + timedelta(seconds=30)))
    assert v[-1].reason == "BackingOff"
    assert allowed(evaluate(RESTART, ctx(INSIDE, backoff_until=INSIDE - timedelta(seconds=1))))
