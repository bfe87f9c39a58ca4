"""Drift: one difference between desired (spec) and observed state."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Remedy(StrEnum):
    """What the agent may do about a drift."""

    remediate = "remediate"  # plan() emits actions for it
    alert = "alert"  # only reported, never repaired (e.g. hash mismatch, no LUKS)


class Drift(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str  # dotted path in the spec, e.g. "units.sshd.service.active"
    reason: str  # CamelCase, becomes the Drifted condition's reason
    expected: str
    actual: str
    message: str = ""
    remedy: Remedy = Remedy.remediate
