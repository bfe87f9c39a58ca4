"""Runtime semantics with scripted controllers (pure logic; the real-systemd
versions of these scenarios live in tests/integration)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from controllers.base import ControllerBase, KindController
from reconciler.actuator.result import ActionResult
from reconciler.runtime.agent import Agent, exit_code_for
from reconciler.service import new_agent
from specs.actions import Action, NixosRebuild, RestartUnit
from specs.drift import Drift, Remedy
from specs.host import Completed, FileStat, Host
from specs.kinds.services import ServicesSpec
from specs.resource import ResourceSpec
from specs.status import ActionRecord, ConditionStatus, ConditionType, Outcome
from tests.unit.conftest import make_config, write_baseline

NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class NoHost:
    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        raise AssertionError("controllers under test must not run commands")

    def read_text(self, path: str) -> str:
        raise AssertionError

    def stat(self, path: str) -> FileStat:
        raise AssertionError


class Obs(BaseModel):
    state: str


class ScriptedController(ControllerBase[ResourceSpec, Obs]):
    """Observes a mutable 'world' dict; plans a restart when it is not 'active'.
    Takes any spec, so it can stand in for any kind."""

    kind = "services"
    spec_type = ResourceSpec

    def __init__(self, world: dict[str, str], disruptive: bool = False) -> None:
        self.world = world
        self.disruptive = disruptive
        self.observe_calls = 0

    def observe(self, host: Host, spec: ResourceSpec) -> Obs:
        self.observe_calls += 1
        if self.world["state"] == "explode":
            raise RuntimeError("systemctl vanished")
        return Obs(state=self.world["state"])

    def diff(self, spec: ResourceSpec, observed: Obs) -> list[Drift]:
        if observed.state == "active":
            return []
        remedy = Remedy.alert if observed.state == "masked" else Remedy.remediate
        return [Drift(field="units.a.service", reason="UnitFailed", expected="active",
                      actual=observed.state, remedy=remedy)]

    def plan(self, spec: ResourceSpec, observed: Obs, drifts: list[Drift]) -> list[Action]:
        if any(d.remedy is Remedy.alert for d in drifts):
            return []
        if self.disruptive:
            return [NixosRebuild(target="/nix/store/x-nixos", reason="Stale")]
        return [RestartUnit(unit="a.service", reason="UnitFailed")]

    def facts(self, spec: ResourceSpec, observed: Obs) -> dict[str, Any]:
        return {"state": observed.state}

    def backoff(self, spec: ResourceSpec) -> tuple[float, float]:
        return (10.0, 100.0)


class BrokenController(ScriptedController):
    kind = "firewall"

    def diff(self, spec: ResourceSpec, observed: Obs) -> list[Drift]:
        raise KeyError("bug in diff")


class RecordingActuator:
    def __init__(self, world: dict[str, str], fix: bool = True) -> None:
        self.world = world
        self.fix = fix
        self.executed: list[Action] = []

    def execute(self, action: Action, step_start: int = 1) -> ActionResult:
        self.executed.append(action)
        if self.fix:
            self.world["state"] = "active"
        rec = ActionRecord(step=step_start, action=action.type, command=action.commands()[-1],
                           exit_code=0, duration_sec=0.01, result="ok")
        return ActionResult(action=action, records=[rec], ok=True)

    def collect_finished(self, action_type: str) -> ActionResult | None:
        return None


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_agent(tmp_path: Path, controllers: dict[str, KindController], world: dict[str, str], *,
               fix: bool = True, clock: Clock | None = None, **cfg: Any) -> tuple[Agent, RecordingActuator]:
    write_baseline(tmp_path, {
        "services": {"units": [{"name": "a.service"}]},
        "firewall": {"ruleset_path": "/etc/nft.conf", "ruleset_sha256": "0" * 64},
    })
    actuator = RecordingActuator(world, fix=fix)
    agent = new_agent(make_config(tmp_path, **cfg), host=NoHost(), actuator=actuator,
                      controllers=controllers, clock=clock or Clock(NOON))
    return agent, actuator


def only(agent: Agent, world: dict[str, str], **kw: Any) -> Any:
    spec = ServicesSpec(units=[])
    return agent.reconcile("services", spec, **kw)


def test_in_sync_is_ready_and_acts_never(tmp_path: Path) -> None:
    world = {"state": "active"}
    agent, act = make_agent(tmp_path, {"services": ScriptedController(world)}, world)
    res = only(agent, world)
    assert res.outcome is Outcome.success and res.ready
    assert act.executed == []
    assert res.status is not None and res.status.is_true(ConditionType.Ready)


def test_drift_is_remediated_then_observed_again(tmp_path: Path) -> None:
    world = {"state": "failed"}
    ctrl = ScriptedController(world)
    agent, act = make_agent(tmp_path, {"services": ctrl}, world)
    res = only(agent, world)
    assert [a.type for a in act.executed] == ["RestartUnit"]
    assert ctrl.observe_calls == 2, "the outcome comes from a fresh observation after acting"
    assert res.outcome is Outcome.success and res.remaining == []
    ready = res.status.condition(ConditionType.Ready)  # type: ignore[union-attr]
    assert ready is not None and ready.reason == "Reconciled"
    stored = agent.status_store.load("services")
    assert stored.last_actions[0].action == "RestartUnit"


def test_action_that_does_not_stick_is_failed_then_backed_off(tmp_path: Path) -> None:
    world = {"state": "failed"}
    clock = Clock(NOON)
    agent, act = make_agent(tmp_path, {"services": ScriptedController(world)}, world, fix=False,
                            clock=clock)
    first = only(agent, world)
    assert first.outcome is Outcome.failed and len(act.executed) == 1
    clock.now += timedelta(seconds=5)  # inside the 10 s backoff
    second = only(agent, world)
    assert len(act.executed) == 1, "crash-looping: no second restart inside the backoff"
    assert second.outcome is Outcome.deferred
    assert second.verdicts[-1][-1].reason == "BackingOff"
    clock.now += timedelta(seconds=6)  # past 10 s: one more try, then 20 s backoff
    only(agent, world)
    assert len(act.executed) == 2
    clock.now += timedelta(seconds=15)
    only(agent, world)
    assert len(act.executed) == 2, "backoff doubled to 20 s"


def test_disruptive_outside_window_deferred_nothing_runs(tmp_path: Path) -> None:
    world = {"state": "stale"}
    agent, act = make_agent(tmp_path, {"services": ScriptedController(world, disruptive=True)}, world)
    res = only(agent, world)
    assert act.executed == []
    assert res.outcome is Outcome.deferred
    assert res.results[0].records[0].result == "deferred"
    assert res.status.is_true(ConditionType.Reconciling)  # type: ignore[union-attr]
    assert exit_code_for_single(res) == 1


def exit_code_for_single(res: Any) -> int:
    from reconciler.runtime.agent import PassReport

    rep = PassReport(started=NOON, finished=NOON, wall_seconds=0, cpu_seconds=0, results=[res])
    return exit_code_for(rep)


def test_disruptive_inside_window_runs(tmp_path: Path) -> None:
    world = {"state": "stale"}
    clock = Clock(datetime(2026, 11, 26, 2, 30, tzinfo=UTC))
    agent, act = make_agent(tmp_path, {"services": ScriptedController(world, disruptive=True)},
                            world, clock=clock)
    assert only(agent, world).outcome is Outcome.success
    assert [a.type for a in act.executed] == ["NixosRebuild"]


def test_alert_only_drift_is_stalled_and_never_acted_on(tmp_path: Path) -> None:
    world = {"state": "masked"}
    agent, act = make_agent(tmp_path, {"services": ScriptedController(world)}, world)
    res = only(agent, world)
    assert res.outcome is Outcome.alert and act.executed == []
    stalled = res.status.condition(ConditionType.Stalled)  # type: ignore[union-attr]
    assert stalled is not None and stalled.status is ConditionStatus.true and stalled.reason == "AlertOnly"


def test_dry_run_changes_nothing_and_saves_nothing(tmp_path: Path) -> None:
    world = {"state": "failed"}
    agent, act = make_agent(tmp_path, {"services": ScriptedController(world)}, world)
    res = only(agent, world, dry_run=True)
    assert act.executed == []
    assert res.results[0].records[0].result == "dry_run"
    assert agent.status_store.load_all() == []


def test_pass_survives_a_crashing_controller(tmp_path: Path) -> None:
    world = {"state": "failed"}
    agent, _ = make_agent(
        tmp_path,
        {"services": ScriptedController(world), "firewall": BrokenController({"state": "active"})},
        world,
    )
    report = agent.run_pass()
    by_kind = {r.kind: r for r in report.results}
    assert by_kind["firewall"].outcome is Outcome.failed
    assert "bug in diff" in (by_kind["firewall"].error or "")
    assert by_kind["services"].outcome is Outcome.success, "other resources still reconciled"
    assert exit_code_for(report) == 1


def test_observe_failure_is_unknown_not_false(tmp_path: Path) -> None:
    world = {"state": "explode"}
    agent, _ = make_agent(tmp_path, {"services": ScriptedController(world)}, world)
    res = only(agent, world)
    ready = res.status.condition(ConditionType.Ready)  # type: ignore[union-attr]
    assert ready is not None and ready.status is ConditionStatus.unknown
    assert ready.reason == "ObserveFailed"


def test_transition_history_is_recorded(tmp_path: Path) -> None:
    world = {"state": "active"}
    clock = Clock(NOON)
    agent, _ = make_agent(tmp_path, {"services": ScriptedController(world)}, world, fix=False,
                          clock=clock)
    only(agent, world)
    t_ready = agent.status_store.load("services").condition(ConditionType.Ready)
    clock.now += timedelta(minutes=1)
    only(agent, world)  # unchanged: no new transition
    assert agent.status_store.load("services").condition(ConditionType.Ready) == t_ready
    world["state"] = "failed"
    clock.now += timedelta(minutes=1)
    only(agent, world)
    hist = agent.status_store.history("services")
    ready_changes = [h for h in hist if h["type"] == "Ready"]
    assert [h["status"] for h in ready_changes] == ["False", "True"]


def test_missing_baseline_is_an_error_exit_2(tmp_path: Path) -> None:
    world = {"state": "active"}
    agent, _ = make_agent(tmp_path, {"services": ScriptedController(world)}, world)
    (tmp_path / "baseline.json").unlink()
    report = agent.run_pass()
    assert report.error and "cannot read" in report.error
    assert exit_code_for(report) == 2


@pytest.mark.parametrize("state,code", [("active", 0), ("failed", 0), ("masked", 1)])
def test_exit_codes(tmp_path: Path, state: str, code: int) -> None:
    world = {"state": state}
    agent, _ = make_agent(tmp_path, {"services": ScriptedController(world),
                                     "firewall": ScriptedController({"state": "active"})}, world)
    assert exit_code_for(agent.run_pass()) == code
