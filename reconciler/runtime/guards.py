"""Guards: what must hold before a disruptive action may run.

Evaluated in a fixed order; the first refusal wins and its verdict (with all
verdicts before it) is recorded in evidence:

1. dry-run          -> nothing runs (result `dry_run`)
2. order authenticity: actions driven by an order trigger carry the admitted
   order id; an action claiming an order the runtime never admitted is refused
3. clock sanity     -> |NTP offset| > ntpMaxSkewMs: disruptive skipped, outcome `alert`
4. maintenance window -> disruptive outside it: outcome `deferred`
   (unless allowDisruptiveOutsideWindow)
5. per-action backoff -> a remediation that just ran and did not stick waits
   (exponential, capped) instead of looping: outcome `deferred`

Non-disruptive actions pass guards 3 and 4 by design: restarting a stopped
unit or restoring the firewall baseline is the safe direction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from specs.actions import Action
from specs.status import Outcome
from specs.window import MaintenanceWindow


class GuardVerdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    guard: str
    allowed: bool
    reason: str  # CamelCase
    message: str = ""
    outcome: Outcome | None = None  # for refusals: how the reconcile is recorded

    @property
    def guard_result(self) -> str:
        """The `action_taken[].result` recorded for an action this verdict held."""
        return {
            Outcome.deferred: "deferred",
            Outcome.alert: "skipped",
            Outcome.rejected: "rejected",
        }.get(self.outcome, "skipped") if self.outcome else "skipped"


@dataclass(frozen=True)
class GuardPolicy:
    """What the operator configured for the guards (the same for every action)."""

    window: MaintenanceWindow
    allow_outside_window: bool
    max_skew_ms: int  # ntpMaxSkewMs: above it no disruptive action runs


@dataclass(frozen=True)
class GuardContext:
    now: datetime
    dry_run: bool
    window: MaintenanceWindow
    allow_outside_window: bool
    max_skew_ms: int
    clock_offset_ms: float | None  # None: unknown (no time resource / not observed yet)
    admitted_orders: frozenset[str] = frozenset()
    backoff_until: datetime | None = None  # per-action backoff, from the store


DRY_RUN_VERDICT = GuardVerdict(guard="dry_run", allowed=False, reason="DryRun",
                          message="dry run: nothing is changed")


def evaluate(action: Action, ctx: GuardContext) -> list[GuardVerdict]:
    """All verdicts up to and including the first refusal."""
    verdicts: list[GuardVerdict] = []
    for v in _checks(action, ctx):
        verdicts.append(v)
        if not v.allowed:
            break
    return verdicts


def allowed(verdicts: list[GuardVerdict]) -> bool:
    return all(v.allowed for v in verdicts)


def _checks(action: Action, ctx: GuardContext) -> Iterable[GuardVerdict]:
    if ctx.dry_run:
        yield DRY_RUN_VERDICT
        return
    yield GuardVerdict(guard="dry_run", allowed=True, reason="LiveRun")

    if action.order_id is not None:
        if action.order_id in ctx.admitted_orders:
            yield GuardVerdict(guard="order_authenticity", allowed=True, reason="OrderAdmitted",
                               message=f"order {action.order_id} passed admission")
        else:
            yield GuardVerdict(guard="order_authenticity", allowed=False, reason="OrderNotAdmitted",
                               message=f"order {action.order_id} was never admitted",
                               outcome=Outcome.rejected)
            return

    if action.disruptive:
        if ctx.clock_offset_ms is None:
            yield GuardVerdict(guard="clock_sanity", allowed=True, reason="ClockUnchecked",
                               message="no clock observation; time resource not managed")
        elif abs(ctx.clock_offset_ms) > ctx.max_skew_ms:
            yield GuardVerdict(
                guard="clock_sanity", allowed=False, reason="ClockSkewed",
                message=f"clock offset {ctx.clock_offset_ms:.0f} ms exceeds "
                f"ntpMaxSkewMs {ctx.max_skew_ms}; disruptive action skipped",
                outcome=Outcome.alert,
            )
            return
        else:
            yield GuardVerdict(guard="clock_sanity", allowed=True, reason="ClockInSync",
                               message=f"offset {ctx.clock_offset_ms:.0f} ms")

        if ctx.window.contains(ctx.now):
            yield GuardVerdict(guard="maintenance_window", allowed=True, reason="InsideWindow",
                               message=f"inside {ctx.window} UTC")
        elif ctx.allow_outside_window:
            yield GuardVerdict(
                guard="maintenance_window", allowed=True, reason="OutsideWindowAllowed",
                message=f"outside {ctx.window} UTC; allowDisruptiveOutsideWindow")
        else:
            nxt = ctx.window.next_opening(ctx.now)
            yield GuardVerdict(
                guard="maintenance_window", allowed=False, reason="OutsideMaintenanceWindow",
                message=f"disruptive action deferred to the window {ctx.window} UTC "
                f"(opens {nxt:%Y-%m-%dT%H:%MZ})",
                outcome=Outcome.deferred,
            )
            return

    if ctx.backoff_until is not None and ctx.now < ctx.backoff_until:
        yield GuardVerdict(
            guard="backoff", allowed=False, reason="BackingOff",
            message=f"{action.key} was tried recently and did not hold; "
            f"next attempt after {ctx.backoff_until:%H:%M:%SZ}",
            outcome=Outcome.deferred,
        )
        return
