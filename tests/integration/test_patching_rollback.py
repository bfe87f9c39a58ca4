"""Guardrail 5 end to end: a real systemd, a stand-in NixOS profile, the real transaction.

Inside a booted systemd 252 container, generations are laid out like NixOS
(tests/integration/nixos_standin). The rebuild transaction switches with
nix-env and switch-to-configuration, health-checks with the real
`systemctl is-system-running --wait`, and rolls back on failure; the
assertions read the container's real unit states afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controllers.patching import PatchingController
from reconciler.actuator.local import LocalActuator
from reconciler.actuator.rebuild import execute_rebuild
from specs.actions import NixosRebuild
from specs.kinds.patching import PatchingSpec, store_hash
from specs.status import Outcome
from tests.harness.sdbox import SystemdContainer
from tests.integration.nixos_standin import StandinGeneration, install_nixos_standin

APP = "[Unit]\nDescription=clinic app {v}\n[Service]\nExecStart=/bin/sleep infinity\n"
FAILING = (
    "[Unit]\nDescription=migration that fails\n[Service]\nType=oneshot\nExecStart=/bin/false\n"
)

OLD = StandinGeneration("old", units={"clinic-app.service": APP.format(v="1")},
                        nixos_version="24.05.20240601.abc1234", kernel_version="6.6.30")
GOOD = StandinGeneration("good", units={"clinic-app.service": APP.format(v="2"),
                                        "clinic-report.service": APP.format(v="report")},
                         configuration_revision="5f2c0a9e7b1d4c3a8e6f0b2d9c7a1e3f5b8d0c2a")
# The switch reports success but leaves a failed unit: only the health check sees it.
BAD = StandinGeneration("bad", units={"clinic-app.service": APP.format(v="3"),
                                      "broken-migration.service": FAILING}, switch_exit=0)
# A unit fails during the switch: switch-to-configuration exits 4, like NixOS.
EXIT4 = StandinGeneration("exit4", units={"clinic-app.service": APP.format(v="4"),
                                          "exit4-check.service": FAILING})
ALL = [OLD, GOOD, BAD, EXIT4]


def state(box: SystemdContainer) -> str:
    return box.run(["systemctl", "is-system-running"]).stdout.strip()


def load_state(box: SystemdContainer, unit: str) -> str:
    out = box.run(["systemctl", "show", "-p", "LoadState,ActiveState", unit]).stdout
    return " ".join(sorted(out.split()))


def link(box: SystemdContainer, path: str) -> str | None:
    return box.stat(path).link_target


@pytest.fixture
def nixos(systemd_container: SystemdContainer) -> tuple[SystemdContainer, dict[str, str]]:
    paths = install_nixos_standin(systemd_container, ALL, active="old",
                                  flakes={"path:/etc/nixos#good": "good",
                                          "path:/etc/nixos#bad": "bad"})
    assert state(systemd_container) == "running", "the stand-in's first generation must be healthy"
    return systemd_container, paths


def test_observe_stand_in_layout(nixos: tuple[SystemdContainer, dict[str, str]]) -> None:
    box, paths = nixos
    ctrl = PatchingController(clock=lambda: datetime.now(UTC))
    spec = PatchingSpec(target=paths["good"], max_generation_age_days=30)
    o = ctrl.observe(box, spec)
    assert o.current_system == paths["old"]
    assert o.profile_generation == 1
    assert [g.number for g in o.generations] == [1]
    assert o.nixos_version == "24.05.20240601.abc1234"
    assert not o.reboot_required
    assert [d.reason for d in ctrl.diff(spec, o)] == ["WrongSystem"]
    [action] = ctrl.plan(spec, o, ctrl.diff(spec, o))
    assert action == NixosRebuild(target=paths["good"], reason="WrongSystem")


def test_good_generation_switches_and_stays_running(
    nixos: tuple[SystemdContainer, dict[str, str]],
) -> None:
    box, paths = nixos
    res = LocalActuator(box).execute(NixosRebuild(target=paths["good"], health_timeout=30))
    assert res.ok, res.error
    assert res.outcome is None
    assert [r.result for r in res.records] == ["ok", "ok", "ok"]
    assert res.records[-1].detail == "running"
    assert link(box, "/run/current-system") == paths["good"]
    assert link(box, "/nix/var/nix/profiles/system") == "system-2-link"
    assert state(box) == "running"
    assert load_state(box, "clinic-report.service") == "ActiveState=active LoadState=loaded"

    ctrl = PatchingController(clock=lambda: datetime.now(UTC))
    spec = PatchingSpec(target=paths["good"])
    o = ctrl.observe(box, spec)
    # the booted kernel is still the old generation's: the update needs a reboot (alert only)
    assert o.reboot_required
    assert [d.reason for d in ctrl.diff(spec, o)] == ["RebootRequired"]
    assert ctrl.plan(spec, o, ctrl.diff(spec, o)) == []
    assert ctrl.diff(PatchingSpec(target=paths["good"], require_reboot_alert=False), o) == []
    facts = ctrl.facts(spec, o)
    assert facts["current_generation"] == 2
    assert facts["rollback_available"] is True
    assert facts["derivation_digest"] == store_hash(paths["good"])
    assert o.configuration_revision == GOOD.configuration_revision


def test_degraded_generation_is_rolled_back(
    nixos: tuple[SystemdContainer, dict[str, str]],
) -> None:
    box, paths = nixos
    res = execute_rebuild(box, NixosRebuild(target=paths["bad"]), health_timeout=30,
                          step_start=3)
    assert not res.ok
    assert res.outcome is Outcome.reverted, res.error
    assert res.rollback_generation == 1
    assert res.records[0].step == 3
    health = [r for r in res.records if r.action == "HealthCheck"]
    assert [h.result for h in health] == ["failed", "ok"]
    assert health[0].detail.startswith("degraded")
    assert "broken-migration.service" in health[0].detail
    assert next(r.command[:4] for r in res.records if r.action == "Rollback") == [
        "nix-env", "-p", "/nix/var/nix/profiles/system", "--switch-generation"]
    # the real system afterwards: old generation active, failing unit gone, running
    assert link(box, "/run/current-system") == paths["old"]
    assert link(box, "/nix/var/nix/profiles/system") == "system-1-link"
    assert link(box, "/nix/var/nix/profiles/system-2-link") == paths["bad"]  # kept, like NixOS
    assert load_state(box, "broken-migration.service") == "ActiveState=inactive LoadState=not-found"
    assert load_state(box, "clinic-app.service") == "ActiveState=active LoadState=loaded"
    assert state(box) == "running"


def test_switch_exit_4_is_rolled_back(nixos: tuple[SystemdContainer, dict[str, str]]) -> None:
    box, paths = nixos
    res = execute_rebuild(box, NixosRebuild(target=paths["exit4"]), health_timeout=30)
    assert res.outcome is Outcome.reverted, res.error
    assert res.rollback_generation == 1
    assert res.records[1].exit_code == 4
    assert "exit code 4" in (res.error or "")
    assert link(box, "/run/current-system") == paths["old"]
    assert load_state(box, "exit4-check.service") == "ActiveState=inactive LoadState=not-found"
    assert state(box) == "running"


def test_flake_rebuild_and_rollback(nixos: tuple[SystemdContainer, dict[str, str]]) -> None:
    box, paths = nixos
    ok = execute_rebuild(box, NixosRebuild(target="path:/etc/nixos#good"), health_timeout=30)
    assert ok.ok, ok.error
    assert link(box, "/run/current-system") == paths["good"]
    bad = execute_rebuild(box, NixosRebuild(target="path:/etc/nixos#bad"), health_timeout=30)
    assert bad.outcome is Outcome.reverted, bad.error
    assert bad.rollback_generation == 2  # back to 'good', the generation before the switch
    assert link(box, "/run/current-system") == paths["good"]
    assert state(box) == "running"
    missing = execute_rebuild(box, NixosRebuild(target="path:/etc/nixos#nope"), health_timeout=30)
    assert missing.outcome is Outcome.failed
    assert "not changed" in (missing.error or "")
    assert link(box, "/run/current-system") == paths["good"]


def test_runtime_records_reverted_outcome(
    nixos: tuple[SystemdContainer, dict[str, str]],
) -> None:
    """The whole reconcile: observe -> WrongSystem -> guards -> transaction -> reverted."""
    from reconciler.runtime.reconcile import Runtime
    from reconciler.service import guard_policy
    from specs.config import AgentConfig

    box, paths = nixos
    cfg = AgentConfig.model_validate({
        "siteId": "clinic-1", "hostId": "reception", "baselinePath": "/nonexistent/b.json",
        "clientCertFile": "/nonexistent/c", "clientKeyFile": "/nonexistent/k",
        "signingKeyFile": "/nonexistent/s", "caCertFile": "/nonexistent/ca",
        "mcpPublicKeys": ["00" * 32], "deploymentMode": "direct",
        "maintenanceWindow": "02:00-04:00", "rebuildHealthCheckTimeout": 30,
    })
    in_window = datetime(2026, 11, 26, 2, 30, tzinfo=UTC)
    ctrl = PatchingController(clock=lambda: in_window)
    runtime = Runtime(guard_policy(cfg), box, LocalActuator(box, rebuild_health_timeout=30),
                      {"patching": ctrl}, None, clock=lambda: in_window)
    spec = PatchingSpec(target=paths["bad"], require_reboot_alert=False)
    res = runtime.reconcile("patching", spec)
    assert [d.reason for d in res.drifts] == ["WrongSystem"]
    assert res.outcome is Outcome.reverted, res.error
    [executed] = res.results
    assert executed.rollback_generation == 1
    reasons = [v.reason for v in res.verdicts[0]]
    assert "InsideWindow" in reasons and all(v.allowed for v in res.verdicts[0])
    # observed again after acting: still the old system, so the drift remains
    assert [d.reason for d in res.remaining] == ["WrongSystem"]
    assert link(box, "/run/current-system") == paths["old"]
    assert state(box) == "running"
    # outside the window the same drift is only deferred: nothing runs
    outside = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    late = Runtime(guard_policy(cfg), box, LocalActuator(box), {"patching": ctrl}, None, clock=lambda: outside)
    res2 = late.reconcile("patching", spec)
    assert res2.outcome is Outcome.deferred
    assert link(box, "/nix/var/nix/profiles/system") == "system-1-link"
