"""Reconcile one resource: observe -> diff -> plan -> guards -> act -> observe -> conditions.

This is the contract every caller (the daemon's workers, `reconcile --once`,
tests) goes through; it never raises for a controller's or a host's fault.
A bug or a failing command becomes outcome `failed` with the error recorded,
so one broken controller cannot stop the loop or other resources.

What the result means for the caller (the workqueue):
* outcome `failed`          -> requeue the key with per-key backoff
* anything else             -> requeue at the next poll
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from controllers.base import (
    DEFAULT_BACKOFF,
    Controller,
    KindController,
    ObservedT,
    SpecT,
)
from reconciler.actuator.result import ActionResult, Actuator, dry_run_result, skipped_result
from reconciler.runtime import guards
from reconciler.runtime.conditions import desired_conditions, set_condition
from reconciler.store.status import StatusStore
from specs.actions import Action
from specs.drift import Drift, Remedy
from specs.host import Host
from specs.resource import ResourceSpec
from specs.status import ActionRecord, Condition, ConditionType, Outcome, ResourceStatus

log = logging.getLogger("compliance_agent.runtime")


@dataclass
class ReconcileResult:
    kind: str
    generation: str
    started: datetime
    finished: datetime
    dry_run: bool
    observed: dict[str, Any] | None = None
    drifts: list[Drift] = field(default_factory=list)
    planned: list[Action] = field(default_factory=list)
    results: list[ActionResult] = field(default_factory=list)
    verdicts: list[list[guards.GuardVerdict]] = field(default_factory=list)
    remaining: list[Drift] = field(default_factory=list)
    outcome: Outcome = Outcome.success
    error: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    status: ResourceStatus | None = None
    transitions: list[Condition] = field(default_factory=list)
    pre_observed: dict[str, Any] | None = None

    @property
    def executed(self) -> list[ActionResult]:
        return [r for r in self.results if any(rec.result in ("ok", "failed", "timeout")
                                                for rec in r.records)]

    @property
    def action_records(self) -> list[ActionRecord]:
        out: list[ActionRecord] = []
        for r in self.results:
            out.extend(r.records)
        return out

    @property
    def ready(self) -> bool:
        return not self.remaining and self.error is None


# Gets every finished reconcile (evidence writer, metrics, ...); must not raise.
ReconcileListener = Callable[[ReconcileResult], None]


class Runtime:
    """Reconciles one resource at a time with the controller of its kind.

    Kind-agnostic: everything specific to a kind comes from its controller,
    and the clock guard's input is `clock_offset_ms` (see clock_health.py).
    `listeners` get every result, in the given order.
    """

    def __init__(
        self,
        policy: guards.GuardPolicy,
        host: Host,
        actuator: Actuator,
        controllers: Mapping[str, KindController],
        status_store: StatusStore | None,
        *,
        clock_offset_ms: Callable[[], float | None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        listeners: Sequence[ReconcileListener] = (),
    ) -> None:
        self.policy = policy
        self.host = host
        self.actuator = actuator
        self.controllers = controllers
        self.status_store = status_store
        self.clock_offset_ms = clock_offset_ms
        self.clock = clock
        self.listeners = tuple(listeners)

    def reconcile(self, kind: str, spec: ResourceSpec, dry_run: bool = False) -> ReconcileResult:
        started = self.clock()
        res = ReconcileResult(
            kind=kind, generation=spec.generation, started=started, finished=started,
            dry_run=dry_run,
        )
        steps = _Steps(self, res)
        try:
            self.controllers[kind].run_with(steps, spec)
        except Exception as e:  # a controller bug must not stop the loop
            log.error(
                "reconcile crashed",
                extra={"resource": kind, "reason": "ControllerError",
                       "detail": traceback.format_exc(limit=5)},
            )
            res.outcome = Outcome.failed
            res.error = f"controller error: {type(e).__name__}: {e}"
        res.finished = self.clock()
        self._update_status(kind, spec, res, steps.backoff)
        for listener in self.listeners:
            try:
                listener(res)
            except Exception:
                log.exception("reconcile listener failed", extra={"resource": kind})
        return res

    def guard_context(self, dry_run: bool, admitted: frozenset[str],
                      backoff_until: datetime | None) -> guards.GuardContext:
        p = self.policy
        return guards.GuardContext(
            now=self.clock(), dry_run=dry_run, window=p.window,
            allow_outside_window=p.allow_outside_window, max_skew_ms=p.max_skew_ms,
            clock_offset_ms=self.clock_offset_ms(), admitted_orders=admitted,
            backoff_until=backoff_until,
        )

    def _update_status(self, kind: str, spec: ResourceSpec, res: ReconcileResult,
                       backoff: tuple[float, float]) -> None:
        prev = (self.status_store.load(kind) if self.status_store
                else ResourceStatus(kind=kind))
        fixed = [d for d in res.drifts if d not in res.remaining]
        detail = _guard_detail(res)
        desired = desired_conditions(res.outcome, res.remaining, fixed, res.error, detail)
        conditions = list(prev.conditions)
        transitions: list[Condition] = []
        for ctype in ConditionType:
            status, reason, message = desired[ctype]
            conditions, changed = set_condition(
                conditions, ctype, status, reason, message, res.finished, spec.generation
            )
            if changed:
                transitions.append(next(c for c in conditions if c.type == ctype))
        res.transitions = transitions
        res.status = ResourceStatus(
            kind=kind, generation=spec.generation, conditions=conditions,
            last_pass_at=res.finished, last_outcome=res.outcome, observed=res.observed,
            last_actions=res.action_records or prev.last_actions,
        )
        if res.dry_run or self.status_store is None:
            return
        self.status_store.save(res.status, transitions)
        if res.ready:
            self.status_store.clear_stable_backoff(kind, res.finished, backoff[1])


class _Steps:
    """The steps of one reconcile, generic over the controller's spec/observed types."""

    def __init__(self, runtime: Runtime, res: ReconcileResult) -> None:
        self.rt = runtime
        self.res = res
        self.backoff = DEFAULT_BACKOFF

    def __call__(self, ctrl: Controller[SpecT, ObservedT], spec: SpecT, /) -> None:
        rt, res, kind = self.rt, self.res, self.res.kind
        self.backoff = base, cap = ctrl.backoff(spec)
        step = 1
        if not res.dry_run:
            # First, what finished while we were away (then observe what it left).
            for action_type in sorted(ctrl.transactional_actions):
                late = rt.actuator.collect_finished(action_type)
                if late is not None:
                    res.results.append(late)
                    res.verdicts.append([])  # judged when it was requested; keeps pairs aligned
                    step = max([step, *(r.step + 1 for r in late.records)])
        try:
            observed = ctrl.observe(rt.host, spec)
        except Exception as e:
            res.outcome = Outcome.failed
            res.error = f"observe failed: {type(e).__name__}: {e}"
            log.warning("observe failed", extra={"resource": kind, "reason": "ObserveFailed",
                                                  "detail": str(e)})
            return
        res.pre_observed = res.observed = observed.model_dump(mode="json")
        res.drifts = list(ctrl.diff(spec, observed))
        res.planned = list(ctrl.plan(spec, observed, res.drifts)) if res.drifts else []
        res.facts = dict(ctrl.facts(spec, observed))

        acted = False
        admitted = frozenset(t.order_id for t in spec.triggers)
        for action in res.planned:
            backoff_key = f"{kind}/{action.key}"
            ctx = rt.guard_context(
                res.dry_run, admitted,
                (rt.status_store.backoff_until(backoff_key, rt.clock())
                 if rt.status_store and not res.dry_run else None),
            )
            if res.dry_run:
                # report which guard *would* hold it, then stop: nothing runs
                live = guards.evaluate(action, replace(ctx, dry_run=False))
                verdicts = [*live, guards.DRY_RUN_VERDICT]
            else:
                verdicts = guards.evaluate(action, ctx)
            res.verdicts.append(verdicts)
            if guards.allowed(verdicts):
                result = rt.actuator.execute(action, step_start=step)
                acted = True
                if rt.status_store is not None:
                    rt.status_store.note_attempt(backoff_key, rt.clock(), base, cap)
                log.info(
                    "action %s", "ok" if result.ok else "failed",
                    extra={"resource": kind, "reason": action.reason or action.type,
                           "detail": action.describe() + ("" if result.ok else
                                                         f" -> {result.error}")},
                )
            else:
                refusal = verdicts[-1]
                if refusal.reason == "DryRun":
                    held = next((v for v in verdicts if not v.allowed), refusal)
                    detail = ("dry run" if held is refusal
                              else f"dry run; would be held: {held.message}")
                    result = dry_run_result(action, step_start=step, detail=detail)
                else:
                    result = skipped_result(action, refusal.guard_result, refusal.message, step)
                    log.info("action held by guard", extra={
                        "resource": kind, "reason": refusal.reason, "detail": refusal.message})
            res.results.append(result)
            step += len(result.records)

        if acted:
            try:
                observed = ctrl.observe(rt.host, spec)
                res.observed = observed.model_dump(mode="json")
                res.remaining = list(ctrl.diff(spec, observed))
                res.facts = dict(ctrl.facts(spec, observed))
            except Exception as e:
                res.remaining = res.drifts
                res.error = f"observe after acting failed: {type(e).__name__}: {e}"
        else:
            res.remaining = res.drifts
        res.outcome = decide_outcome(res)


def decide_outcome(res: ReconcileResult) -> Outcome:
    """The single outcome recorded for this reconcile (and its evidence)."""
    for r in res.results:
        if r.outcome is Outcome.reverted:
            return Outcome.reverted
    refusals = [next(x for x in v if not x.allowed) for v in res.verdicts
                if v and not guards.allowed(v)]
    if any(v.outcome is Outcome.rejected for v in refusals):
        return Outcome.rejected
    if any(not r.ok and r.records and r.records[-1].result in ("failed", "timeout", "refused")
           for r in res.results):
        return Outcome.failed
    if res.error is not None:
        return Outcome.failed
    if not res.remaining:
        return Outcome.success
    if any(v.outcome is Outcome.alert for v in refusals):
        return Outcome.alert
    if any(v.outcome is Outcome.deferred or v.reason == "DryRun" for v in refusals):
        return Outcome.deferred
    if all(d.remedy is Remedy.alert for d in res.remaining):
        return Outcome.alert
    if not res.planned:
        # remediable drift with nothing to do now (e.g. systemd is already retrying)
        return Outcome.deferred
    ran = res.executed
    if ran and all(r.ok and r.action.completes_later for r in ran):
        return Outcome.deferred  # started and still running: the next pass judges it
    return Outcome.failed


def _guard_detail(res: ReconcileResult) -> str:
    held = [v[-1] for v in res.verdicts if v and not v[-1].allowed]
    return "; ".join(f"{v.reason}: {v.message}" for v in held)
