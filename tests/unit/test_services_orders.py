"""restart_service orders as level-triggered desired state in the services controller."""

from __future__ import annotations

from datetime import UTC, datetime

from controllers.services import ServicesController, ServicesObserved, UnitState, parse_timestamp
from specs.actions import RestartUnit
from specs.kinds.services import ServicesSpec, UnitSpec
from specs.resource import Trigger

ISSUED = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)


def spec_with(unit: str = "ehr.service") -> ServicesSpec:
    return ServicesSpec(
        units=[UnitSpec(name="ehr.service")],
        triggers=[Trigger(order_id="o-1", action="restart_service", params={"unit": unit},
                          requested_at=ISSUED)],
    )


def observed(active_enter: str, state: str = "active") -> ServicesObserved:
    return ServicesObserved(units={"ehr.service": UnitState(
        name="ehr.service", id="ehr.service", load_state="loaded", active_state=state,
        sub_state="running", unit_file_state="enabled", active_enter_timestamp=active_enter)})


def test_parse_timestamp_forms() -> None:
    assert parse_timestamp("Thu 2026-11-26 02:00:05 UTC") == datetime(2026, 11, 26, 2, 0, 5,
                                                                      tzinfo=UTC)
    assert parse_timestamp("@1700000000") == datetime.fromtimestamp(1700000000, tz=UTC)
    assert parse_timestamp("") is None
    assert parse_timestamp("n/a") is None


def test_restart_requested_until_the_unit_entered_active_after_the_order() -> None:
    c = ServicesController()
    spec = spec_with()
    before = observed("Thu 2026-11-26 01:00:00 UTC")
    drifts = c.diff(spec, before)
    assert [d.reason for d in drifts] == ["RestartRequested"]
    plan = c.plan(spec, before, drifts)
    assert plan == [RestartUnit(unit="ehr.service", reason="RestartRequested", order_id="o-1")]
    after = observed("Thu 2026-11-26 02:00:03 UTC")
    assert c.diff(spec, after) == [], "satisfied once: never repeated"


def test_ordered_restart_replaces_the_plain_start_of_a_stopped_unit() -> None:
    c = ServicesController()
    spec = spec_with()
    stopped = observed("Thu 2026-11-26 01:00:00 UTC", state="inactive")
    plan = c.plan(spec, stopped, c.diff(spec, stopped))
    assert [a.type for a in plan] == ["RestartUnit"] and plan[0].order_id == "o-1"


def test_order_for_a_unit_outside_the_baseline_is_alert_only() -> None:
    c = ServicesController()
    spec = spec_with(unit="sshd.service")
    obs = observed("Thu 2026-11-26 01:00:00 UTC")
    drifts = c.diff(spec, obs)
    assert [(d.reason, d.remedy.value) for d in drifts] == [("UnitNotInBaseline", "alert")]
    assert c.plan(spec, obs, drifts) == []
