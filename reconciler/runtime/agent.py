"""Assembly: config -> store, host, actuator, controllers, runtime; one full pass.

`Agent` is what both the daemon and `reconcile --once` drive. Desired state is
read again on every pass (level-triggered): an edited baseline file, a newer
signed baseline or a newly admitted order simply show up in the next pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.actuator.result import Actuator
from reconciler.ops.metrics import AgentMetrics
from reconciler.runtime.conditions import host_summary
from reconciler.runtime.reconcile import ReconcileListener, ReconcileResult, Runtime
from reconciler.runtime.registry import ORDER, load_controller
from reconciler.store.database import Store, open_store
from reconciler.store.status import StatusStore
from specs.baseline import Baseline, BaselineError, load_baseline
from specs.config import AgentConfig
from specs.host import Host
from specs.resource import ResourceSpec
from specs.status import HostSummary, Outcome, ResourceStatus
from specs.version import agent_version

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


class DesiredState:
    """Where desired state comes from: the baseline (local file, or a newer
    signed one when a source is plugged in) plus triggers from admitted orders."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.last_good: Baseline | None = None
        self.source = str(cfg.baseline_path)
        self.baseline_loader: Callable[[], tuple[Baseline, str]] = self._load_local
        self.trigger_source: Callable[[], dict[str, list[Any]]] = dict

    def _load_local(self) -> tuple[Baseline, str]:
        return load_baseline(self.cfg.baseline_path), str(self.cfg.baseline_path)

    def current(self) -> tuple[Baseline, dict[str, ResourceSpec]]:
        """The baseline and the effective per-kind specs; raises BaselineError if
        there has never been a valid baseline."""
        try:
            baseline, self.source = self.baseline_loader()
            self.last_good = baseline
        except BaselineError as e:
            if self.last_good is None:
                raise
            log.error("baseline invalid; keeping the last good one",
                      extra={"reason": "BaselineInvalid", "detail": str(e)})
            baseline = self.last_good
        specs = baseline.resources()
        egress = specs.get("egress")
        if egress is not None:
            # an empty host list means "the config's allowedHosts" (one source of truth)
            specs["egress"] = egress.with_config_defaults(  # type: ignore[attr-defined]
                self.cfg.allowed_hosts, self.cfg.egress_table)
        triggers = self.trigger_source()
        for kind, spec in list(specs.items()):
            extra = triggers.get(kind) or triggers.get("*")
            if extra:
                specs[kind] = spec.model_copy(update={"triggers": [*spec.triggers, *extra]})
        return baseline, _ordered(specs)


def _ordered(specs: dict[str, ResourceSpec]) -> dict[str, ResourceSpec]:
    rank = {k: i for i, k in enumerate(ORDER)}
    return dict(sorted(specs.items(), key=lambda kv: rank.get(kv[0], len(rank))))


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        host: Host | None = None,
        actuator: Actuator | None = None,
        store: Store | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: AgentMetrics | None = None,
        controllers: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.store = store or open_store(cfg.database_path)
        self.status_store = StatusStore(self.store)
        self.host = host or host_for(cfg)
        self.actuator = actuator or actuator_for(cfg, self.host)
        self.metrics = metrics or AgentMetrics(VERSION)
        self.desired = DesiredState(cfg)
        self._controllers: dict[str, Any] = dict(controllers or {})
        self.listeners: list[ReconcileListener] = [self._observe_metrics]
        self.runtime = Runtime(
            cfg, self.host, self.actuator, self._controllers, self.status_store,
            clock=clock, listeners=self.listeners,
        )
        self.last_pass: PassReport | None = None

    # -- desired state ---------------------------------------------------------
    def specs(self) -> dict[str, ResourceSpec]:
        _, specs = self.desired.current()
        for kind in specs:
            if kind not in self._controllers:
                self._controllers[kind] = load_controller(kind)
        return specs

    # -- one resource / one pass ---------------------------------------------
    def reconcile(self, kind: str, spec: ResourceSpec, dry_run: bool = False) -> ReconcileResult:
        return self.runtime.reconcile(kind, spec, dry_run=dry_run)

    def run_pass(self, dry_run: bool = False) -> PassReport:
        started, t0, c0 = self.clock(), time.perf_counter(), time.process_time()
        report = PassReport(started=started, finished=started, wall_seconds=0, cpu_seconds=0)
        try:
            specs = self.specs()
        except (BaselineError, KeyError) as e:
            report.error = str(e)
            report.summary = HostSummary.Failed
        else:
            if not dry_run:
                self.status_store.forget_kinds_except(set(specs))
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
        if self.cfg.metrics_textfile is not None:
            try:
                self.metrics.write_textfile(self.cfg.metrics_textfile)
            except OSError as e:
                log.warning("cannot write metrics textfile", extra={
                    "reason": "MetricsWriteFailed", "detail": f"{self.cfg.metrics_textfile}: {e}"})

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
        if self.runtime.clock_offset_ms is not None:
            self.metrics.ntp_offset.set(self.runtime.clock_offset_ms / 1000.0)

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


def host_for(cfg: AgentConfig) -> Host:
    """The host the agent observes. Under the NixOS module the agent has no
    capabilities, so the few privileged reads (nft listings, LUKS headers) go
    to the root actuator; everything else runs locally."""
    from reconciler.actuator.host import LocalHost

    if cfg.actuator_socket is None:
        return LocalHost()
    from reconciler.actuator.client import ActuatorClient, PrivilegedReadHost

    return PrivilegedReadHost(LocalHost(), ActuatorClient(cfg.actuator_socket))


def actuator_for(cfg: AgentConfig, host: Host) -> Actuator:
    """In-process actuator, or the root actuator's socket when configured. A
    refusal or an unreachable actuator becomes a failed (or deferred) result,
    never an exception in the loop."""
    if cfg.actuator_socket is not None:
        from reconciler.actuator.client import ActuatorClient

        return ActuatorClient(cfg.actuator_socket, errors_as_results=True)
    from reconciler.actuator.local import LocalActuator

    return LocalActuator(host, rebuild_health_timeout=cfg.rebuild_health_check_timeout)
