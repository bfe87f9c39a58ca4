"""Audit logging (HIPAA 164.312(b) audit controls, 164.308(a)(1)(ii)(D) information
system activity review): journald and the log forwarders run, and a canary written
to the journal really arrives (in the journal and in each forwarder's spool)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from specs.actions import _check_unit
from specs.resource import ResourceSpec

CANARY_IDENTIFIER = "compliance-agent-canary"


class Forwarder(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: str = Field(description="Forwarder unit, e.g. vector.service or rsyslog.service.")
    spool_path: str | None = Field(
        None,
        description="File or directory the forwarder writes what it forwards (or queues); "
        "if set, the canary must appear there within the deadline.",
    )

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str) -> str:
        return _check_unit(v)

    @field_validator("spool_path")
    @classmethod
    def _spool(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "\0" in v):
            raise ValueError(f"spool_path {v!r} must be an absolute path")
        return v


class LoggingSpec(ResourceSpec):
    """journald and forwarders active; a canary line makes it end to end in time."""

    journald_unit: str = Field("systemd-journald.service", description="The journal daemon's unit.")
    forwarders: list[Forwarder] = Field(default_factory=list)
    canary: bool = Field(
        True,
        description="Write a canary line to the journal every pass and read it back "
        "(the only side effect of observing).",
    )
    canary_deadline_seconds: float = Field(
        5.0, gt=0, le=60, description="Seconds the canary may take to appear everywhere."
    )
    restart_backoff_base: float = Field(
        30.0, gt=0, description="Seconds before a unit restarted once may be restarted again."
    )
    restart_backoff_cap: float = Field(
        3600.0, gt=0, description="Upper bound of the per-unit restart backoff, in seconds."
    )

    @field_validator("journald_unit")
    @classmethod
    def _journald(cls, v: str) -> str:
        return _check_unit(v)
