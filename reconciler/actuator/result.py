"""What executing an action produced, and the contract every actuator keeps.

`Actuator.execute` never raises for the host's fault: a failing, missing or
hung command is a result with `ok=False` and the records that say what ran.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict

from specs.actions import Action
from specs.status import ActionRecord, Outcome


class ActionResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Action
    records: list[ActionRecord]
    ok: bool
    outcome: Outcome | None = None  # set when the action decides it (e.g. reverted)
    rollback_generation: int | None = None
    error: str | None = None


class Actuator(Protocol):
    def execute(self, action: Action, step_start: int = 1) -> ActionResult: ...

    def collect_finished(self, action_type: str) -> ActionResult | None:
        """A result of `action_type` that finished after its request was lost (the
        agent was down when it ended), handed over once; None when there is none
        or it cannot be asked now (never raises: the next reconcile asks again)."""
        ...


def dry_run_result(action: Action, step_start: int = 1, detail: str = "dry run") -> ActionResult:
    """What would run, recorded without touching the host."""
    records = [
        ActionRecord(
            step=step_start + i,
            action=action.type,
            command=argv,
            exit_code=None,
            duration_sec=0.0,
            result="dry_run",
            detail=detail,
        )
        for i, argv in enumerate(action.commands())
    ]
    return ActionResult(action=action, records=records, ok=True)


def skipped_result(
    action: Action, result: str, detail: str, step_start: int = 1
) -> ActionResult:
    """An action a guard stopped (deferred, skipped): recorded, nothing run."""
    records = [
        ActionRecord(
            step=step_start,
            action=action.type,
            command=action.commands()[0] if action.commands() else [],
            exit_code=None,
            duration_sec=0.0,
            result=result,
            detail=detail,
        )
    ]
    return ActionResult(action=action, records=records, ok=False)
