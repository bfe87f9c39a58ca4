"""One full pass over every managed resource, and the pass report.

`Agent` is what both the daemon and `reconcile --once` drive. `run_pass`
reconciles the kinds one after another in phase order; the daemon spreads a
pass over its workers phase by phase (daemon.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controllers.base import Phase
from reconciler.actuator.result import Actuator
from reconciler.ops.metrics import AgentMetrics
from reconciler.runtime.clock_health import ClockHealth
from reconciler.runtime.conditions import host_summary
from reconciler.runtime.desired import DesiredState
from reconciler.runtime.guards import GuardPolicy
from reconciler.runtime.reconcile import ReconcileListener, ReconcileResult, Runtime
from reconciler.runtime.registry import ControllerRegistry, UnknownKindError
from reconciler.store.database import Store
from reconciler.store.status import StatusStore
from specs.baseline import BaselineError
from specs.host import Host
from specs.resource import ResourceSpec
from specs.status import HostSummary, Outcome, ResourceStatus
from specs.version import agent_version
from specs.watch import WatchTargets

log = logging.getLogger("compliance_agent.agent")

VERSION = agent_version()


@dataclass
class PassReport:
    started: datetime
    finished: datetime
    wall_seconds: float
    cpu_seconds: float
    results: list[ReconcileResult] = field(default_factory=list)
    error: str | None = None
    summary: HostSummary = HostSummary.InProgress

    @property
    def all_ready(self) -> bool:
        return self.error is None and all(r.ready for r in self.results)

    def one_line(self) -> str:
        if self.error:
            return f"{self.summary}: {self.error}"
        ready = sum(1 for r in self.results if r.ready)
        held = [r.kind for r in self.results if not r.ready]
        tail = f"; not ready: {', '.join(held)}" if held else ""
        return f"{self.summary}: {ready}/{len(self.results)} resources Ready{tail}"


class Agent:
    """One host's reconcile loop, assembled from parts given at construction:
    where desired state comes from, the controllers, the guard policy and the
    clock-health input, the store, the host and actuator, metrics, and the
    listeners that get every result (evidence, ...)."""

    def __init__(
        self,
        *,
        store: Store,
        host: Host,
        actuator: Actuator,
        desired: DesiredState,
        controllers: ControllerRegistry,
        policy: GuardPolicy,
        clock_health: ClockHealth,
        metrics: AgentMetrics,
        metrics_textfile: Path | None = None,
        listeners: Sequence[ReconcileListener] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.clock = clock
        self.store = store
        self.status_store = StatusStore(store)
        self.host = host
        self.actuator = actuator
        self.metrics = metrics
        self.metrics_textfile = metrics_textfile
        self.desired = desired
        self.controllers = controllers
        self.clock_health = clock_health
        self.runtime = Runtime(
            policy, host, actuator, controllers, self.status_store,
            clock_offset_ms=clock_health.effective_offset_ms, clock=clock,
            listeners=(*listeners, self._observe_metrics),
        )
        self.last_pass: PassReport | None = None

    # -- desired state ---------------------------------------------------------
    def specs(self) -> dict[str, ResourceSpec]:
        """The effective specs in pass order: by phase (the clock before anything
        disruptive), then in the registry's reporting order. Raises BaselineError
        or UnknownKindError."""
        _, specs = self.desired.current()
        order = {kind: (self.phase_of(kind), self.controllers.rank(kind)) for kind in specs}
        return dict(sorted(specs.items(), key=lambda kv: order[kv[0]]))

    def watch_targets(self, specs: dict[str, ResourceSpec]) -> dict[str, WatchTargets]:
        """What each kind's observation depends on, for the watches."""
        return {kind: self.controllers[kind].watch_targets(spec) for kind, spec in specs.items()}

    def phase_of(self, kind: str) -> Phase:
        return self.controllers[kind].phase

    # -- one resource / one pass ---------------------------------------------
    def reconcile(self, kind: str, spec: ResourceSpec, dry_run: bool = False) -> ReconcileResult:
        return self.runtime.reconcile(kind, spec, dry_run=dry_run)

    def backoff_remaining(self, result: ReconcileResult) -> float | None:
        """Seconds until the first of the result's planned actions leaves its
        per-action backoff; None if none of them is backing off."""
        now = self.clock()
        waits = []
        for action in result.planned:
            until = self.status_store.backoff_until(f"{result.kind}/{action.key}", now)
            if until is not None and until > now:
                waits.append((until - now).total_seconds())
        return min(waits) if waits else None

    def forget_kinds_except(self, kinds: set[str]) -> None:
        """A kind that left the baseline: its status and its metric series go."""
        for kind in self.status_store.forget_kinds_except(kinds):
            self.metrics.remove_kind(kind)

    def run_pass(self, dry_run: bool = False) -> PassReport:
        started, t0, c0 = self.clock(), time.perf_counter(), time.process_time()
        report = PassReport(started=started, finished=started, wall_seconds=0, cpu_seconds=0)
        try:
            specs = self.specs()
        except (BaselineError, UnknownKindError) as e:
            report.error = str(e)
            report.summary = HostSummary.Failed
        else:
            if not dry_run:
                self.forget_kinds_except(set(specs))
            for kind, spec in specs.items():
                report.results.append(self.reconcile(kind, spec, dry_run=dry_run))
            statuses = [r.status for r in report.results if r.status is not None]
            report.summary = host_summary(statuses)
        return self.finish_pass(report, t0, c0, dry_run)

    def finish_pass(self, report: PassReport, t0: float, c0: float, dry_run: bool) -> PassReport:
        report.finished = self.clock()
        report.wall_seconds = time.perf_counter() - t0
        report.cpu_seconds = time.process_time() - c0
        if not dry_run:
            self.status_store.record_pass(
                report.started, report.finished, report.wall_seconds, report.cpu_seconds,
                report.one_line(), dry_run,
            )
            self.metrics.pass_duration.set(report.wall_seconds)
            self.metrics.pass_cpu.set(report.cpu_seconds)
            self.metrics.passes.inc()
            if report.error is None:
                self.metrics.last_success.set(report.finished.timestamp())
            self.write_metrics()
        self.last_pass = report
        return report

    def write_metrics(self) -> None:
        if self.metrics_textfile is not None:
            try:
                self.metrics.write_textfile(self.metrics_textfile)
            except OSError as e:
                log.warning("cannot write metrics textfile", extra={
                    "reason": "MetricsWriteFailed", "detail": f"{self.metrics_textfile}: {e}"})

    def _observe_metrics(self, res: ReconcileResult) -> None:
        if res.dry_run:
            return
        self.metrics.reconciles.labels(res.kind, res.outcome.value).inc()
        for r in res.results:
            for rec in r.records:
                self.metrics.actions.labels(res.kind, rec.action, rec.result).inc()
        if res.status is not None:
            self.metrics.observe_status(res.status)
        self.metrics.observe_facts(res.kind, res.facts)
        offset = self.clock_health.ntp_offset_ms
        if offset is not None:
            self.metrics.ntp_offset.set(offset / 1000.0)

    # -- status for operators --------------------------------------------------
    def status_snapshot(self) -> dict[str, Any]:
        statuses = self.status_store.load_all()
        return status_document(statuses, self.status_store.last_pass(), self.clock())

    def close(self) -> None:
        self.store.close()


def status_document(
    statuses: list[ResourceStatus], last_pass: dict[str, Any] | None, now: datetime
) -> dict[str, Any]:
    return {
        "summary": (host_summary(statuses) if statuses else
                    HostSummary.Current if last_pass else HostSummary.InProgress).value,
        "generated_at": now.isoformat(),
        "last_pass": last_pass,
        "resources": [s.model_dump(mode="json") for s in statuses],
    }


def exit_code_for(report: PassReport) -> int:
    """`reconcile --once`: 0 all Ready, 1 drift remains or deferred, 2 error."""
    if report.error is not None:
        return 2
    if report.all_ready:
        return 0
    if any(r.error and r.outcome is Outcome.failed and r.observed is None for r in report.results):
        return 2
    return 1
