from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from specs.actions import _check_unit
from specs.resource import ResourceSpec


class UnitSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="systemd unit, e.g. 'sshd.service'.")
    enabled: bool = Field(True, description="Must be enabled (start at boot).")
    active: bool = Field(True, description="Must be active (running).")

    @field_validator("name")
    @classmethod
    def _unit(cls, v: str) -> str:
        return _check_unit(v)


class ServicesSpec(ResourceSpec):
    """Each listed unit must be loaded, enabled if required, and active."""

    units: list[UnitSpec] = Field(default_factory=list)
    restart_backoff_base: float = Field(
        10.0, gt=0, description="Seconds before a unit restarted once may be restarted again."
    )
    restart_backoff_cap: float = Field(
        900.0, gt=0, description="Upper bound of the per-unit restart backoff, in seconds."
    )
