"""Watches: drift-to-detection and drift-to-repair with a poll interval of an hour
(so only a watch explains a quick reaction), and idle CPU / RSS with the watches
on next to polling only.

* unit killed: a real systemd 252 (container), its real system bus, the real
  services controller and actuator; `systemctl kill -s KILL` then the time until
  a reconcile that saw the drift started (detection) and until it was repaired.
* file changed: a real file the firewall kind depends on, rewritten; the time
  until a reconcile that read the new content.
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

TRIALS = 20
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


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return False


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def line(name: str, values: list[float]) -> str:
    return (f"{name:34s} n={len(values):3d}  p50 {pct(values, .5) * 1000:7.1f} ms  "
            f"p95 {pct(values, .95) * 1000:7.1f} ms  max {max(values) * 1000:7.1f} ms")


def queued_latencies(work: Path) -> dict[str, list[float]]:
    """Watch + debouncer only (no controller for these here): the time from the change
    until the kind is handed to the workqueue. nft runs in a throwaway netns."""
    from reconciler.actuator.client import ActuatorClient
    from reconciler.runtime.actuator_nft_watch import ActuatorNftWatch
    from reconciler.runtime.debounce import Debouncer
    from reconciler.runtime.inotify import InotifyWatch
    from reconciler.runtime.nft_watch import NftMonitorWatch
    from reconciler.runtime.watch import SupervisedWatch
    from specs.watch import WatchTargets
    from tests.harness.actuator_process import ActuatorProcess, write_config
    from tests.harness.netns import NetNamespace

    queued: list[tuple[float, str]] = []
    out: dict[str, list[float]] = {}

    def measure(watch: SupervisedWatch, debouncer: Debouncer, key: str,
                changes: dict[str, Callable[[int], None]]) -> None:
        debouncer.start()
        watch.start()
        try:
            wait_for(lambda: watch.health().up)
            for name, change in changes.items():
                values = out.setdefault(name, [])
                for i in range(TRIALS):
                    wait_for(lambda: not debouncer.pending())
                    time.sleep(0.05)
                    queued.clear()
                    t0 = time.monotonic()
                    change(i)
                    if wait_for(lambda: any(k == key for _, k in queued), 5.0):
                        values.append(next(t for t, k in queued if k == key) - t0)
        finally:
            watch.stop()
            debouncer.stop()

    def record(key: str) -> None:
        queued.append((time.monotonic(), key))

    run_dir = work / "run"
    run_dir.mkdir()
    for n in range(2):
        (work / f"system-{n}").mkdir()
    link = run_dir / "current-system"
    link.symlink_to(work / "system-0")

    def switch(i: int) -> None:
        tmp = run_dir / ".current-system.tmp"
        tmp.symlink_to(work / f"system-{(i + 1) % 2}")
        tmp.replace(link)  # what switch-to-configuration does: a rename over the link

    debouncer = Debouncer(record)
    files = InotifyWatch(debouncer.hint)
    files.set_targets({"patching": WatchTargets.of(paths=[str(link)])})
    measure(files, debouncer, "patching", {"/run/current-system switched: queued": switch})

    with NetNamespace("bench-nft") as ns:
        debouncer = Debouncer(record)
        nft = NftMonitorWatch(debouncer.hint, argv=["ip", "netns", "exec", ns.name, "nft",
                                                    "-j", "monitor", "ruleset"])
        nft.set_targets({"firewall": WatchTargets.of(nftables=True)})
        ns.check(["nft", "add", "table", "inet", "filter"])
        ns.check(["nft", "add", "chain", "inet", "filter", "input"])

        def rule_added(i: int) -> None:
            ns.check(["nft", "add", "rule", "inet", "filter", "input", "tcp", "dport",
                      str(20000 + i), "accept"])

        def flushed(i: int) -> None:
            ns.check(["nft", "flush", "ruleset"])
            ns.check(["nft", "add", "table", "inet", "filter"])  # something to flush next

        measure(nft, debouncer, "firewall", {"nft rule added: queued": rule_added,
                                             "nft ruleset flushed: queued": flushed})

        # The same through the root actuator (the NixOS deployment): its own nft
        # monitor in the namespace, notices over its socket to ActuatorNftWatch.
        (work / "actuator").mkdir()
        config = write_config(work / "actuator", {})
        actuator = ActuatorProcess(ns, work / "actuator", config)
        actuator.start()
        try:
            debouncer = Debouncer(record)
            streamed = ActuatorNftWatch(debouncer.hint, client=ActuatorClient(actuator.socket))
            streamed.set_targets({"firewall": WatchTargets.of(nftables=True)})
            ns.check(["nft", "add", "table", "inet", "filter"])
            ns.check(["nft", "add", "chain", "inet", "filter", "input"])
            measure(streamed, debouncer, "firewall", {
                "nft rule added (actuator): queued": rule_added,
                "nft flushed (actuator): queued": flushed})
        finally:
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

        def trials(daemon: Daemon) -> None:
            for _ in range(TRIALS):
                wait_for(lambda: not daemon.queue.processing() and not daemon.hints.pending())
                time.sleep(2.2)  # past the echo window of the last repair
                results.clear()
                t0 = time.time()
                box.check(["systemctl", "kill", "-s", "KILL", "bench-web.service"])
                ok = wait_for(lambda: any(r.drifts and r.executed for _, r in results))
                if not ok:
                    print("unit trial: no repair seen", file=sys.stderr)
                    continue
                first = next(r for _, r in results if r.drifts)
                detect_unit.append(first.started.timestamp() - t0)
                repair_unit.append(next(t for t, r in results if r.executed) - t0)
            for _ in range(TRIALS):
                wait_for(lambda: not daemon.queue.processing() and not daemon.hints.pending())
                time.sleep(2.2)
                results.clear()
                t0 = time.time()
                box.check(["systemctl", "disable", "bench-web.service"])
                if not wait_for(lambda: any(r.drifts and r.executed for _, r in results)):
                    print("disable trial: no repair seen", file=sys.stderr)
                    continue
                first = next(r for _, r in results if r.drifts)
                detect_disable.append(first.started.timestamp() - t0)
                repair_disable.append(next(t for t, r in results if r.executed) - t0)
            for i in range(TRIALS):
                wait_for(lambda: not daemon.queue.processing() and not daemon.hints.pending())
                time.sleep(0.3)
                results.clear()
                t0 = time.time()
                ruleset.write_text(f"{i + 1}\n")
                if wait_for(lambda: bool(results)):
                    detect_file.append(results[0][1].started.timestamp() - t0)

        run(work / "drift", True, trials)

    print(line("unit killed: detection", detect_unit))
    print(line("unit killed: repaired (restarted)", repair_unit))
    print(line("unit disabled: detection", detect_disable))
    print(line("unit disabled: repaired (enabled)", repair_disable))
    print(line("file changed: detection", detect_file))
    for name, values in queued_latencies(work).items():
        print(line(name, values))
    print_idle(idle, idle_seconds)
    print("(poll interval 3600 s; without watches detection waits for the next pass: "
          "up to pollInterval, 60 s by default)")
    return 0 if detect_unit and detect_file else 1


if __name__ == "__main__":
    sys.exit(main())
