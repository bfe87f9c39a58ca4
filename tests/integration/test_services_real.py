"""Services controller against a real systemd 252 (booted in a container)."""

from __future__ import annotations

import time

from controllers.services import ServicesController, ServicesObserved
from specs.actions import Action, EnableUnit, RestartUnit, StartUnit
from specs.drift import Remedy
from specs.kinds.services import ServicesSpec, UnitSpec
from tests.harness.sdbox import SystemdContainer

CTRL = ServicesController()
SLEEPER = "[Service]\nExecStart=/bin/sleep infinity\nRestart=no\n" \
          "[Install]\nWantedBy=multi-user.target\n"


def spec(*names: str) -> ServicesSpec:
    return ServicesSpec(units=[UnitSpec(name=n) for n in names])


def apply(box: SystemdContainer, actions: list[Action]) -> None:
    for action in actions:
        for argv in action.commands():
            box.check(argv)


def observe_until(
    box: SystemdContainer, s: ServicesSpec, unit: str, active_state: str, timeout: float = 20
) -> ServicesObserved:
    deadline = time.monotonic() + timeout
    while True:
        obs = CTRL.observe(box, s)
        if obs.units[unit].active_state == active_state or time.monotonic() > deadline:
            return obs
        time.sleep(0.05)


def test_healthy_enabled_running_unit_has_no_drift(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    box.install_unit("app.service", SLEEPER)
    box.check(["systemctl", "enable", "--now", "app.service"])
    s = spec("app.service")
    obs = CTRL.observe(box, s)
    assert obs.units["app.service"].active_state == "active"
    assert CTRL.diff(s, obs) == []


def test_stopped_unit_is_started_again(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    box.install_unit("app.service", SLEEPER)
    box.check(["systemctl", "enable", "--now", "app.service"])
    box.check(["systemctl", "stop", "app.service"])
    s = spec("app.service")
    obs = CTRL.observe(box, s)
    drifts = CTRL.diff(s, obs)
    assert [d.reason for d in drifts] == ["UnitInactive"]
    actions = CTRL.plan(s, obs, drifts)
    assert actions == [StartUnit(unit="app.service", reason="UnitInactive")]
    apply(box, actions)
    after = observe_until(box, s, "app.service", "active")
    assert CTRL.diff(s, after) == []


def test_killed_unit_fails_and_restart_action_repairs_it(
    systemd_container: SystemdContainer,
) -> None:
    box = systemd_container
    box.install_unit("app.service", SLEEPER)
    box.check(["systemctl", "enable", "--now", "app.service"])
    pid = box.check(["systemctl", "show", "-P", "MainPID", "app.service"]).stdout.strip()
    box.check(["kill", "-KILL", pid])
    s = spec("app.service")
    obs = observe_until(box, s, "app.service", "failed")
    state = obs.units["app.service"]
    assert (state.active_state, state.result) == ("failed", "signal")
    drifts = CTRL.diff(s, obs)
    assert [d.reason for d in drifts] == ["UnitFailed"]
    actions = CTRL.plan(s, obs, drifts)
    assert actions == [RestartUnit(unit="app.service", reason="UnitFailed")]
    apply(box, actions)
    after = observe_until(box, s, "app.service", "active")
    assert CTRL.diff(s, after) == []
    new_pid = box.check(["systemctl", "show", "-P", "MainPID", "app.service"]).stdout.strip()
    assert new_pid not in ("0", pid)


def test_disabled_unit_is_enabled(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    box.install_unit("app.service", SLEEPER)
    box.check(["systemctl", "start", "app.service"])
    s = spec("app.service")
    obs = CTRL.observe(box, s)
    drifts = CTRL.diff(s, obs)
    assert [d.reason for d in drifts] == ["UnitDisabled"]
    actions = CTRL.plan(s, obs, drifts)
    assert actions == [EnableUnit(unit="app.service", reason="UnitDisabled")]
    apply(box, actions)
    assert box.run(["systemctl", "is-enabled", "app.service"]).stdout.strip() == "enabled"
    assert CTRL.diff(s, CTRL.observe(box, s)) == []


def test_masked_and_missing_units_are_alert_only(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    box.install_unit("masked.service", SLEEPER)
    box.check(["systemctl", "mask", "masked.service"])
    s = spec("masked.service", "missing.service")
    obs = CTRL.observe(box, s)
    drifts = CTRL.diff(s, obs)
    assert {(d.field, d.reason) for d in drifts} == {
        ("units.masked.service.loaded", "UnitMasked"),
        ("units.missing.service.loaded", "UnitNotFound"),
    }
    assert all(d.remedy is Remedy.alert for d in drifts)
    assert CTRL.plan(s, obs, drifts) == []


def test_crash_looping_unit_gets_no_action_while_systemd_retries(
    systemd_container: SystemdContainer,
) -> None:
    box = systemd_container
    box.install_unit(
        "flappy.service",
        "[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=2\n"
        "[Install]\nWantedBy=multi-user.target\n",
    )
    box.check(["systemctl", "enable", "flappy.service"])
    box.check(["systemctl", "start", "--no-block", "flappy.service"])
    s = spec("flappy.service")
    deadline = time.monotonic() + 20
    while True:
        obs = CTRL.observe(box, s)
        if obs.units["flappy.service"].sub_state == "auto-restart":
            break
        assert time.monotonic() < deadline, obs
        time.sleep(0.05)
    drifts = CTRL.diff(s, obs)
    assert [d.reason for d in drifts] == ["UnitActivating"]
    assert CTRL.plan(s, obs, drifts) == []


def test_template_instance_is_observed(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    box.install_unit("worker@.service", SLEEPER)
    box.check(["systemctl", "enable", "--now", "worker@a.service"])
    s = spec("worker@a.service", "worker@b.service")
    obs = CTRL.observe(box, s)
    assert obs.units["worker@a.service"].active_state == "active"
    drifts = CTRL.diff(s, obs)
    # b exists (template) but is neither enabled nor running
    assert {d.reason for d in drifts} == {"UnitDisabled", "UnitInactive"}
    apply(box, CTRL.plan(s, obs, drifts))
    assert CTRL.diff(s, observe_until(box, s, "worker@b.service", "active")) == []
