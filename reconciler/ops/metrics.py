"""Prometheus metrics: one registry per agent (no global state), exported as a
textfile (atomic: temp file in the same directory, then rename) and served on
the status unix socket.

Unknown is absent, never a made-up number (Prometheus conventions): the clock
offset has no sample until a time source was observed, and
`resource_ready`/`resource_drifted` have no sample for a kind whose condition
is Unknown; `resource_condition{kind,type,status}` (one series per status,
1 for the current one, like kube-state-metrics) says which are Unknown."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeGuard

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from specs.status import ConditionStatus, ConditionType, ResourceStatus

disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series are noise here

NS = "compliance_agent"
log = logging.getLogger("compliance_agent.metrics")


# Called before each export with the metrics to update (e.g. from outbox stats).
CollectHook = Callable[["AgentMetrics"], None]


class OptionalGauge(Collector):
    """An unlabelled gauge with no sample until `set`, and none again after `clear`."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._value: float | None = None
        registry.register(self)

    def set(self, value: float) -> None:
        self._value = float(value)

    def clear(self) -> None:
        self._value = None

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        if self._value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=self._value)


class AgentMetrics:
    def __init__(self, version: str, collect_hooks: Sequence[CollectHook] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info(f"{NS}_build", "Agent build information.", registry=r).info(
            {"version": version, "python": platform.python_version()}
        )
        self.ready = Gauge(f"{NS}_resource_ready", "1 if the resource is Ready, 0 if not; "
                           "absent while unknown.", ["kind"], registry=r)
        self.drifted = Gauge(f"{NS}_resource_drifted", "1 if the resource has drift, 0 if not; "
                             "absent while unknown.", ["kind"], registry=r)
        self.condition = Gauge(
            f"{NS}_resource_condition", "1 for the condition's current status (True, False "
            "or Unknown), 0 for the others.", ["kind", "type", "status"], registry=r)
        self.condition_since = Gauge(
            f"{NS}_resource_condition_last_transition_timestamp_seconds",
            "When the condition last changed status (Unix time).", ["kind", "type"], registry=r)
        self.reconciles = Counter(f"{NS}_reconcile", "Reconciles by kind and outcome.",
                                  ["kind", "result"], registry=r)
        self.actions = Counter(f"{NS}_actions", "Actions by kind, action type and result.",
                               ["kind", "action", "result"], registry=r)
        self.pass_duration = Gauge(f"{NS}_pass_duration_seconds",
                                   "Wall time of the last full pass.", registry=r)
        self.pass_cpu = Gauge(f"{NS}_pass_cpu_seconds", "CPU time of the last full pass.",
                              registry=r)
        self.last_success = Gauge(f"{NS}_last_successful_pass_timestamp_seconds",
                                  "End of the last pass that completed (Unix time).", registry=r)
        self.passes = Counter(f"{NS}_passes", "Full passes completed.", registry=r)
        self.queue_depth = Gauge(f"{NS}_workqueue_depth", "Keys waiting in the workqueue.",
                                 registry=r)
        self.queue_retries = Counter(f"{NS}_workqueue_retries",
                                     "Keys requeued with backoff since start.", registry=r)
        self.outbox_depth = Gauge(f"{NS}_outbox_depth", "Evidence bundles not yet delivered.",
                                  registry=r)
        self.outbox_oldest = Gauge(f"{NS}_outbox_oldest_age_seconds",
                                   "Age of the oldest undelivered bundle.", registry=r)
        self.outbox_dead = Gauge(f"{NS}_outbox_dead_letters",
                                 "Bundles the control plane rejected permanently (kept).",
                                 registry=r)
        self.ntp_offset = OptionalGauge(
            f"{NS}_clock_offset_seconds",
            "Last observed clock offset from NTP; absent while no time source is known.", r)
        self.up = Gauge(f"{NS}_up", "1 while the daemon runs.", registry=r)
        self.fact = Gauge(f"{NS}_resource_fact",
                          "Numeric facts a controller reports (snapshot age, generation, "
                          "element counts, ...), by kind and fact name.",
                          ["kind", "fact"], registry=r)
        self._collect_hooks = tuple(collect_hooks)
        self._fact_names: dict[str, set[str]] = {}  # kind -> fact labels set so far

    def observe_status(self, status: ResourceStatus) -> None:
        for gauge, ctype in ((self.ready, ConditionType.Ready),
                             (self.drifted, ConditionType.Drifted)):
            value = _known(status, ctype)
            if value is None:
                with contextlib.suppress(KeyError):
                    gauge.remove(status.kind)
            else:
                gauge.labels(status.kind).set(value)
        for c in status.conditions:
            for st in ConditionStatus:
                self.condition.labels(status.kind, c.type.value, st.value).set(
                    1 if c.status is st else 0)
            self.condition_since.labels(status.kind, c.type.value).set(
                c.last_transition_time.timestamp()
            )

    def observe_facts(self, kind: str, facts: dict[str, object]) -> None:
        """Export numeric facts (and one level of numeric dicts) as gauges."""
        for name, value in facts.items():
            if isinstance(value, dict):
                for sub, inner in value.items():
                    if _numeric(inner):
                        self._set_fact(kind, f"{name}.{sub}", float(inner))
            elif _numeric(value):
                self._set_fact(kind, name, float(value))

    def _set_fact(self, kind: str, name: str, value: float) -> None:
        self.fact.labels(kind, name).set(value)
        self._fact_names.setdefault(kind, set()).add(name)

    def remove_kind(self, kind: str) -> None:
        """Every gauge series of a kind that left the baseline (counters are history)."""
        for g in (self.ready, self.drifted):
            with contextlib.suppress(KeyError):
                g.remove(kind)
        for ctype in ConditionType:
            with contextlib.suppress(KeyError):
                self.condition_since.remove(kind, ctype.value)
            for st in ConditionStatus:
                with contextlib.suppress(KeyError):
                    self.condition.remove(kind, ctype.value, st.value)
        for name in self._fact_names.pop(kind, set()):
            with contextlib.suppress(KeyError):
                self.fact.remove(kind, name)

    def exposition(self) -> bytes:
        for hook in self._collect_hooks:
            try:
                hook(self)
            except Exception:  # metrics must never take the agent down
                log.debug("metrics collect hook failed", exc_info=True)
        return generate_latest(self.registry)

    def write_textfile(self, path: Path) -> None:
        """Atomic: write a temp file next to `path`, fsync, rename over it."""
        data = self.exposition()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # node-exporter runs as another user
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _numeric(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _known(status: ResourceStatus, ctype: ConditionType) -> int | None:
    """1/0 for a True/False condition; None (no sample) when missing or Unknown."""
    c = status.condition(ctype)
    if c is None or c.status is ConditionStatus.unknown:
        return None
    return 1 if c.status is ConditionStatus.true else 0
