"""Drift-to-detection and drift-to-repair through the real daemon, for the kinds
whose repair backs off for a long time (part of bench_watches).

* nft: the real firewall controller and actuator on real nft in a throwaway
  network namespace, hinted by the direct-mode watch (`nft -j monitor ruleset`
  in that namespace), as an agent that changes the host itself runs it.
* /run/current-system: a systemd 252 container laid out like NixOS
  (tests/integration/nixos_standin: generations, profile, `nix-env`,
  `switch-to-configuration`), the real patching controller and the real
  rebuild transaction (switch in a transient unit, `systemctl
  is-system-running --wait` health check), with the maintenance window open;
  hinted by the inotify watch on the container's `/run`.

Every trial is a fresh daemon with a fresh state directory on a host at its
baseline, so the drift meets a daemon that has not acted yet. That is on
purpose: a repair is recorded as an attempt of its action, and a second drift
of the same kind soon after is held by the per-action backoff (firewall: 10 s,
doubling to 15 min, forgotten after 15 min without another attempt; patching:
1 h, doubling to a day), which is crash-loop and fight protection, not
latency. 20 repairs in one daemon would measure mostly that backoff; the bench
keeps the default bounds (the firewall spec's `reapply_backoff_*` could lower
them). What a second drift right after a repair costs is measured on its own
(`flushed again`): it is repaired when the backoff ends, without waiting for
the next pass.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specs.errors import ComplianceAgentError
from tests.harness.wait import wait_for as wait_until

if TYPE_CHECKING:
    from reconciler.runtime.daemon import Daemon
    from reconciler.runtime.reconcile import ReconcileResult
    from reconciler.runtime.watch import Emit, Watch, WatchFactory, WatchHealth
    from specs.actions import Action
    from specs.host import Host
    from specs.watch import WatchTargets
    from tests.harness.sdbox import SystemdContainer

POLL = 3600.0  # the next pass is an hour away: only a watch explains a quick reaction
ECHO_PAST = 2.5  # past the daemon's echo window (2 s) after a repair
RULESET = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nft" / "baseline.nft"
GEN_UNIT = "[Unit]\nDescription=bench generation {name}\n[Service]\nExecStart=/bin/sleep infinity\n"

Results = list[tuple[float, "ReconcileResult"]]


class TrialFailed(ComplianceAgentError):
    """A trial did not reach the state it measures (said on stderr, not counted)."""


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    return wait_until(cond, timeout, interval=0.005)  # finer: trials wait on short events


def settled(daemon: Daemon) -> bool:
    return (not daemon.hints.pending() and not daemon.queue.processing()
            and daemon.queue.depth() == 0)


@contextmanager
def running_daemon(state: Path, baseline: Mapping[str, Any], host: Host, actuator: Any,
                   watches: Sequence[WatchFactory], results: Results,
                   **config: Any) -> Iterator[Daemon]:
    """A daemon on a fresh state directory, after its first pass and the watches'
    start-up resync have been reconciled."""
    from reconciler.ops.sdnotify import Notifier
    from reconciler.runtime.daemon import Daemon, DaemonPolicy
    from reconciler.service import new_agent
    from tests.unit.conftest import make_config

    state.mkdir(parents=True)
    (state / "baseline.json").write_text(json.dumps({"version": 1, "policy_version": "1.0",
                                                     **baseline}))
    agent = new_agent(make_config(state, **config), host=host, actuator=actuator,
                      listeners=(lambda r: results.append((time.time(), r)),))
    daemon = Daemon(agent, DaemonPolicy(poll_interval=POLL, workers=2),
                    notifier=Notifier(environ={}), watches=watches)
    runner = threading.Thread(target=daemon.run, name="bench-daemon", daemon=True)
    runner.start()
    try:
        ready = (wait_for(lambda: daemon.passes_completed >= 1, 60.0)
                 and wait_for(lambda: all(h.up for h in daemon.watch_hub.health()))
                 and wait_for(lambda: settled(daemon)))
        time.sleep(0.3)  # a resync hinted as the watch went live is pending by now
        if not (ready and wait_for(lambda: settled(daemon))):
            raise TrialFailed(f"the daemon did not settle: {daemon.watch_hub.status()}")
        if any(r.executed for _, r in results):
            raise TrialFailed("the host was not at its baseline when the daemon started")
        yield daemon
    finally:
        daemon.stop()
        runner.join(10)


def drift_to_repair(daemon: Daemon, results: Results, t0: float,
                    timeout: float = 30.0) -> tuple[float, float]:
    """(detection, repair) seconds after `t0`: the start of the first reconcile that saw
    a drift, and the time the reconcile whose action removed it reported."""
    def repaired() -> bool:
        return any(r.drifts and r.executed and not r.remaining for _, r in list(results))

    if not wait_for(repaired, timeout):
        seen = [(r.outcome.value, r.error, [d.reason for d in r.drifts]) for _, r in results]
        h = daemon.hints
        raise TrialFailed(
            f"no repair within {timeout:.0f} s: reconciles {seen}; hints {h.hints_total}, "
            f"emitted {h.emitted_total}, pending {h.pending()}; processing "
            f"{daemon.queue.processing()}; watches {daemon.watch_hub.health()}")
    first = next(r for _, r in results if r.drifts)
    fixed = next(t for t, r in results if r.drifts and r.executed and not r.remaining)
    return first.started.timestamp() - t0, fixed - t0


# -- nftables --------------------------------------------------------------------------
def nft_trials(work: Path, trials: int, again: int) -> dict[str, list[float]]:
    """`trials` each of a rule added and the ruleset flushed; `again` trials of a second
    flush right after a repair (held by the action's backoff)."""
    from reconciler.actuator.local import LocalActuator
    from reconciler.runtime.inotify import InotifyWatch
    from reconciler.runtime.nft_watch import NftMonitorWatch
    from specs.watch import EVERY_KIND
    from tests.harness.netns import NetNamespace

    out: dict[str, list[float]] = {}
    ruleset = work / "ruleset.nft"
    shutil.copy(RULESET, ruleset)
    firewall = {"firewall": {"ruleset_path": str(ruleset),
                             "ruleset_sha256": hashlib.sha256(ruleset.read_bytes()).hexdigest()}}

    with NetNamespace("bench-nft") as ns:
        monitor = ["ip", "netns", "exec", ns.name, "nft", "-j", "monitor", "ruleset"]

        def trial(name: str, n: int, drift: Callable[[int], None], repeat: bool) -> None:
            # the host at its baseline: the daemon's first pass has nothing to apply
            ns.check(["nft", "-f", str(ruleset)])
            state = work / f"nft-{name.replace(' ', '-')}-{n}"
            baseline = str(state / "baseline.json")
            watches: list[WatchFactory] = [
                lambda emit: NftMonitorWatch(emit, argv=monitor),
                lambda emit: InotifyWatch(emit, always={baseline: EVERY_KIND})]
            results: Results = []
            with running_daemon(state, firewall, ns, LocalActuator(ns), watches, results) as d:
                results.clear()
                t0 = time.time()
                drift(n)
                detect, repair = drift_to_repair(d, results, t0)
                out.setdefault(f"nft {name}: detection", []).append(detect)
                out.setdefault(f"nft {name}: repaired", []).append(repair)
                if not repeat:
                    return
                # a second drift soon after: the repair was an attempt of the action
                wait_for(lambda: settled(d))
                time.sleep(ECHO_PAST)
                wait_for(lambda: settled(d))
                results.clear()
                t0 = time.time()
                drift(n)
                detect, repair = drift_to_repair(d, results, t0)
                if not any(v.reason == "BackingOff" for _, r in results for vs in r.verdicts
                           for v in vs):
                    raise TrialFailed("the second repair was not held by the backoff")
                out.setdefault(f"nft {name} again: detection", []).append(detect)
                out.setdefault(f"nft {name} again: repaired", []).append(repair)

        def rule_added(i: int) -> None:  # a port opened
            ns.check(["nft", "add", "rule", "inet", "filter", "input", "tcp", "dport",
                      str(20000 + i), "accept"])

        def flushed(_i: int) -> None:
            ns.check(["nft", "flush", "ruleset"])

        for i in range(trials):
            _counted(trial, "rule added", i, rule_added, False)
        for i in range(trials):
            _counted(trial, "ruleset flushed", i, flushed, i < again)
    return out


# -- /run/current-system ---------------------------------------------------------------
@dataclass
class ContainerPaths:
    """The inotify watch, for a host that is a container: the specs name paths inside
    it, watched through its root (/proc/PID/root) from here. Only the paths are
    translated; the watch is the daemon's own."""

    inner: Watch
    root: str

    @property
    def name(self) -> str:
        return self.inner.name

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    def set_targets(self, targets: Mapping[str, WatchTargets]) -> None:
        self.inner.set_targets({k: replace(t, paths=frozenset(self.root + p for p in t.paths))
                                for k, t in targets.items()})

    def health(self) -> WatchHealth:
        return self.inner.health()


def patching_trials(box: SystemdContainer, work: Path, trials: int) -> dict[str, list[float]]:
    """Another generation activated (as `nixos-rebuild switch` would: profile, then
    its switch-to-configuration); repaired by the rebuild transaction back to the
    baseline's target. Timed from the new /run/current-system link's mtime (the
    container shares this clock): the switch's own unit work before it is not drift."""
    from reconciler.actuator.local import LocalActuator
    from reconciler.runtime.inotify import InotifyWatch
    from specs.watch import EVERY_KIND
    from tests.integration.nixos_standin import (
        PROFILE,
        StandinGeneration,
        install_nixos_standin,
    )

    gens = [StandinGeneration(n, units={"bench-gen.service": GEN_UNIT.format(name=n)})
            for n in ("desired", "other")]
    paths = install_nixos_standin(box, gens, active="desired")
    desired, other = paths["desired"], paths["other"]
    now = datetime.now(UTC)
    window = f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=2):%H:%M}"
    patching = {"patching": {"target": desired, "require_reboot_alert": False}}
    out: dict[str, list[float]] = {}

    def activate(path: str) -> None:
        box.check(["nix-env", "-p", PROFILE, "--set", path])
        box.check([f"{path}/bin/switch-to-configuration", "switch"])

    def trial(n: int) -> None:
        if box.stat("/run/current-system").link_target != desired:
            activate(desired)  # a trial that failed left the other generation active
        state = work / f"patching-{n}"
        baseline = str(state / "baseline.json")
        root = str(box.root)

        def files(emit: Emit) -> ContainerPaths:
            return ContainerPaths(InotifyWatch(emit, always={baseline: EVERY_KIND}), root)

        results: Results = []
        actuator = LocalActuator(box, rebuild_health_timeout=30)
        with running_daemon(state, patching, box, actuator, [files], results,
                            maintenanceWindow=window, rebuildHealthCheckTimeout=30) as d:
            results.clear()
            activate(other)
            t0 = box.stat("/run/current-system").mtime
            detect, repair = drift_to_repair(d, results, t0, timeout=60.0)
            if box.stat("/run/current-system").link_target != desired:
                raise TrialFailed("repaired, but /run/current-system is not the target")
            ran = [a for _, r in results for a in _actions(r)]
            if [a.type for a in ran] != ["NixosRebuild"]:
                raise TrialFailed(f"expected one rebuild, ran {ran}")
        out.setdefault("/run/current-system switched: detection", []).append(detect)
        out.setdefault("/run/current-system switched: repaired", []).append(repair)

    if box.run(["systemctl", "is-system-running", "--wait"], 60).stdout.strip() != "running":
        raise TrialFailed("the container is not running: the health check would fail")
    for n in range(trials):
        _counted(trial, n)
    return out


def _actions(result: ReconcileResult) -> list[Action]:
    return [r.action for r in result.executed]


def _counted(trial: Callable[..., None], *args: Any) -> None:
    try:
        trial(*args)
    except TrialFailed as e:
        print(f"trial not counted: {e}", file=sys.stderr)
