"""Disk encryption at rest (LUKS). Observe and alert only: never an action."""

from __future__ import annotations

from pydantic import Field, field_validator

from specs.resource import ResourceSpec


class EncryptionSpec(ResourceSpec):
    """Each listed block device or mountpoint must sit on a LUKS container."""

    devices: list[str] = Field(
        default_factory=list,
        description="Block devices ('/dev/nvme0n1p2') or mountpoints ('/var/lib'); empty "
        "means the device holding '/'.",
    )
    min_luks_version: int = Field(
        1, ge=1, le=2, description="Alert when a container's LUKS version is lower."
    )

    @field_validator("devices")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        for d in v:
            if not d.startswith("/") or any(c.isspace() for c in d) or "\x00" in d:
                raise ValueError(
                    f"{d[:80]!r} must be an absolute device path or mountpoint, e.g. '/dev/sda2' "
                    "or '/srv'"
                )
        return v
