"""Ordering within a pass: the clock reading is taken before any disruptive
action of that pass is judged, with the daemon's parallel workers too."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from controllers.base import ControllerBase, Phase
from reconciler.ops.sdnotify import Notifier
from reconciler.runtime.agent import Agent
from reconciler.runtime.daemon import Daemon, DaemonPolicy
from reconciler.service import new_agent
from specs.actions import Action
from specs.drift import Drift, Remedy
from specs.host import Host
from specs.kinds.time_ import TimeSpec
from specs.resource import ResourceSpec
from tests.unit.conftest import make_config, write_baseline
from tests.unit.test_runtime import Clock, NoHost, RecordingActuator, ScriptedController

INSIDE_WINDOW = datetime(2026, 11, 26, 2, 30, tzinfo=UTC)
SKEW_MS = 60_000.0  # far above the default ntpMaxSkewMs (5000)


class Reading(BaseModel):
    offset_ms: float


class SlowClock(ControllerBase[TimeSpec, Reading]):
    """A time controller whose daemon answers slowly. While it waits, it gives
    a controller running in parallel (which must not exist) time to start."""

    spec_type = TimeSpec
    kind = "time"
    phase = Phase.guard_inputs

    def __init__(self, events: list[str], others_started: threading.Event) -> None:
        self.events = events
        self.others_started = others_started

    def observe(self, host: Host, spec: TimeSpec) -> Reading:
        self.events.append("time:observe")
        self.others_started.wait(timeout=0.5)  # bounded: the right order never sets it
        self.events.append("time:measured")
        return Reading(offset_ms=SKEW_MS)

    def diff(self, spec: TimeSpec, observed: Reading) -> list[Drift]:
        return [Drift(field="max_skew_ms", reason="ClockSkewed", expected="<= 5000 ms",
                      actual=f"{observed.offset_ms} ms", remedy=Remedy.alert)]

    def plan(self, spec: TimeSpec, observed: Reading, drifts: list[Drift]) -> list[Action]:
        return []

    def facts(self, spec: TimeSpec, observed: Reading) -> dict[str, Any]:
        return {"ntp_offset_ms": observed.offset_ms}


class Disruptive(ScriptedController):
    """Plans a NixOS rebuild (disruptive) and notes when it is reconciled."""

    def __init__(self, events: list[str], started: threading.Event) -> None:
        super().__init__({"state": "stale"}, disruptive=True)
        self.events = events
        self.started = started

    def observe(self, host: Host, spec: ResourceSpec) -> Any:
        self.events.append("services:observe")
        self.started.set()
        return super().observe(host, spec)


def phased_agent(tmp_path: Path, events: list[str], **cfg: Any) -> tuple[Agent, RecordingActuator]:
    started = threading.Event()
    # `services` before `time` in the file: the order must not come from it
    write_baseline(tmp_path, {"services": {"units": [{"name": "a.service"}]}, "time": {}})
    actuator = RecordingActuator({"state": "stale"})
    agent = new_agent(
        make_config(tmp_path, **cfg), host=NoHost(), actuator=actuator,
        controllers={"time": SlowClock(events, started), "services": Disruptive(events, started)},
        clock=Clock(INSIDE_WINDOW),
    )
    return agent, actuator


def test_daemon_judges_disruptive_actions_only_after_the_clock_reading(tmp_path: Path) -> None:
    events: list[str] = []
    agent, actuator = phased_agent(tmp_path, events, workers=2)
    results: dict[str, Any] = {}
    daemon = Daemon(agent, DaemonPolicy(poll_interval=3600, workers=2),
                    notifier=Notifier(environ={}))
    runner = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while daemon.passes_completed < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert daemon.passes_completed == 1, "the first pass did not finish"
        assert agent.last_pass is not None
        results = {r.kind: r for r in agent.last_pass.results}
    finally:
        daemon.stop()
        runner.join(5)
    assert events == ["time:observe", "time:measured", "services:observe"]
    services = results["services"]
    clock_verdict = next(v for v in services.verdicts[0] if v.guard == "clock_sanity")
    assert clock_verdict.reason == "ClockSkewed", services.verdicts
    assert actuator.executed == [], "no disruptive action with a skewed clock"


def test_run_pass_orders_by_phase_not_by_file_or_registry(tmp_path: Path) -> None:
    events: list[str] = []
    agent, actuator = phased_agent(tmp_path, events)
    report = agent.run_pass()
    assert [r.kind for r in report.results] == ["time", "services"]
    assert events == ["time:observe", "time:measured", "services:observe"]
    held = report.results[1].verdicts[0][-1]
    assert held.reason == "ClockSkewed" and actuator.executed == []


def test_a_kind_that_declares_the_first_phase_runs_first(tmp_path: Path) -> None:
    """The phase, not the kind's name or place, decides: here `services` reads
    what the guards judge, so it goes before `time`."""

    class EarlyServices(ScriptedController):
        phase = Phase.guard_inputs

    write_baseline(tmp_path, {"services": {"units": [{"name": "a.service"}]}, "time": {}})
    world = {"state": "active"}
    late_time = ScriptedController(world)
    agent = new_agent(make_config(tmp_path), host=NoHost(), actuator=RecordingActuator(world),
                      controllers={"time": late_time, "services": EarlyServices(world)},
                      clock=Clock(INSIDE_WINDOW))
    assert list(agent.specs()) == ["services", "time"]


def test_a_retry_of_a_later_phase_waits_for_its_phase(tmp_path: Path) -> None:
    """A `services` retry from an earlier pass comes due while this pass is
    still reading the clock: it is not reconciled until its phase starts."""
    events: list[str] = []
    agent, actuator = phased_agent(tmp_path, events)
    daemon = Daemon(agent, DaemonPolicy(poll_interval=3600, workers=2),
                    notifier=Notifier(environ={}))
    try:
        daemon._start_pass()
        assert daemon.queue.get(timeout=1) == "time"
        daemon._process("services")  # the retry, picked up by another worker
        assert events == [], "held until the clock phase is done"
        daemon._process("time")
        daemon.queue.done("time")
        assert daemon.queue.get(timeout=1) == "services", "queued when its phase starts"
        daemon._process("services")
        assert events == ["time:observe", "time:measured", "services:observe"]
        assert daemon.passes_completed == 1
        assert actuator.executed == []
    finally:
        daemon.queue.shutdown()
        agent.close()


class RecordingCompanion:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def start(self) -> None:
        self.log.append(f"{self.name}:start")

    def pass_done(self) -> None:
        self.log.append(f"{self.name}:pass_done")

    def stop(self) -> None:
        self.log.append(f"{self.name}:stop")


def test_daemon_hooks_are_given_at_construction_and_run_in_a_stated_order(
    tmp_path: Path
) -> None:
    """Companions start after READY and hear of each pass; at shutdown they stop
    (last started, first stopped) before the closers run."""
    write_baseline(tmp_path, {"services": {"units": [{"name": "a.service"}]}})
    world = {"state": "active"}
    agent = new_agent(make_config(tmp_path), host=NoHost(), actuator=RecordingActuator(world),
                      controllers={"services": ScriptedController(world)},
                      clock=Clock(INSIDE_WINDOW))
    log: list[str] = []
    notifier = Notifier(environ={})
    wake = threading.Event()
    background_runs = threading.Event()
    daemon = Daemon(
        agent, DaemonPolicy(poll_interval=3600, workers=1), notifier=notifier, wake=wake,
        companions=(RecordingCompanion("a", log), RecordingCompanion("b", log)),
        background=(background_runs.set,),
        closers=(lambda: log.append("closer"),),
    )
    runner = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while daemon.passes_completed < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        wake.set()  # e.g. an admitted order: a second pass right away
        while daemon.passes_completed < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert daemon.passes_completed == 2
        assert background_runs.is_set()
    finally:
        daemon.stop()
        runner.join(5)
    assert log == ["a:start", "b:start", "a:pass_done", "b:pass_done", "a:pass_done",
                   "b:pass_done", "b:stop", "a:stop", "closer"]
