"""Condition bookkeeping (metav1.Condition semantics) and the host roll-up.

`set_condition` keeps `last_transition_time` unless `status` changes, so an
operator sees when a resource last *became* Ready, not when it was last looked at.
"""

from __future__ import annotations

from datetime import datetime

from specs.drift import Drift, Remedy
from specs.status import (
    Condition,
    ConditionStatus,
    ConditionType,
    HostSummary,
    Outcome,
    ResourceStatus,
)

T, F, U = ConditionStatus.true, ConditionStatus.false, ConditionStatus.unknown


def set_condition(
    conditions: list[Condition],
    ctype: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: str,
) -> tuple[list[Condition], bool]:
    """Return the new list and whether `status` transitioned."""
    old = next((c for c in conditions if c.type == ctype), None)
    transitioned = old is None or old.status != status
    new = Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now if transitioned else old.last_transition_time,  # type: ignore[union-attr]
        observed_generation=generation,
    )
    rest = [c for c in conditions if c.type != ctype]
    ordered = sorted([*rest, new], key=lambda c: list(ConditionType).index(c.type))
    return ordered, transitioned


def desired_conditions(
    outcome: Outcome,
    remaining: list[Drift],
    fixed: list[Drift],
    error: str | None,
    detail: str,
) -> dict[ConditionType, tuple[ConditionStatus, str, str]]:
    """Map one reconcile's result to (status, reason, message) per condition type."""
    if error is not None and outcome is Outcome.failed and not remaining and not fixed:
        # observation itself failed: we don't know the state
        return {
            ConditionType.Ready: (U, "ObserveFailed", error),
            ConditionType.Drifted: (U, "ObserveFailed", error),
            ConditionType.Reconciling: (F, "ObserveFailed", error),
            ConditionType.Stalled: (T, "ObserveFailed", error),
        }
    if not remaining:
        msg = detail or ("remediated: " + ", ".join(d.reason for d in fixed) if fixed else "")
        return {
            ConditionType.Ready: (T, "Reconciled" if fixed else "InSync", msg),
            ConditionType.Drifted: (F, "NoDrift", ""),
            ConditionType.Reconciling: (F, "Idle", ""),
            ConditionType.Stalled: (F, "Idle", ""),
        }
    first = remaining[0]
    drift_msg = "; ".join(_drift_line(d) for d in remaining)
    waiting = outcome is Outcome.deferred
    alert_only = all(d.remedy is Remedy.alert for d in remaining)
    if alert_only:
        stalled_reason = "AlertOnly"
    else:
        stalled_reason = "ActionFailed" if outcome is Outcome.failed else first.reason
    return {
        ConditionType.Ready: (F, first.reason, drift_msg),
        ConditionType.Drifted: (T, first.reason, drift_msg),
        ConditionType.Reconciling: (
            (T, "WaitingForGuard" if detail else "ActionInProgress", detail)
            if waiting else (F, "Idle", "")
        ),
        ConditionType.Stalled: (
            (F, "WaitingForGuard", detail)
            if waiting
            else (T, stalled_reason, error or drift_msg)
        ),
    }


def _drift_line(d: Drift) -> str:
    base = f"{d.field}: expected {d.expected}, found {d.actual}"
    return f"{base} ({d.message})" if d.message else base


def host_summary(statuses: list[ResourceStatus]) -> HostSummary:
    """kstatus-like: Failed if anything is stalled, InProgress if waiting/unknown, else Current."""
    if any(s.is_true(ConditionType.Stalled) for s in statuses):
        return HostSummary.Failed
    for s in statuses:
        ready = s.condition(ConditionType.Ready)
        if ready is None or ready.status is not ConditionStatus.true:
            return HostSummary.InProgress
    return HostSummary.Current
