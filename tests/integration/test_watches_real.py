"""The unit watch against a real systemd 252 (container) on its real system bus:
a killed unit is restarted on the bus signal long before the next pass would
come; a cut bus connection degrades the watch to polling, and it recovers."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler.actuator.local import LocalActuator
from reconciler.ops.sdnotify import Notifier
from reconciler.runtime.agent import Agent
from reconciler.runtime.daemon import Daemon, DaemonPolicy
from reconciler.runtime.reconcile import ReconcileListener
from reconciler.runtime.unit_watch import UnitWatch
from reconciler.runtime.watch import Emit
from reconciler.service import new_agent
from tests.harness.sdbox import SystemdContainer
from tests.harness.wait import wait_for
from tests.unit.conftest import make_config

pytestmark = pytest.mark.integration

WEB_UNIT = """[Unit]
Description=stand-in clinic web app

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""
# Named by specs as clinic-app.service: `systemctl enable` links the alias, and
# systemd then sends every signal of the unit under its own name and object path.
ALIASED_UNIT = WEB_UNIT + "Alias=clinic-app.service\n"
DEADLINE = 20.0
POLL = 3600  # the next pass is an hour away: only a watch can explain a quick repair




def bus_address(box: SystemdContainer) -> str:
    """The container's system bus, reached through its root from this namespace."""
    return f"unix:path={box.root}/run/dbus/system_bus_socket"


def active_state(box: SystemdContainer, unit: str) -> str:
    return box.run(["systemctl", "show", "-p", "ActiveState", "--value", unit]).stdout.strip()


@contextlib.contextmanager
def unit_watch_daemon(
    box: SystemdContainer, state: Path, baseline: dict[str, Any],
    listeners: Sequence[ReconcileListener] = (),
) -> Iterator[tuple[Agent, Daemon, list[UnitWatch]]]:
    """The daemon on `box` with only the unit watch (on the box's bus) and the next
    pass an hour away; `watches` holds the watch once the daemon has built it."""
    (state / "baseline.json").write_text(json.dumps(
        {"version": 1, "policy_version": "1.0", **baseline}))
    agent = new_agent(make_config(state), host=box, actuator=LocalActuator(box),
                      listeners=listeners)
    watches: list[UnitWatch] = []

    def unit_watch(emit: Emit) -> UnitWatch:
        watches.append(UnitWatch(emit, address=bus_address(box)))
        return watches[-1]

    daemon = Daemon(agent, DaemonPolicy(poll_interval=POLL, workers=2),
                    notifier=Notifier(environ={}), watches=[unit_watch])
    runner = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    runner.start()
    try:
        yield agent, daemon, watches
    finally:
        daemon.stop()
        runner.join(10)


def test_a_killed_unit_is_restarted_on_the_bus_signal_and_the_watch_survives_a_cut_bus(
    systemd_container: SystemdContainer, tmp_path: Path
) -> None:
    box = systemd_container
    box.install_unit("clinic-web.service", WEB_UNIT)
    box.check(["systemctl", "enable", "--now", "clinic-web.service"])
    baseline = {"services": {"units": [{"name": "clinic-web.service"}],
                             "restart_backoff_base": 0.1, "restart_backoff_cap": 0.2}}
    with unit_watch_daemon(box, tmp_path, baseline) as (agent, daemon, watches):
        assert wait_for(lambda: daemon.passes_completed == 1)
        watch = watches[0]
        assert wait_for(lambda: watch.health().up), watch.health()

        box.check(["systemctl", "kill", "-s", "KILL", "clinic-web.service"])
        assert wait_for(lambda: active_state(box, "clinic-web.service") == "failed"
                        or watch.health().events > 0)
        assert wait_for(lambda: active_state(box, "clinic-web.service") == "active"), \
            "the killed unit was not restarted"
        assert daemon.passes_completed == 1, "restarted on the bus signal, not by a pass"
        assert watch.health().events > 0

        # the bus connection is cut: down (metric 0), polling goes on, then live again
        watch.drop_connection()
        assert wait_for(lambda: not watch.health().up)
        down = watch.health()
        assert down.reason == "Lost", down
        metrics = agent.metrics.exposition().decode()
        assert 'compliance_agent_watch_up{watch="units"} 0.0' in metrics
        cond = daemon.live_status()["watches"]["condition"]  # type: ignore[index]
        assert cond["status"] == "False" and "units: Lost" in cond["message"]
        daemon.request_pass()  # the loop does not depend on the watch
        assert wait_for(lambda: daemon.passes_completed == 2)
        assert wait_for(lambda: watch.health().up), watch.health()
        assert watch.health().resyncs >= 2  # on recovery every covered kind is queued

        box.check(["systemctl", "kill", "-s", "KILL", "clinic-web.service"])
        assert wait_for(lambda: active_state(box, "clinic-web.service") != "active")
        assert wait_for(lambda: active_state(box, "clinic-web.service") == "active")
        assert daemon.passes_completed == 2, "the recovered watch restarted it"


def test_a_unit_the_spec_names_by_its_alias_is_restarted_on_the_real_units_signal(
    systemd_container: SystemdContainer, tmp_path: Path
) -> None:
    box = systemd_container
    box.install_unit("clinic-web.service", ALIASED_UNIT)
    box.check(["systemctl", "enable", "--now", "clinic-web.service"])
    assert active_state(box, "clinic-app.service") == "active"  # the alias is in place
    baseline = {"services": {"units": [{"name": "clinic-app.service"}],
                             "restart_backoff_base": 0.1, "restart_backoff_cap": 0.2}}
    with unit_watch_daemon(box, tmp_path, baseline) as (_agent, daemon, watches):
        assert wait_for(lambda: daemon.passes_completed == 1)
        watch = watches[0]
        assert wait_for(lambda: watch.health().up), watch.health()
        assert wait_for(lambda: not daemon.hints.pending() and daemon.queue.depth() == 0
                        and not daemon.queue.processing())
        events = watch.health().events

        box.check(["systemctl", "kill", "-s", "KILL", "clinic-web.service"])
        assert wait_for(lambda: active_state(box, "clinic-web.service") == "failed"
                        or watch.health().events > events)
        assert wait_for(lambda: watch.health().events > events), \
            "no hint for the unit the spec names by its alias"
        assert wait_for(lambda: active_state(box, "clinic-web.service") == "active"), \
            "the killed unit was not restarted"
        assert daemon.passes_completed == 1, "restarted on the bus signal, not by a pass"

        # a reload drops the resolutions (an alias may have changed); they are made again
        before_reload = watch.health().events
        box.check(["systemctl", "daemon-reload"])
        assert wait_for(lambda: watch.health().events > before_reload)  # the reload's hint
        assert wait_for(lambda: not daemon.hints.pending() and daemon.queue.depth() == 0
                        and not daemon.queue.processing())
        box.check(["systemctl", "kill", "-s", "KILL", "clinic-web.service"])
        assert wait_for(lambda: active_state(box, "clinic-web.service") != "active")
        assert wait_for(lambda: active_state(box, "clinic-web.service") == "active"), \
            "not restarted after a reload"
        assert daemon.passes_completed == 1


def test_a_burst_of_unit_restarts_and_the_agents_own_repair_make_few_reconciles(
    systemd_container: SystemdContainer, tmp_path: Path
) -> None:
    box = systemd_container
    units = [f"clinic-{i}.service" for i in range(12)]
    for unit in units:
        box.install_unit(unit, WEB_UNIT)
    box.check(["systemctl", "enable", "--now", *units])
    baseline = {"services": {"units": [{"name": u} for u in units],
                             "restart_backoff_base": 0.1, "restart_backoff_cap": 0.2}}
    reconciles: list[tuple[float, bool]] = []  # (when, ran actions)
    with unit_watch_daemon(box, tmp_path, baseline, listeners=(
            lambda r: reconciles.append((time.monotonic(), bool(r.executed))),
    )) as (_agent, daemon, _watches):
        assert wait_for(lambda: daemon.passes_completed == 1)
        assert wait_for(lambda: all(h.up for h in daemon.watch_hub.health()))
        # settle: the resync of the watch going live, then nothing pending
        assert wait_for(lambda: not daemon.hints.pending() and not daemon.queue.processing())
        time.sleep(2.5)  # past any echo window of the start-up reconciles
        reconciles.clear()

        box.check(["systemctl", "restart", *units])  # a switch restarting 12 units
        assert wait_for(lambda: len(reconciles) >= 1)
        time.sleep(3.0)  # bounded observation window for extra reconciles
        # measured: 1 with the 200 ms debounce, 3 without it (the workqueue alone)
        assert 1 <= len(reconciles) <= 2, f"{len(reconciles)} reconciles for one burst"

        reconciles.clear()
        box.check(["systemctl", "kill", "-s", "KILL", units[0]])
        assert wait_for(lambda: any(acted for _, acted in reconciles))  # repaired
        time.sleep(4.0)  # the echo of the restart must not start a cycle of repairs
        acted = [a for _, a in reconciles if a]
        assert len(acted) == 1, reconciles
        assert len(reconciles) <= 2, reconciles  # the repair and one follow-up look
        assert active_state(box, units[0]) == "active"


def test_reading_a_unit_that_is_not_installed_does_not_wake_the_watch_again(
    systemd_container: SystemdContainer, tmp_path: Path
) -> None:
    """Each reconcile's `systemctl show` loads a unit that is not installed (or an
    inactive one systemd has dropped from memory), and systemd announces that load
    and the unload after it on the bus. Taken as hints, the agent's own reads woke
    it again after every reconcile: about five reconciles a second, forever."""
    box = systemd_container
    baseline = {"services": {"units": [{"name": "not-installed.service"}]}}
    reconciles: list[str] = []
    with unit_watch_daemon(box, tmp_path, baseline,
                           listeners=(lambda r: reconciles.append(r.kind),)) as (
            _agent, daemon, watches):
        assert wait_for(lambda: daemon.passes_completed == 1)
        assert wait_for(lambda: watches[0].health().up), watches[0].health()
        # the resync as the watch went live: one reconcile, then quiet
        wait_for(lambda: not daemon.hints.pending() and daemon.queue.depth() == 0
                 and not daemon.queue.processing(), timeout=5.0)
        before = len(reconciles)
        time.sleep(3.0)  # bounded look: with the echo, ~15 reconciles in this time
        assert len(reconciles) - before == 0, f"{len(reconciles) - before} reconciles woke " \
            "by the agent's own reads"
        assert daemon.passes_completed == 1
