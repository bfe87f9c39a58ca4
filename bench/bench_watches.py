"""Watches: drift-to-detection and drift-to-repair with a poll interval of an hour
(so only a watch explains a quick reaction), and idle CPU / RSS with the watches
on next to polling only. Every drift goes through the real daemon (its
debouncer, workqueue and workers) and the real controller and actuator of its
kind; "detection" is the time from the change to the start of the reconcile
that saw the drift, "repaired" until that kind's reconcile whose action removed
it reported (the listener's `ReconcileResult`).

* unit killed / disabled: a real systemd 252 (container), its real system bus,
  the real services controller and actuator; `systemctl kill -s KILL` /
  `systemctl disable`. One daemon for all trials: the baseline's
  `restart_backoff_base` is 50 ms, so a repair does not hold the next one.
* file changed: a real file a kind depends on, rewritten; the time until a
  reconcile that read the new content.
* nft rule added / ruleset flushed: real nft in a throwaway network namespace,
  the real firewall controller and actuator, the direct-mode watch
  (`nft -j monitor ruleset` in that namespace).
* /run/current-system switched: the container laid out like NixOS (stand-in
  generations, profile, nix-env, switch-to-configuration); another generation
  activated; repaired by the real rebuild transaction (switch in a transient
  unit, health check) inside an open maintenance window.

The firewall's and patching's repairs are attempts of an action with a long
per-action backoff (by default 10 s doubling to 15 min; 1 h doubling to a day),
kept at its defaults here. So their trials each run a fresh daemon on a fresh state
directory with the host at its baseline: each measures the first repair of a
drift. A second flush right after a repair is measured on its own ("again"):
held by that backoff, repaired when it ends (bench/watch_repair.py).

* nft through the root actuator (the NixOS deployment): the actuator process in
  the namespace runs the monitor and streams notices to ActuatorNftWatch, and
  serves the daemon's nft reads (PrivilegedReadHost) and its apply
  (ActuatorClient); the same fresh-daemon trials as direct mode ("(actuator)"),
  and the watch and debouncer alone, until the kind is queued ("queued").

* idle: the daemon with the same baseline for IDLE_SECONDS, watches off, then on;
  CPU seconds (scaled to an hour) and RSS growth of this process.

Run: `python -m bench.bench_watches` (root: it boots a container). For a real
hour of idle, run the two idle measurements side by side in two processes:
`python -m bench.bench_watches --idle-only polling --idle-seconds 3600` and the
same with `watches`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.watch_repair import actuator_nft_trials, nft_trials, patching_trials, wait_for

TRIALS = 20
AGAIN_TRIALS = 3  # a second flush right after a repair: each waits out a 10 s backoff
IDLE_SECONDS = 60.0
IDLE_POLL = 20  # passes run during the idle measurement too, as in production
WEB_UNIT = """[Unit]
Description=bench unit
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def line(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:40s} n=  0  (no trial succeeded: see stderr)"
    return (f"{name:40s} n={len(values):3d}  p50 {pct(values, .5) * 1000:7.1f} ms  "
            f"p95 {pct(values, .95) * 1000:7.1f} ms  max {max(values) * 1000:7.1f} ms")


def actuator_queued(work: Path) -> dict[str, list[float]]:
    """nft notices through the root actuator (the NixOS deployment): its own nft
    monitor in a throwaway netns, notices over its socket to ActuatorNftWatch;
    watch and debouncer only, the time from the change until the kind is handed
    to the workqueue (detection and repair through the daemon and this actuator:
    watch_repair.actuator_nft_trials)."""
    from reconciler.actuator.client import ActuatorClient
    from reconciler.runtime.actuator_nft_watch import ActuatorNftWatch
    from reconciler.runtime.debounce import Debouncer
    from specs.watch import WatchTargets
    from tests.harness.actuator_process import ActuatorProcess, write_config
    from tests.harness.netns import NetNamespace

    queued: list[tuple[float, str]] = []
    out: dict[str, list[float]] = {}

    def record(key: str) -> None:
        queued.append((time.monotonic(), key))

    with NetNamespace("bench-nft") as ns:
        def rule_added(i: int) -> None:
            ns.check(["nft", "add", "rule", "inet", "filter", "input", "tcp", "dport",
                      str(20000 + i), "accept"])

        def flushed(i: int) -> None:
            ns.check(["nft", "flush", "ruleset"])
            ns.check(["nft", "add", "table", "inet", "filter"])  # something to flush next

        (work / "actuator").mkdir()
        config = write_config(work / "actuator", {})
        actuator = ActuatorProcess(ns, work / "actuator", config)
        actuator.start()
        debouncer = Debouncer(record)
        streamed = ActuatorNftWatch(debouncer.hint, client=ActuatorClient(actuator.socket))
        streamed.set_targets({"firewall": WatchTargets.of(nftables=True)})
        ns.check(["nft", "add", "table", "inet", "filter"])
        ns.check(["nft", "add", "chain", "inet", "filter", "input"])
        debouncer.start()
        streamed.start()
        try:
            wait_for(lambda: streamed.health().up)
            for name, change in {"nft rule added (actuator): queued": rule_added,
                                 "nft flushed (actuator): queued": flushed}.items():
                values = out.setdefault(name, [])
                for i in range(TRIALS):
                    wait_for(lambda: not debouncer.pending())
                    time.sleep(0.05)
                    queued.clear()
                    t0 = time.monotonic()
                    change(i)
                    if wait_for(lambda: any(k == "firewall" for _, k in queued), 5.0):
                        values.append(next(t for t, k in queued if k == "firewall") - t0)
        finally:
            streamed.stop()
            debouncer.stop()
            actuator.stop()
    return out


def print_idle(idle: dict[str, tuple[float, int]], seconds: float) -> None:
    for label, (cpu, rss) in idle.items():
        print(f"idle, {label:13s}: CPU {cpu:.3f} s in {seconds:.0f} s at pollInterval "
              f"{IDLE_POLL} s (= {cpu * 3600 / seconds:.1f} s/hour), "
              f"RSS growth {rss / 1024:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_watches")
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS,
                        help="length of each idle measurement (default %(default)s)")
    parser.add_argument("--idle-only", choices=("polling", "watches"),
                        help="measure only this idle case, nothing else")
    args = parser.parse_args(argv)
    idle_seconds: float = args.idle_seconds
    idle_cases = [("polling only", False), ("watches on", True)]
    if args.idle_only:
        idle_cases = [c for c in idle_cases if c[1] == (args.idle_only == "watches")]

    from reconciler.actuator.local import LocalActuator
    from reconciler.ops.sdnotify import Notifier
    from reconciler.runtime.daemon import Daemon, DaemonPolicy
    from reconciler.runtime.inotify import InotifyWatch
    from reconciler.runtime.reconcile import ReconcileResult
    from reconciler.runtime.unit_watch import UnitWatch
    from reconciler.runtime.watch import Emit, WatchFactory
    from reconciler.service import new_agent
    from specs.watch import EVERY_KIND
    from tests.harness.sdbox import SystemdContainer, ensure_rootfs
    from tests.unit.conftest import make_config

    work = Path(tempfile.mkdtemp(prefix="bench-watches-"))
    with SystemdContainer(work / "box", rootfs=ensure_rootfs()) as box:
        box.install_unit("bench-web.service", WEB_UNIT)
        box.check(["systemctl", "enable", "--now", "bench-web.service"])
        ruleset = work / "ruleset.nft"
        ruleset.write_text("0\n")
        address = f"unix:path={box.root}/run/dbus/system_bus_socket"
        results: list[tuple[float, ReconcileResult]] = []

        def run(state: Path, watches_on: bool, body: Callable[[Daemon], None],
                poll: float = 3600) -> None:
            state.mkdir()
            (state / "baseline.json").write_text(json.dumps({
                "version": 1, "policy_version": "1.0",
                "services": {"units": [{"name": "bench-web.service"}],
                             "restart_backoff_base": 0.05, "restart_backoff_cap": 0.1},
            }))
            agent = new_agent(make_config(state), host=box, actuator=LocalActuator(box),
                              listeners=(lambda r: results.append((time.time(), r)),))
            baseline = str(state / "baseline.json")

            def files(emit: Emit) -> InotifyWatch:
                return InotifyWatch(emit, always={baseline: EVERY_KIND, str(ruleset): "services"})

            def units(emit: Emit) -> UnitWatch:
                return UnitWatch(emit, address=address)

            factories: list[WatchFactory] = [files, units] if watches_on else []
            daemon = Daemon(agent, DaemonPolicy(poll_interval=poll, workers=2),
                            notifier=Notifier(environ={}), watches=factories)
            t = threading.Thread(target=daemon.run, daemon=True)
            t.start()
            try:
                wait_for(lambda: daemon.passes_completed >= 1)
                if watches_on:
                    wait_for(lambda: all(h.up for h in daemon.watch_hub.health()))
                body(daemon)
            finally:
                daemon.stop()
                t.join(10)

        # -- idle: polling only, then watches on; after a warm-up run, so that
        # one-time imports (controllers, the store) count for neither
        run(work / "warm-up", False, lambda _d: None)
        idle: dict[str, tuple[float, int]] = {}
        for label, on in idle_cases:
            def measure(d: Daemon, label: str = label) -> None:
                # after the start-up resync of the watches has been reconciled
                wait_for(lambda: not d.hints.pending() and not d.queue.processing()
                         and d.queue.depth() == 0)
                time.sleep(1.0)
                r0, c0 = rss_kib(), time.process_time()
                time.sleep(idle_seconds)
                idle[label] = (time.process_time() - c0, rss_kib() - r0)
            r_before = rss_kib()
            run(work / f"idle-{int(on)}", on, measure, poll=IDLE_POLL)
            idle[label] = (idle[label][0], rss_kib() - r_before)
        if args.idle_only:
            print_idle(idle, idle_seconds)
            return 0

        # -- drift: unit killed, file changed
        detect_unit: list[float] = []
        repair_unit: list[float] = []
        detect_file: list[float] = []
        detect_disable: list[float] = []
        repair_disable: list[float] = []

        def unit_trials(daemon: Daemon, drift: list[str], detect: list[float],
                        repair: list[float]) -> None:
            for _ in range(TRIALS):
                wait_for(lambda: not daemon.queue.processing() and not daemon.hints.pending())
                time.sleep(2.2)  # past the echo window of the last repair
                results.clear()
                t0 = time.time()
                box.check(drift)
                if not wait_for(lambda: any(r.drifts and r.executed for _, r in results)):
                    print(f"{' '.join(drift)}: no repair seen", file=sys.stderr)
                    continue
                first = next(r for _, r in results if r.drifts)
                detect.append(first.started.timestamp() - t0)
                repair.append(next(t for t, r in results if r.executed) - t0)

        def trials(daemon: Daemon) -> None:
            unit_trials(daemon, ["systemctl", "kill", "-s", "KILL", "bench-web.service"],
                        detect_unit, repair_unit)
            unit_trials(daemon, ["systemctl", "disable", "bench-web.service"],
                        detect_disable, repair_disable)
            for i in range(TRIALS):
                wait_for(lambda: not daemon.queue.processing() and not daemon.hints.pending())
                time.sleep(0.3)
                results.clear()
                t0 = time.time()
                ruleset.write_text(f"{i + 1}\n")
                if wait_for(lambda: bool(results)):
                    detect_file.append(results[0][1].started.timestamp() - t0)

        run(work / "drift", True, trials)
        patching = patching_trials(box, work, TRIALS)
    nft = nft_trials(work, TRIALS, AGAIN_TRIALS)
    behind_actuator = actuator_nft_trials(work, TRIALS)
    streamed = actuator_queued(work)

    print(line("unit killed: detection", detect_unit))
    print(line("unit killed: repaired (restarted)", repair_unit))
    print(line("unit disabled: detection", detect_disable))
    print(line("unit disabled: repaired (enabled)", repair_disable))
    print(line("file changed: detection", detect_file))
    for name, values in [*nft.items(), *behind_actuator.items(), *patching.items(),
                         *streamed.items()]:
        print(line(name, values))
    print_idle(idle, idle_seconds)
    print("(poll interval 3600 s; without watches detection waits for the next pass: "
          "up to pollInterval, 60 s by default)")
    measured = [detect_unit, detect_file, *nft.values(), *behind_actuator.values(),
                *patching.values()]
    complete = len(nft) == 6 and len(behind_actuator) == 4 and len(patching) == 2
    return 0 if all(measured) and complete else 1


if __name__ == "__main__":
    sys.exit(main())
