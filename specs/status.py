"""Status conditions, modeled on metav1.Condition and kstatus.

A Condition's `last_transition_time` changes only when its `status` changes;
reason/message updates alone keep the old time (see reconciler.runtime.conditions).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

CAMEL_CASE_RE = re.compile(r"^[A-Z][A-Za-z0-9]*$")


class ConditionType(StrEnum):
    Ready = "Ready"
    Drifted = "Drifted"
    Reconciling = "Reconciling"
    Stalled = "Stalled"


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: ConditionType
    status: ConditionStatus
    reason: str = Field(description="CamelCase, machine-readable cause.")
    message: str = ""
    last_transition_time: datetime
    observed_generation: str = ""

    @field_validator("reason")
    @classmethod
    def _camel(cls, v: str) -> str:
        if not CAMEL_CASE_RE.fullmatch(v):
            raise ValueError(f"condition reason {v!r} must be CamelCase")
        return v


class HostSummary(StrEnum):
    """kstatus-style roll-up over all resources."""

    Current = "Current"
    InProgress = "InProgress"
    Failed = "Failed"


class Outcome(StrEnum):
    """Outcome of one reconcile of one resource (also the evidence `outcome`)."""

    success = "success"
    failed = "failed"
    reverted = "reverted"
    deferred = "deferred"
    alert = "alert"
    rejected = "rejected"
    expired = "expired"


class StepResult(StrEnum):
    """What became of one command of an action (`ActionRecord.result`): a closed set."""

    ok = "ok"  # ran and succeeded
    failed = "failed"  # ran and failed, or could not be started
    timeout = "timeout"  # ran and was stopped at its deadline
    dry_run = "dry_run"  # would have run (dry run): nothing touched
    deferred = "deferred"  # held by a guard until later (maintenance window, backoff)
    skipped = "skipped"  # held by a guard for good this pass (e.g. alert-only)
    rejected = "rejected"  # held by a guard as not allowed (e.g. order not admitted)
    refused = "refused"  # the root actuator refused the request


class ActionRecord(BaseModel):
    """One executed (or dry-run) action, as evidence `action_taken` lists it."""

    step: int
    action: str
    command: list[str]
    exit_code: int | None
    duration_sec: float
    result: StepResult
    detail: str = ""


class ResourceStatus(BaseModel):
    kind: str
    generation: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    last_pass_at: datetime | None = None
    last_outcome: Outcome | None = None
    observed: dict[str, Any] | None = None
    last_actions: list[ActionRecord] = Field(default_factory=list)

    def condition(self, ctype: ConditionType) -> Condition | None:
        for c in self.conditions:
            if c.type == ctype:
                return c
        return None

    def is_true(self, ctype: ConditionType) -> bool:
        c = self.condition(ctype)
        return c is not None and c.status is ConditionStatus.true
