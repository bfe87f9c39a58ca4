"""The reconcile loop against a real systemd 252 in a container: the runtime,
guards, actuator and store are the production ones; only the clock is
injected so backoff can be exercised without sleeping."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controllers.base import KindController
from controllers.firewall import FirewallController, FirewallObserved
from reconciler.actuator.local import LocalActuator
from reconciler.runtime.agent import Agent, exit_code_for
from reconciler.runtime.desired import TriggerSource, no_triggers
from reconciler.service import new_agent
from specs.host import Host
from specs.kinds.firewall import FirewallSpec
from specs.status import ConditionStatus, ConditionType, Outcome
from tests.harness.sdbox import SystemdContainer
from tests.unit.conftest import make_config

pytestmark = pytest.mark.integration

WEB_UNIT = """[Unit]
Description=stand-in clinic web app

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""

# exits 1 shortly after each start: a crash loop, with systemd's own restarts off
FLAKY_UNIT = """[Unit]
Description=crash-looping service

[Service]
ExecStart=/bin/sh -c 'sleep 0.3; exit 1'
Restart=no

[Install]
WantedBy=multi-user.target
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def make_agent(tmp_path: Path, box: SystemdContainer, units: list[str], clock: Clock,
               controllers: dict[str, KindController] | None = None,
               triggers: TriggerSource = no_triggers, **spec: Any) -> Agent:
    (tmp_path / "baseline.json").write_text(json.dumps({
        "version": 1, "policy_version": "1.0",
        "services": {"units": [{"name": u} for u in units], **spec},
    }))
    return new_agent(make_config(tmp_path), host=box, actuator=LocalActuator(box),
                     clock=clock, controllers=controllers, triggers=triggers)


def active_state(box: SystemdContainer, unit: str) -> str:
    return box.run(["systemctl", "show", "-p", "ActiveState", "--value", unit]).stdout.strip()


def condition(agent: Agent, kind: str, ctype: ConditionType) -> Any:
    c = agent.status_store.load(kind).condition(ctype)
    assert c is not None
    return c


def test_stopped_unit_drifts_is_restarted_and_ready_again(
    systemd_container: SystemdContainer, tmp_path: Path
) -> None:
    box = systemd_container
    box.install_unit("clinic-web.service", WEB_UNIT)
    box.check(["systemctl", "enable", "--now", "clinic-web.service"])
    clock = Clock()
    agent = make_agent(tmp_path, box, ["clinic-web.service"], clock, restart_backoff_base=30)

    first = agent.run_pass()
    assert exit_code_for(first) == 0
    ready = condition(agent, "services", ConditionType.Ready)
    assert ready.status is ConditionStatus.true and ready.reason == "InSync"
    t_ready = ready.last_transition_time

    # stopped by hand -> next pass finds the drift and restarts the unit
    box.check(["systemctl", "stop", "clinic-web.service"])
    assert active_state(box, "clinic-web.service") == "inactive"
    clock.now += timedelta(minutes=1)
    second = agent.run_pass()
    res = second.results[0]
    assert [d.reason for d in res.drifts] == ["UnitInactive"]
    assert [a.action.type for a in res.results] == ["StartUnit"]
    assert res.outcome is Outcome.success and res.remaining == []
    assert active_state(box, "clinic-web.service") == "active"
    ready = condition(agent, "services", ConditionType.Ready)
    assert ready.reason == "Reconciled"
    assert ready.last_transition_time == t_ready, "fixed within the pass: Ready never went False"

    # killed again right away -> inside the 30 s backoff: Drifted, not Ready, held
    box.check(["systemctl", "kill", "-s", "KILL", "clinic-web.service"])
    clock.now += timedelta(seconds=5)
    third = agent.run_pass()
    assert third.results[0].outcome is Outcome.deferred
    assert active_state(box, "clinic-web.service") in ("failed", "inactive")
    ready = condition(agent, "services", ConditionType.Ready)
    drifted = condition(agent, "services", ConditionType.Drifted)
    assert ready.status is ConditionStatus.false and drifted.status is ConditionStatus.true
    assert ready.last_transition_time == clock.now, "Ready changed status: new transition time"
    assert drifted.last_transition_time == clock.now
    assert exit_code_for(third) == 1

    # backoff over -> restarted -> Ready again with a new transition time
    clock.now += timedelta(seconds=31)
    fourth = agent.run_pass()
    assert fourth.results[0].outcome is Outcome.success
    assert active_state(box, "clinic-web.service") == "active"
    ready = condition(agent, "services", ConditionType.Ready)
    assert ready.status is ConditionStatus.true and ready.last_transition_time == clock.now
    history = [h for h in agent.status_store.history("services") if h["type"] == "Ready"]
    assert [h["status"] for h in history] == ["True", "False", "True"]


def test_crash_looping_unit_is_backed_off(
    systemd_container: SystemdContainer, tmp_path: Path
) -> None:
    box = systemd_container
    box.install_unit("flaky.service", FLAKY_UNIT)
    box.run(["systemctl", "enable", "flaky.service"])
    clock = Clock()
    agent = make_agent(tmp_path, box, ["flaky.service"], clock,
                       restart_backoff_base=10, restart_backoff_cap=80)
    restarts_at: list[datetime] = []
    # 3 simulated minutes, one pass every 5 s; the unit dies after every start
    for _ in range(36):
        _wait_until_dead(box, "flaky.service")
        report = agent.run_pass()
        if any(rec.result == "ok" for r in report.results for a in r.results
               for rec in a.records):
            restarts_at.append(clock.now)
        clock.now += timedelta(seconds=5)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(restarts_at)]
    # 36 passes without backoff would be 36 restarts; with 10,20,40,80,80 s it is ~6
    assert 4 <= len(restarts_at) <= 8, restarts_at
    assert gaps == sorted(gaps), f"backoff must grow: {gaps}"
    assert max(gaps) <= 85, "capped"
    deferred = agent.status_store.load("services")
    assert deferred.last_outcome in (Outcome.deferred, Outcome.success)


def _wait_until_dead(box: SystemdContainer, unit: str) -> None:
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if active_state(box, unit) in ("failed", "inactive"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{unit} did not die within 5 s")


def test_dry_run_changes_nothing_on_the_host(
    systemd_container: SystemdContainer, tmp_path: Path
) -> None:
    box = systemd_container
    box.install_unit("clinic-web.service", WEB_UNIT)
    box.check(["systemctl", "daemon-reload"])  # installed but never started or enabled
    agent = make_agent(tmp_path, box, ["clinic-web.service"], Clock())
    before = box.run(["systemctl", "show", "-p", "ActiveState,UnitFileState,InvocationID",
                      "clinic-web.service"]).stdout
    report = agent.run_pass(dry_run=True)
    res = report.results[0]
    assert {d.reason for d in res.drifts} == {"UnitInactive", "UnitDisabled"}
    assert {a.action.type for a in res.results} == {"StartUnit", "EnableUnit"}
    assert all(rec.result == "dry_run" for a in res.results for rec in a.records)
    after = box.run(["systemctl", "show", "-p", "ActiveState,UnitFileState,InvocationID",
                     "clinic-web.service"]).stdout
    assert after == before
    assert agent.status_store.load_all() == [], "a dry run records no status"
    assert exit_code_for(report) == 1


class ExplodingController(FirewallController):
    def observe(self, host: Host, spec: FirewallSpec) -> FirewallObserved:
        raise RuntimeError("nft segfaulted")


def test_a_raising_controller_does_not_stop_the_others(
    systemd_container: SystemdContainer, tmp_path: Path
) -> None:
    box = systemd_container
    box.install_unit("clinic-web.service", WEB_UNIT)
    box.check(["systemctl", "daemon-reload"])
    (tmp_path / "baseline.json").write_text(json.dumps({
        "version": 1, "policy_version": "1.0",
        "firewall": {"ruleset_path": "/etc/nftables.conf", "ruleset_sha256": "0" * 64},
        "services": {"units": [{"name": "clinic-web.service", "enabled": False}]},
    }))
    from controllers.services import ServicesController

    agent = new_agent(make_config(tmp_path), host=box, actuator=LocalActuator(box), clock=Clock(),
                      controllers={"firewall": ExplodingController(sandbox_argv=["false"]),
                                   "services": ServicesController()})
    report = agent.run_pass()
    by_kind = {r.kind: r for r in report.results}
    assert by_kind["firewall"].outcome is Outcome.failed
    assert "nft segfaulted" in (by_kind["firewall"].error or "")
    assert by_kind["services"].outcome is Outcome.success, (by_kind["services"].error, by_kind["services"].results)
    assert active_state(box, "clinic-web.service") == "active"
    fw_ready = condition(agent, "firewall", ConditionType.Ready)
    assert fw_ready.status is ConditionStatus.unknown


def test_restart_order_is_satisfied_once_in_a_real_systemd(
    systemd_container: SystemdContainer, tmp_path: Path
) -> None:
    from specs.resource import Trigger

    box = systemd_container
    box.install_unit("clinic-web.service", WEB_UNIT)
    box.check(["systemctl", "enable", "--now", "clinic-web.service"])
    clock = Clock()
    issued = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    trigger = Trigger(order_id="ord-1", action="restart_service",
                      params={"unit": "clinic-web.service"}, requested_at=issued)
    agent = make_agent(tmp_path, box, ["clinic-web.service"], clock,
                       triggers=lambda: {"services": [trigger]})

    def invocation() -> str:
        return box.run(["systemctl", "show", "-p", "InvocationID", "--value",
                        "clinic-web.service"]).stdout.strip()

    first_id = invocation()
    _wait_for_wall_clock(issued)
    res = agent.run_pass().results[0]
    assert [(a.action.type, a.action.order_id) for a in res.results] == [("RestartUnit", "ord-1")]
    assert res.results[0].ok and res.outcome is Outcome.success
    assert res.verdicts[0][1].reason == "OrderAdmitted"
    second_id = invocation()
    assert second_id != first_id, "the unit really restarted"
    clock.now += timedelta(minutes=1)
    again = agent.run_pass().results[0]
    assert again.results == [] and again.ready, "a satisfied order is not repeated"
    assert invocation() == second_id


def _wait_for_wall_clock(when: datetime) -> None:
    import time

    deadline = time.monotonic() + 5
    while datetime.now(UTC) < when and time.monotonic() < deadline:
        time.sleep(0.05)
