"""Watches: the debouncer, the supervised retry loop, inotify on real files,
and the daemon reconciling a kind on a hint long before its next pass."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.ops.sdnotify import Notifier
from reconciler.runtime.daemon import Daemon, DaemonPolicy
from reconciler.runtime.debounce import Debouncer
from reconciler.runtime.inotify import InotifyWatch
from reconciler.runtime.unit_watch import unit_object_path
from reconciler.runtime.watch import (
    Emit,
    SupervisedWatch,
    WatchHub,
    WatchLost,
    WatchUnsupported,
)
from reconciler.service import new_agent
from specs.backoff import Backoff
from specs.resource import ResourceSpec
from specs.watch import EVERY_KIND, WatchTargets
from tests.harness.wait import wait_for
from tests.unit.conftest import make_config, write_baseline
from tests.unit.test_runtime import NoHost, RecordingActuator, ScriptedController

DEADLINE = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# -- the debouncer ------------------------------------------------------------------
def test_a_burst_of_hints_makes_one_emit_per_key() -> None:
    clock, out = FakeClock(), []
    d = Debouncer(out.append, quiet=0.2, max_delay=1.0, echo=2.0, monotonic=clock)
    for _ in range(40):  # e.g. a switch restarting 40 units of one kind
        d.hint("services")
        clock.t += 0.01
    d.hint("logging")
    assert d.flush_due() == []
    clock.t += 0.25
    assert sorted(d.flush_due()) == ["logging", "services"]
    assert d.flush_due() == []


def test_hints_that_never_pause_are_emitted_after_max_delay() -> None:
    clock, out = FakeClock(), []
    d = Debouncer(out.append, quiet=0.2, max_delay=1.0, echo=2.0, monotonic=clock)
    emitted = []
    for _ in range(30):  # a hint every 0.1 s for 3 s: never quiet for 0.2 s
        d.hint("services")
        clock.t += 0.1
        emitted += d.flush_due()
    assert 2 <= len(emitted) <= 4, emitted


def test_the_agents_own_remediation_marks_the_key_dirty_once() -> None:
    clock, out = FakeClock(), []
    d = Debouncer(out.append, quiet=0.2, max_delay=1.0, echo=2.0, monotonic=clock)
    d.begin("services")
    d.hint("services")  # the restart it just made, seen on the bus
    d.hint("services")
    d.end("services", acted=True)
    clock.t += 0.5
    d.hint("services")  # activating -> active, still the echo
    clock.t += 0.5
    assert d.flush_due() == [], "no reconcile while the remediation settles"
    clock.t += 1.1
    assert d.flush_due() == ["services"], "one follow-up reconcile at the window's end"
    clock.t += 5
    assert d.flush_due() == []


def test_a_change_during_a_reconcile_without_action_is_looked_at_again() -> None:
    clock, out = FakeClock(), []
    d = Debouncer(out.append, quiet=0.2, max_delay=1.0, echo=2.0, monotonic=clock)
    d.begin("firewall")
    d.hint("firewall")
    d.end("firewall", acted=False)
    clock.t += 0.3
    assert d.flush_due() == ["firewall"]


def test_an_action_without_echo_queues_nothing() -> None:
    clock, out = FakeClock(), []
    d = Debouncer(out.append, quiet=0.2, max_delay=1.0, echo=2.0, monotonic=clock)
    d.begin("services")
    d.end("services", acted=True)
    clock.t += 10
    assert d.flush_due() == []


# -- the supervised watch --------------------------------------------------------------
class FlakyWatch(SupervisedWatch):
    """Fails its first `failures` sessions, then stays live until stopped."""

    def __init__(self, emit: Emit, failures: int) -> None:
        super().__init__("flaky", emit, backoff=Backoff(0.01, 0.05))
        self.failures = failures
        self.sessions = 0
        self.release = threading.Event()

    def session(self) -> None:
        self.sessions += 1
        if self.sessions <= self.failures:
            raise WatchLost("bus went away")
        self.live("ok")
        self.release.wait(DEADLINE)

    def interrupt(self) -> None:
        if self.stopping():  # new targets need no new session here
            self.release.set()


def test_a_failing_watch_is_down_retries_with_backoff_and_resyncs_when_live() -> None:
    emitted: list[str] = []
    w = FlakyWatch(emitted.append, failures=3)
    w.set_targets({"services": WatchTargets.of(units=["a.service"]), "time": WatchTargets()})
    assert not w.health().up and w.health().reason == "Starting"
    w.start()
    try:
        assert wait_for(lambda: w.health().up)
        assert w.sessions == 4
        assert w.health().resyncs == 1
        assert emitted == ["services", "time"]  # FlakyWatch covers every target
    finally:
        w.stop()
    assert w.health().reason == "Stopped"


def test_a_watch_that_keeps_failing_never_spins() -> None:
    w = FlakyWatch(lambda _k: None, failures=10**9)
    w.start()
    try:
        assert wait_for(lambda: w.health().failures >= 2)
        h = w.health()
        assert not h.up and h.reason == "Lost" and "bus went away" in h.message
        time.sleep(0.3)  # not a timing assert: counts sessions over a bounded wait
        assert w.sessions < 60, "backoff between sessions (0.01..0.05 s) bounds the retries"
    finally:
        w.stop()


class UnsupportedWatch(SupervisedWatch):
    """A source that says it does not offer the watch (an actuator older than it)."""

    def __init__(self) -> None:
        # a tiny base: an ordinary failure would be retried within milliseconds
        super().__init__("old-source", lambda _k: None, backoff=Backoff(0.001, 100.0))
        self.sessions = 0

    def session(self) -> None:
        self.sessions += 1
        raise WatchUnsupported("the source does not offer this watch")

    def interrupt(self) -> None:
        pass


def test_a_source_without_the_watch_is_asked_again_only_at_the_cap() -> None:
    w = UnsupportedWatch()
    w.start()
    try:
        assert wait_for(lambda: w.health().failures == 1)
        h = w.health()
        assert not h.up and h.reason == "Unavailable" and "does not offer" in h.message
        time.sleep(0.3)  # bounded look: at base 1 ms this would be hundreds of sessions
        assert w.sessions == 1, "the next try waits half the cap (50 s) at least"
    finally:
        w.stop()


def test_the_hub_condition_names_the_watches_that_are_down() -> None:
    clock = FakeClock()
    w = FlakyWatch(lambda _k: None, failures=10**9)
    hub = WatchHub([w], Debouncer(lambda _k: None, monotonic=clock))
    cond = hub.condition()
    assert cond["status"] == "False" and "flaky: Starting" in cond["message"]
    assert WatchHub([], Debouncer(lambda _k: None)).condition()["reason"] == "Disabled"


def test_unit_object_paths_are_escaped_like_systemd() -> None:
    assert unit_object_path("sshd.service").endswith("/sshd_2eservice")
    assert unit_object_path("dbus-broker.service").endswith("/dbus_2dbroker_2eservice")
    assert unit_object_path("1x.service").endswith("/_31x_2eservice")
    assert unit_object_path("getty@tty1.service").endswith("/getty_40tty1_2eservice")


# -- inotify on real files -------------------------------------------------------------
@pytest.fixture
def file_watch(tmp_path: Path) -> Any:
    hints: list[str] = []
    lock = threading.Lock()

    def emit(key: str) -> None:
        with lock:
            hints.append(key)

    baseline = tmp_path / "baseline.json"
    baseline.write_text("{}")
    w = InotifyWatch(emit, always={str(baseline): EVERY_KIND})
    yield w, hints, tmp_path
    w.stop()


def test_inotify_hints_the_kind_of_an_edited_replaced_or_switched_file(file_watch: Any) -> None:
    w, hints, tmp = file_watch
    ruleset = tmp / "etc" / "ruleset.nft"
    ruleset.parent.mkdir()
    ruleset.write_text("table inet x {}\n")
    run = tmp / "run"
    run.mkdir()
    (tmp / "sys-1").mkdir()
    (tmp / "sys-2").mkdir()
    os.symlink(tmp / "sys-1", run / "current-system")
    sigs = tmp / "var" / "lib" / "clamav"  # does not exist yet
    w.set_targets({
        "firewall": WatchTargets.of(paths=[str(ruleset)]),
        "patching": WatchTargets.of(paths=[str(run / "current-system")]),
        "av_edr": WatchTargets.of(paths=[str(sigs / "daily.cvd")]),
    })
    w.start()
    assert wait_for(lambda: w.health().up)
    assert wait_for(lambda: w.health().resyncs == 1)
    hints.clear()

    ruleset.write_text("table inet x { chain c {} }\n")  # edited in place
    assert wait_for(lambda: "firewall" in hints)
    assert set(hints) == {"firewall"}
    hints.clear()

    tmp_file = ruleset.with_suffix(".tmp")
    tmp_file.write_text("table inet y {}\n")
    os.replace(tmp_file, ruleset)  # replaced by rename, as an editor or a rebuild does
    assert wait_for(lambda: "firewall" in hints)
    hints.clear()

    link_tmp = run / ".current-system.tmp"
    os.symlink(tmp / "sys-2", link_tmp)
    os.replace(link_tmp, run / "current-system")  # a switch: the link replaced by rename
    assert wait_for(lambda: "patching" in hints)
    hints.clear()

    sigs.mkdir(parents=True)  # the missing directory appears, then the file in it
    assert wait_for(lambda: "av_edr" in hints)
    hints.clear()
    assert wait_for(lambda: w.health().up)
    deadline = time.monotonic() + DEADLINE
    while "av_edr" not in hints and time.monotonic() < deadline:
        (sigs / "daily.cvd").write_text(str(time.monotonic()))  # until the new watch sees it
        time.sleep(0.05)
    assert "av_edr" in hints

    (tmp / "baseline.json").write_text('{"version": 1}')
    assert wait_for(lambda: EVERY_KIND in hints)
    assert "unrelated" not in hints


class RetargetedWhileGoingLive(InotifyWatch):
    """Gets its targets from another thread just as its first session goes live,
    after that session planned its directories: the daemon's first pass sets the
    targets right after starting the watches, so this moment really comes."""

    def __init__(self, emit: Emit, new_targets: dict[str, WatchTargets]) -> None:
        super().__init__(emit)
        self._new_targets: dict[str, WatchTargets] | None = new_targets

    def live(self, message: str = "") -> None:
        super().live(message)
        new, self._new_targets = self._new_targets, None
        if new is not None:
            setter = threading.Thread(target=self.set_targets, args=(new,))
            setter.start()
            setter.join()


def test_inotify_targets_set_as_a_session_goes_live_are_watched(tmp_path: Path) -> None:
    hints: list[str] = []
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "sys-1").mkdir()
    link = run / "current-system"
    os.symlink(tmp_path / "sys-1", link)
    w = RetargetedWhileGoingLive(hints.append,
                                 {"patching": WatchTargets.of(paths=[str(link)])})
    w.start()
    try:
        # a fresh session, planned from the new targets, went live
        assert wait_for(lambda: w.health().resyncs >= 2), \
            "the new targets were never watched: the wake-up was lost"
        hints.clear()
        tmp_link = run / ".current-system.tmp"
        os.symlink(tmp_path, tmp_link)
        os.replace(tmp_link, link)
        assert wait_for(lambda: "patching" in hints)
    finally:
        w.stop()


def test_inotify_ignores_files_no_spec_depends_on(file_watch: Any) -> None:
    w, hints, tmp = file_watch
    w.set_targets({"firewall": WatchTargets.of(paths=[str(tmp / "ruleset.nft")])})
    w.start()
    assert wait_for(lambda: w.health().resyncs == 1)
    hints.clear()
    (tmp / "other.txt").write_text("x")
    (tmp / "ruleset.nft").write_text("x")  # the last event: everything before it was read
    assert wait_for(lambda: "firewall" in hints)
    assert set(hints) == {"firewall"}  # created, then closed after writing: one or two hints


# -- the daemon: a hint reconciles the kind now, not at the next pass ---------------------
class FileBackedController(ScriptedController):
    kind = "firewall"

    def __init__(self, world: dict[str, str], path: Path) -> None:
        super().__init__(world)
        self.path = path

    def targets(self, spec: ResourceSpec) -> WatchTargets:
        return WatchTargets.of(paths=[str(self.path)])


def test_daemon_reconciles_a_changed_file_long_before_the_next_pass(tmp_path: Path) -> None:
    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text("ok\n")
    baseline = write_baseline(tmp_path, {"firewall": {"ruleset_path": str(ruleset),
                                                      "ruleset_sha256": "0" * 64}})
    world = {"state": "active"}
    ctrl = FileBackedController(world, ruleset)
    actuator = RecordingActuator(world)
    agent = new_agent(make_config(tmp_path, allowDisruptiveOutsideWindow=True), host=NoHost(),
                      actuator=actuator, controllers={"firewall": ctrl})
    states: list[dict[str, object]] = []
    daemon = Daemon(agent, DaemonPolicy(poll_interval=3600, workers=2, debounce=0.05),
                    notifier=Notifier(environ={}),
                    watches=[lambda emit: InotifyWatch(emit, always={str(baseline): EVERY_KIND})],
                    watch_state=states.append)
    runner = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    runner.start()
    try:
        assert wait_for(lambda: daemon.passes_completed == 1)
        assert wait_for(lambda: all(h.up for h in daemon.watch_hub.health()))
        assert wait_for(lambda: ctrl.observe_calls >= 1 and not daemon.hints.pending()
                        and daemon.queue.depth() == 0 and not daemon.queue.processing())
        calls = ctrl.observe_calls
        world["state"] = "failed"  # drift the next pass (in an hour) would find
        ruleset.write_text("changed\n")
        assert wait_for(lambda: actuator.executed != []), "the change was not reconciled"
        assert daemon.passes_completed == 1, "reconciled by the hint, not by a pass"
        assert ctrl.observe_calls > calls
        assert world["state"] == "active"

        write_baseline(tmp_path, {"firewall": {"ruleset_path": str(ruleset),
                                               "ruleset_sha256": "1" * 64}})
        assert wait_for(lambda: daemon.passes_completed == 2), "baseline edit: a whole pass"
        doc = daemon.live_status()
        assert doc["watches"]["condition"]["status"] == "True"  # type: ignore[index]
        assert wait_for(lambda: bool(states) and
                        states[-1]["condition"]["status"] == "True")  # type: ignore[index]
        metrics = agent.metrics.exposition().decode()
        assert 'compliance_agent_watch_up{watch="files"} 1.0' in metrics
    finally:
        daemon.stop()
        runner.join(5)


# -- wiring: the option, and `status` ----------------------------------------------------
def test_the_watches_option_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    from reconciler.service import watch_factories

    names = [make(lambda _k: None).name for make in watch_factories(make_config(tmp_path))]
    assert names == ["files", "units", "nftables"]
    behind_actuator = make_config(tmp_path, actuatorSocket=str(tmp_path / "actuator.sock"))
    watches = [make(lambda _k: None) for make in watch_factories(behind_actuator)]
    # nft monitor needs the privilege only the actuator has: its notices, over the socket
    assert [w.name for w in watches] == ["files", "units", "nftables"]
    from reconciler.runtime.actuator_nft_watch import ActuatorNftWatch

    assert isinstance(watches[2], ActuatorNftWatch)
    assert watch_factories(make_config(tmp_path, watches=False)) == []


def test_status_shows_the_watches_the_daemon_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from reconciler.cli.main import main
    from reconciler.service import _watch_state_recorder
    from tests.unit.test_cli_status import write_config

    world = {"state": "active"}
    write_baseline(tmp_path, {"services": {"units": [{"name": "a.service"}]}})
    agent = new_agent(make_config(tmp_path), host=NoHost(), actuator=RecordingActuator(world),
                      controllers={"services": ScriptedController(world)})
    agent.run_pass()
    hub = WatchHub([FlakyWatch(lambda _k: None, failures=1)], Debouncer(lambda _k: None))
    _watch_state_recorder(agent.store)(dict(hub.status()))
    agent.close()
    cfg = write_config(tmp_path)
    assert main(["status", "--config", str(cfg)]) == 0
    assert "watches: WatchDown flaky: Starting" in capsys.readouterr().out
    assert main(["status", "-o", "json", "--config", str(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["watches"]["condition"]["type"] == "WatchesLive"
    assert doc["watches"]["watches"][0]["up"] is False


class HintOnly:
    """A watch that hints `key` on demand (the source does not matter here)."""

    name = "manual"

    def __init__(self, emit: Emit) -> None:
        self.emit = emit

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def set_targets(self, targets: Any) -> None:
        pass

    def health(self) -> Any:
        from reconciler.runtime.watch import WatchHealth

        return WatchHealth("manual", up=True, reason="Live")


class QuickBackoff(ScriptedController):
    def backoff(self, spec: ResourceSpec) -> tuple[float, float]:
        return (2.0, 5.0)


def test_a_repeat_drift_held_by_the_action_backoff_is_repaired_when_it_ends(
    tmp_path: Path,
) -> None:
    """With watches, a drift seen while its action backs off is retried when the
    backoff ends, not at the next pass (an hour away here)."""
    write_baseline(tmp_path, {"services": {"units": [{"name": "a.service"}]}})
    world = {"state": "failed"}
    actuator = RecordingActuator(world)
    agent = new_agent(make_config(tmp_path, allowDisruptiveOutsideWindow=True), host=NoHost(),
                      actuator=actuator, controllers={"services": QuickBackoff(world)})
    watches: list[HintOnly] = []
    daemon = Daemon(agent, DaemonPolicy(poll_interval=3600, workers=2, debounce=0.01,
                                        echo_window=0.0),
                    notifier=Notifier(environ={}),
                    watches=[lambda emit: watches.append(HintOnly(emit)) or watches[-1]])
    runner = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    runner.start()
    try:
        assert wait_for(lambda: daemon.passes_completed == 1)
        assert len(actuator.executed) == 1  # repaired by the first pass: backoff 2 s now
        world["state"] = "failed"  # it dies again at once
        watches[0].emit("services")
        assert wait_for(lambda: daemon.queue.processing() == set()
                        and agent.status_store.load("services").last_outcome is not None
                        and agent.status_store.load("services").last_outcome.value == "deferred")
        assert wait_for(lambda: len(actuator.executed) == 2), "not retried after the backoff"
        assert daemon.passes_completed == 1
    finally:
        daemon.stop()
        runner.join(5)
