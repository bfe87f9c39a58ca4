"""The long-running service: workers over a workqueue, passes on a jittered
timer, systemd notify/watchdog, the status socket, clean SIGTERM.

Threads: N workers (never two on one key, by the workqueue), the status
server, and the main thread, which schedules passes and pings the watchdog.
The watchdog is pinged only while the loop is healthy: if a worker has been
stuck on one key for longer than the watchdog interval, pings stop and
systemd restarts the service (a hung loop must not look alive). The same
holds while a `HealthInput` given at construction reports a reason (e.g.
evidence cannot be written: disk full), or while the last
`WORKER_ERROR_LIMIT` reconciles all raised (the store cannot save their status
or evidence: a full disk usually fails there first): the host summary is
Failed with the reason, in `status` and the systemd status line.

A pass runs in phases (`controllers.base.Phase`): the keys of the next phase
are queued only once every key of the current one has been reconciled, so the
clock reading of a pass is taken before any disruptive action of that pass is
judged, however many workers there are. A retry of a later phase's key that
comes due meanwhile waits for its phase.

Everything else is given at construction: the policy (poll interval, workers,
status socket), `companions` (started after READY, told when a pass is done,
stopped before the store closes: the control-plane connection), `background`
jobs run on the scheduling thread, and `closers` run last at shutdown.

`watches` are factories of event sources (runtime/watch.py), each given the
daemon's hint callable at construction. A hint is debounced per key
(runtime/debounce.py) and then queues the key like a retry would: the worker
reconciles the kind from the specs of the last pass, reading the host again;
the baseline file's key (`specs.watch.EVERY_KIND`) asks for a whole pass. Each
pass gives the watches the targets of the current specs.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from reconciler.ops.sdnotify import Notifier
from reconciler.ops.status_server import StatusServer
from reconciler.runtime.agent import Agent, PassReport
from reconciler.runtime.conditions import host_summary
from reconciler.runtime.debounce import Debouncer
from reconciler.runtime.reconcile import ReconcileResult
from reconciler.runtime.registry import UnknownKindError
from reconciler.runtime.watch import WatchCollector, WatchFactory, WatchHub
from reconciler.runtime.workqueue import ShutDown, WorkQueue
from specs.backoff import Backoff
from specs.baseline import BaselineError
from specs.resource import ResourceSpec
from specs.status import HostSummary, Outcome
from specs.watch import EVERY_KIND

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("compliance_agent.daemon")


# Consecutive reconciles that raised (controller faults are contained in
# runtime.reconcile, so these are store failures) before the loop counts as failed.
WORKER_ERROR_LIMIT = 3


def jittered(interval: float, rng: random.Random, fraction: float = 0.1) -> float:
    """interval +- fraction, so a fleet started together does not poll in lockstep."""
    return interval * (1 + rng.uniform(-fraction, fraction))


@dataclass(frozen=True)
class DaemonPolicy:
    poll_interval: float  # seconds between passes (jittered +-10%)
    workers: int
    status_socket: Path | None = None
    debounce: float = 0.2  # seconds a key's watch hints must be quiet before it is queued
    echo_window: float = 2.0  # seconds after a remediation whose hints are its own echo


class HealthInput(Protocol):
    """Something the loop's health depends on besides its workers."""

    def unhealthy_reason(self) -> str | None:
        """None while fine; else a short reason (starts with a CamelCase word)."""


class Companion(Protocol):
    """A part that lives beside the loop (e.g. the control-plane connection)."""

    def start(self) -> None:
        """Called once, right after READY; must not block."""

    def pass_done(self) -> None:
        """Called after each pass (e.g. to deliver the evidence it wrote)."""

    def stop(self) -> None:
        """Called once at shutdown, before the closers (the store is still open)."""


@dataclass
class _Pass:
    started: datetime
    t0: float
    c0: float
    waves: list[list[str]]  # keys of the phases not started yet, in phase order
    pending: set[str]  # keys of the running phase not reconciled yet
    phase: int
    results: dict[str, ReconcileResult] = field(default_factory=dict)


class Daemon:
    def __init__(
        self,
        agent: Agent,
        policy: DaemonPolicy,
        *,
        notifier: Notifier | None = None,
        rng: random.Random | None = None,
        wake: threading.Event | None = None,
        companions: Sequence[Companion] = (),
        background: Sequence[Callable[[], None]] = (),
        closers: Sequence[Callable[[], None]] = (),
        health_inputs: Sequence[HealthInput] = (),
        watches: Sequence[WatchFactory] = (),
        watch_state: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        self.agent = agent
        self.health_inputs = tuple(health_inputs)
        self._worker_errors = 0  # consecutive; reset by any reconcile that completes
        self._last_worker_error = ""
        self.policy = policy
        self.notifier = notifier or Notifier()
        self.rng = rng or random.Random()
        self.queue = WorkQueue(Backoff(base=2.0, cap=float(max(policy.poll_interval, 10))))
        self.stop_event = threading.Event()
        # Set by SIGHUP and by whoever holds it (an admitted order): pass now.
        self.wake_event = wake or threading.Event()
        self.companions = tuple(companions)
        self.background = tuple(background)  # periodic jobs on the scheduling thread
        self.closers = tuple(closers)  # run last at shutdown, in order, before the store closes
        self._specs: dict[str, ResourceSpec] = {}
        self._lock = threading.Lock()
        self._pass: _Pass | None = None
        self._busy_since: dict[str, float] = {}
        self._retries_seen = 0
        self.status_server: StatusServer | None = None
        self.passes_completed = 0
        self.hints = Debouncer(self._hinted, quiet=policy.debounce,
                               max_delay=max(1.0, policy.debounce), echo=policy.echo_window)
        self.watch_hub = WatchHub([make(self.hints.hint) for make in watches], self.hints)
        if self.watch_hub.watches:
            agent.metrics.registry.register(WatchCollector(self.watch_hub))
        self._watch_state = watch_state  # where `status` reads the watches' health from
        self._watch_state_written: dict[str, object] | None = None

    # -- lifecycle -------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def on_term(signum: int, _frame: FrameType | None) -> None:
            log.info("stopping", extra={"reason": signal.Signals(signum).name})
            self.stop()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, lambda *_: self.wake_event.set())  # reload = pass now

    def stop(self) -> None:
        self.stop_event.set()
        self.wake_event.set()
        self.queue.shutdown()

    def run(self) -> int:
        if self.policy.status_socket is not None:
            self.status_server = StatusServer(
                self.policy.status_socket, self.agent.metrics.exposition, self.live_status
            )
            self.status_server.start()
        self.agent.metrics.up.set(1)
        workers = [
            threading.Thread(target=self._worker, name=f"worker-{i}", daemon=True)
            for i in range(self.policy.workers)
        ]
        for w in workers:
            w.start()
        self.notifier.ready("started; first pass running")
        for companion in self.companions:
            try:
                companion.start()
            except Exception:
                log.exception("companion failed to start", extra={"reason": "CompanionError"})
        self.watch_hub.start()
        log.info("started", extra={"detail": f"poll {self.policy.poll_interval}s, "
                                             f"{self.policy.workers} workers"})
        try:
            self._schedule_loop()
        finally:
            self.notifier.stopping()
            self.queue.shutdown()
            deadline = time.monotonic() + 0.8
            for w in workers:
                w.join(max(0.0, deadline - time.monotonic()))
            if self.status_server is not None:
                self.status_server.stop()
            self.watch_hub.stop()
            self.agent.metrics.up.set(0)
            self.agent.write_metrics()
            for hook in [*(c.stop for c in reversed(self.companions)), *self.closers]:
                try:
                    hook()
                except Exception:
                    log.exception("shutdown hook failed")
            self.agent.close()
            log.info("stopped")
        return 0

    # -- scheduling --------------------------------------------------------------
    def _schedule_loop(self) -> None:
        next_pass = time.monotonic()
        tick = 1.0
        if self.notifier.watchdog_interval:
            tick = min(tick, self.notifier.watchdog_interval / 3)
        while not self.stop_event.is_set():
            now = time.monotonic()
            if self.wake_event.is_set():
                self.wake_event.clear()
                next_pass = now
            if now >= next_pass and self._pass is None:
                self._start_pass()
                next_pass = now + jittered(self.policy.poll_interval, self.rng)
            for job in self.background:
                try:
                    job()
                except Exception:
                    log.exception("background job failed", extra={"reason": "BackgroundError"})
            self._maybe_watchdog()
            self._update_queue_metrics()
            self._record_watch_state()
            self.stop_event.wait(min(tick, max(0.05, next_pass - time.monotonic())))

    def request_pass(self) -> None:
        """Run a pass as soon as possible (e.g. after an order was admitted)."""
        self.wake_event.set()

    def _hinted(self, key: str) -> None:
        """A debounced watch hint: queue the kind (its spec of the last pass), or a pass."""
        if key == EVERY_KIND:
            self.request_pass()
            return
        with self._lock:
            known = key in self._specs
        if known:
            self.queue.add(key)

    def _start_pass(self) -> None:
        try:
            specs = self.agent.specs()
        except (BaselineError, UnknownKindError) as e:
            log.error("no valid desired state", extra={"reason": "BaselineInvalid",
                                                       "detail": str(e)})
            self.notifier.status(f"Failed: {e}")
            return
        self.agent.forget_kinds_except(set(specs))
        if self.watch_hub.watches:
            self.watch_hub.set_targets(self.agent.watch_targets(specs))
        by_phase: dict[int, list[str]] = {}
        for kind in specs:
            by_phase.setdefault(self.agent.phase_of(kind), []).append(kind)
        waves = [by_phase[p] for p in sorted(by_phase)]
        with self._lock:
            self._specs = specs
            self._pass = _Pass(datetime.now(UTC), time.perf_counter(), time.process_time(),
                               waves=waves, pending=set(), phase=-1)
            first = self._next_wave_locked()
        if not specs:
            self._finish_pass()
        for kind in first:
            self.queue.add(kind)

    def _next_wave_locked(self) -> list[str]:
        """Starts the next phase of the running pass; its keys, to be queued."""
        p = self._pass
        if p is None or not p.waves:
            return []
        wave = p.waves.pop(0)
        p.pending = set(wave)
        p.phase = self.agent.phase_of(wave[0])
        return wave

    def _finish_pass(self) -> None:
        with self._lock:
            p, self._pass = self._pass, None
        if p is None:
            return
        statuses = self.agent.status_store.load_all()
        report = PassReport(started=p.started, finished=p.started, wall_seconds=0, cpu_seconds=0,
                            summary=host_summary(statuses) if statuses else HostSummary.Current)
        report.results = list(p.results.values())
        self.agent.finish_pass(report, p.t0, p.c0, dry_run=False)
        self.passes_completed += 1
        reasons = self.unhealthy_reasons()
        if reasons:
            report.summary = HostSummary.Failed
        self.notifier.status("; ".join([report.one_line(), *reasons]))
        for companion in self.companions:
            try:
                companion.pass_done()
            except Exception:
                log.exception("companion failed after a pass", extra={"reason": "CompanionError"})

    # -- workers -------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            try:
                key = self.queue.get(timeout=0.5)
            except ShutDown:
                return
            if key is None:
                continue
            self._busy_since[key] = time.monotonic()
            try:
                self._process(key)
            finally:
                self._busy_since.pop(key, None)
                self.queue.done(key)

    def _process(self, kind: str) -> None:
        with self._lock:
            spec = self._specs.get(kind)
            # A retry of a later phase's key waits: its phase queues it again.
            held = (spec is not None and self._pass is not None
                    and self.agent.phase_of(kind) > self._pass.phase)
        if spec is None:
            self.queue.forget(kind)
            return
        if held:
            return
        self.hints.begin(kind)
        acted = False
        try:
            result = self.agent.reconcile(kind, spec)
            acted = bool(result.executed)
        except Exception as e:  # runtime.reconcile already contains controller faults
            log.exception("worker error", extra={"resource": kind, "reason": "WorkerError"})
            with self._lock:
                self._worker_errors += 1
                self._last_worker_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            self.queue.add_rate_limited(kind)
            return
        finally:
            self.hints.end(kind, acted)
        with self._lock:
            self._worker_errors = 0
        if result.outcome is Outcome.failed:
            self.queue.add_rate_limited(kind)
        else:
            self.queue.forget(kind)
            if result.outcome is Outcome.deferred and self.watch_hub.watches:
                self._retry_when_backoff_ends(kind, result)
        finish = False
        wave: list[str] = []
        with self._lock:
            if self._pass is not None and kind in self._pass.pending:
                self._pass.pending.discard(kind)
                self._pass.results[kind] = result
                if not self._pass.pending:
                    wave = self._next_wave_locked()
                    finish = not wave
        for key in wave:
            self.queue.add(key)
        if finish:
            self._finish_pass()

    def _retry_when_backoff_ends(self, kind: str, result: ReconcileResult) -> None:
        """With watches, a drift held by its action's backoff is looked at again when
        the backoff ends, not at the next pass: the watch saw it at once, and it
        will not hint again while the unit stays down. The backoff grows with each
        attempt, so this cannot spin; beyond the next pass, the pass will do."""
        try:
            delay = self.agent.backoff_remaining(result)
        except Exception:
            log.exception("cannot read the action backoff", extra={"resource": kind})
            return
        if delay is not None and delay < self.policy.poll_interval:
            self.queue.add_after(kind, delay + 0.05)

    # -- health ----------------------------------------------------------------------
    def unhealthy_reasons(self) -> list[str]:
        reasons = []
        with self._lock:
            if self._worker_errors >= WORKER_ERROR_LIMIT:
                reasons.append(f"ReconcileFailing: the last {self._worker_errors} reconciles "
                               f"could not save their status or evidence "
                               f"({self._last_worker_error})")
        for source in self.health_inputs:
            try:
                reason = source.unhealthy_reason()
            except Exception as e:  # a broken health input is itself unhealthy
                reason = f"HealthInputError: {type(e).__name__}"
            if reason:
                reasons.append(reason)
        return reasons

    def loop_healthy(self) -> bool:
        limit = self.notifier.watchdog_interval or 300.0
        now = time.monotonic()
        if any(now - since >= limit for since in list(self._busy_since.values())):
            return False
        return not self.unhealthy_reasons()

    def _maybe_watchdog(self) -> None:
        if self.notifier.watchdog_interval and self.loop_healthy():
            self.notifier.watchdog()

    def _update_queue_metrics(self) -> None:
        m = self.agent.metrics
        m.queue_depth.set(self.queue.depth() + self.queue.waiting())
        delta = self.queue.retries_total - self._retries_seen
        if delta > 0:
            m.queue_retries.inc(delta)
            self._retries_seen = self.queue.retries_total

    def health_collector(self) -> LoopHealthCollector:
        """Prometheus view of `unhealthy_reasons` (the composition root registers it)."""
        return LoopHealthCollector(self)

    def _record_watch_state(self) -> None:
        if self._watch_state is None:
            return
        state = self.watch_hub.status()
        # only `up`/`reason` changes are worth a write; counters are in the metrics
        brief: dict[str, object] = {
            "condition": state["condition"],
            "watches": [{k: w[k] for k in ("name", "up", "reason", "message", "since")}
                        for w in state["watches"]]}
        if brief != self._watch_state_written:
            try:
                self._watch_state(brief)
                self._watch_state_written = brief
            except Exception:
                log.exception("cannot record the watches' state")

    def live_status(self) -> dict[str, object]:
        doc = self.agent.status_snapshot()
        doc["workqueue"] = {"depth": self.queue.depth(), "waiting": self.queue.waiting(),
                            "processing": sorted(self.queue.processing()),
                            "retries": self.queue.retries_total}
        doc["loop_healthy"] = self.loop_healthy()
        doc["watches"] = self.watch_hub.status()
        reasons = self.unhealthy_reasons()
        if reasons:
            doc["summary"] = HostSummary.Failed.value
            doc["unhealthy"] = reasons
        return doc


LOOP_HEALTH_METRICS = ("compliance_agent_loop_healthy", "compliance_agent_unhealthy_reason")


class LoopHealthCollector:
    """`compliance_agent_loop_healthy` (0/1) and one `compliance_agent_unhealthy_reason`
    series per current reason, labelled by its first word (e.g. EvidenceUnwritable)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        reasons = self.daemon.unhealthy_reasons()
        healthy_name, reason_name = LOOP_HEALTH_METRICS
        yield GaugeMetricFamily(healthy_name, "1 while the loop feeds the "
                                "watchdog: no stuck worker, no unhealthy input.",
                                value=1.0 if self.daemon.loop_healthy() else 0.0)
        family = GaugeMetricFamily(reason_name, "1 for each reason "
                                   "the host summary is Failed by the loop's health.",
                                   labels=["reason"])
        for reason in sorted({r.split(":", 1)[0] for r in reasons}):
            family.add_metric([reason], 1.0)
        yield family
