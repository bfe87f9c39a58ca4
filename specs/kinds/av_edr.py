"""Anti-malware / EDR (HIPAA 164.308(a)(5)(ii)(B) protection from malicious software,
164.312(b) audit controls): the scanner runs, its engine is the approved binary, and
its signatures are fresh."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from specs.actions import _check_unit
from specs.kinds.services import UnitSpec
from specs.resource import ResourceSpec


def _absolute(v: str, what: str) -> str:
    if not v.startswith("/") or "\0" in v:
        raise ValueError(f"{what} {v!r} must be an absolute path")
    return v


class AvEdrSpec(ResourceSpec):
    """Scanner units active, engine binary hash pinned, signature databases recent."""

    units: list[UnitSpec] = Field(
        default_factory=list,
        description="Scanner units, e.g. clamav-daemon.service; stopped ones are restarted.",
    )
    engine_path: str | None = Field(
        None, description="Scanner engine binary, e.g. /run/current-system/sw/bin/clamd."
    )
    engine_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="Approved SHA-256 of engine_path. A mismatch is alert-only: the agent "
        "never 'repairs' a binary it cannot trust.",
    )
    signature_dbs: list[str] = Field(
        default_factory=list,
        description="Signature database files, e.g. /var/lib/clamav/daily.cvd. A '.cvd' "
        "path also accepts its '.cld' sibling (freshclam switches between the two).",
    )
    max_signature_age_hours: float = Field(
        48.0, gt=0, description="Hours after which a signature database is stale."
    )
    updater_unit: str | None = Field(
        None,
        description="Unit that updates signatures (e.g. clamav-freshclam.service). If set, "
        "stale signatures start it; if null, stale signatures are alert-only.",
    )
    command_timeout: float = Field(30.0, gt=0, description="Seconds sha256sum may take.")
    restart_backoff_base: float = Field(
        10.0, gt=0, description="Seconds before a unit restarted once may be restarted again."
    )
    restart_backoff_cap: float = Field(
        900.0, gt=0, description="Upper bound of the per-unit restart backoff, in seconds."
    )

    @field_validator("engine_path")
    @classmethod
    def _engine(cls, v: str | None) -> str | None:
        return None if v is None else _absolute(v, "engine_path")

    @field_validator("signature_dbs")
    @classmethod
    def _dbs(cls, v: list[str]) -> list[str]:
        return [_absolute(p, "signature_dbs entry") for p in v]

    @field_validator("updater_unit")
    @classmethod
    def _updater(cls, v: str | None) -> str | None:
        return None if v is None else _check_unit(v)

    @model_validator(mode="after")
    def _engine_pair(self) -> AvEdrSpec:
        if (self.engine_path is None) != (self.engine_sha256 is None):
            raise ValueError("engine_path and engine_sha256 must be set together")
        return self
