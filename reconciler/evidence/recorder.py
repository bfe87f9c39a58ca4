"""Turns reconcile results and order verdicts into evidence bundles.

A bundle is written for every condition transition, every action outcome
(run, failed, or held by a guard — a hold is recorded when it starts or its
reason changes, not on every pass it persists), and a periodic snapshot per
resource. The write is durable (fsync + commit, outbox row in the same
transaction) before the reconcile that made it returns.

A write that fails (disk full, read-only filesystem, a broken database) is
logged, counted and never stops the pass; after `failure_threshold`
consecutive failures `unhealthy_reason()` says evidence cannot be written,
which the daemon turns into a Failed host summary and a silent watchdog
(reconciler.runtime.daemon). One success clears it. `EvidenceCollector`
exposes the counts to Prometheus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from reconciler.evidence.writer import EvidenceWriter
from reconciler.runtime.reconcile import ReconcileResult
from reconciler.store.evidence_index import count_check
from specs.evidence import CHAIN_BREAK_CHECK

log = logging.getLogger("compliance_agent.evidence")


class EvidenceRecorder:
    def __init__(
        self,
        writer: EvidenceWriter,
        snapshot_interval: float,
        clock_offset_ms: Callable[[], float | None],
        monotonic: Callable[[], float] = time.monotonic,
        failure_threshold: int = 3,
    ) -> None:
        self.writer = writer
        self.snapshot_interval = snapshot_interval
        self.clock_offset_ms = clock_offset_ms
        # The snapshot interval runs on the monotonic clock: a wall-clock step
        # must neither stop periodic snapshots nor hurry them.
        self._monotonic = monotonic
        self._last_bundle: dict[str, float] = {}
        self._holds: dict[str, frozenset[tuple[str, str]]] = {}
        self._force: set[str] = set()
        self._lock = threading.Lock()
        self.failure_threshold = max(1, failure_threshold)
        self.failures = 0  # total, for the metric
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_success_at: float | None = None  # wall-clock seconds, recorded only

    def unhealthy_reason(self) -> str | None:
        """Why evidence cannot be written now, or None (daemon health input)."""
        with self._lock:
            if self.consecutive_failures < self.failure_threshold:
                return None
            return (f"EvidenceUnwritable: the last {self.consecutive_failures} evidence writes "
                    f"failed ({self.last_error})")

    def request_snapshot(self, kinds: list[str] | None = None) -> None:
        """Next reconcile of these kinds (all, if None) writes a bundle (collect_evidence)."""
        with self._lock:
            self._force.add("*") if kinds is None else self._force.update(kinds)

    def why(self, res: ReconcileResult) -> str | None:
        """The reason this result deserves a bundle, or None."""
        with self._lock:
            holds = frozenset(
                (a.action.key, next(v.reason for v in vs if not v.allowed))
                for a, vs in zip(res.results, res.verdicts, strict=False)
                if vs and not all(v.allowed for v in vs)
            )
            held_changed = holds != self._holds.get(res.kind, frozenset())
            self._holds[res.kind] = holds
            forced = res.kind in self._force or "*" in self._force
            self._force.discard(res.kind)
            last = self._last_bundle.get(res.kind)
        if res.transitions:
            return "condition transition"
        if res.executed:
            return "action outcome"
        if holds and held_changed:
            return "action held by a guard"
        if forced:
            return "requested by order"
        if last is None or self._monotonic() - last >= self.snapshot_interval:
            return "periodic snapshot"
        return None

    def __call__(self, res: ReconcileResult) -> None:
        if res.dry_run:
            return
        reason = self.why(res)
        if reason is None:
            return
        facts: dict[str, Any] = dict(res.facts)
        offset = self.clock_offset_ms()
        if offset is not None:
            facts.setdefault("ntp_offset_ms", offset)
        for r in res.results:
            if r.rollback_generation is not None:
                facts["rollback_generation"] = r.rollback_generation
                facts.setdefault("rollback_available", True)
        facts["evidence_reason"] = reason
        order_id = next((a.action.order_id for a in res.results if a.action.order_id), None)
        verdicts = [v.model_dump(mode="json") for vs in res.verdicts for v in vs]
        try:
            self.writer.record(
                check=res.kind,
                outcome=res.outcome,
                pre_state=res.pre_observed,
                post_state=res.observed,
                actions=res.action_records,
                order_id=order_id,
                error=res.error or _remaining_summary(res),
                facts=facts,
                guard_verdicts=verdicts,
                timestamp_start=res.started,
                timestamp_end=res.finished,
            )
        except Exception as e:
            # Disk full or a broken store: loud, counted, and the pass goes on.
            with self._lock:
                self.failures += 1
                self.consecutive_failures += 1
                self.last_error = f"{type(e).__name__}: {str(e)[:200]}"
            log.exception("cannot write evidence", extra={"resource": res.kind,
                                                          "reason": "EvidenceWriteFailed"})
            return
        with self._lock:
            self._last_bundle[res.kind] = self._monotonic()
            if self.consecutive_failures >= self.failure_threshold:
                log.warning("evidence is written again after %d failed write(s)",
                            self.consecutive_failures,
                            extra={"reason": "EvidenceWritable"})
            self.consecutive_failures = 0
            self.last_error = None
            self.last_success_at = time.time()  # recorded for the metric, never scheduled on


def _remaining_summary(res: ReconcileResult) -> str | None:
    if not res.remaining:
        return None
    return "; ".join(f"{d.reason}: {d.field}" for d in res.remaining)[:2000]


_NS = "compliance_agent_evidence"
# Series names (the counter is exported as ..._total).
EVIDENCE_METRICS = (f"{_NS}_write_failures", f"{_NS}_write_failures_consecutive",
                    f"{_NS}_last_write_timestamp_seconds", f"{_NS}_chain_breaks")


class EvidenceCollector:
    """Prometheus view of evidence writing: failures, last success, chain breaks."""

    def __init__(self, recorder: EvidenceRecorder) -> None:
        self.recorder = recorder

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        r = self.recorder
        failures, consecutive, last_write, breaks_name = EVIDENCE_METRICS
        yield CounterMetricFamily(failures, "Evidence bundles that could not "
                                  "be written (disk full, read-only, database error).",
                                  value=r.failures)
        yield GaugeMetricFamily(consecutive, "Evidence writes failed "
                                "since the last success.", value=r.consecutive_failures)
        if r.last_success_at is not None:
            yield GaugeMetricFamily(last_write, "Wall-clock time of "
                                    "the last evidence bundle written.", value=r.last_success_at)
        try:
            breaks = count_check(r.writer.store, CHAIN_BREAK_CHECK)
        except Exception:  # the store is what failed: the write metrics above say so
            return
        yield GaugeMetricFamily(breaks_name, "Signed chain-break bundles in the "
                                "chain: starts where the chain could not be continued.",
                                value=breaks)
