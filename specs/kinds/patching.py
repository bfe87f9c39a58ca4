"""Desired NixOS system generation (guardrail 5: the rebuild transaction lives in
reconciler.actuator.rebuild)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from specs.resource import ResourceSpec

# A top-level store path: /nix/store/<32 chars of Nix base32>-<name>.
STORE_PATH_RE = re.compile(r"^/nix/store/([0-9a-df-np-sv-z]{32})-[A-Za-z0-9+._?=-]+$")
# A flake reference (github:org/repo#host, path:/etc/nixos#host, /etc/nixos#host):
# no whitespace, no leading '-' (it becomes an argv element of nixos-rebuild).
FLAKE_REF_RE = re.compile(r"^[A-Za-z0-9._~/:?=&%+@][A-Za-z0-9._~:/?#=&%+@,-]*$")


def is_store_path(target: str) -> bool:
    return STORE_PATH_RE.fullmatch(target) is not None


def store_hash(path: str) -> str | None:
    """The 32-character hash part of a store path (the derivation output digest)."""
    m = STORE_PATH_RE.fullmatch(path)
    return m.group(1) if m else None


class PatchingSpec(ResourceSpec):
    """The running NixOS system must be the target, and not older than allowed."""

    target: str | None = Field(
        None,
        description="Desired system: a /nix/store/<hash>-nixos-system-... path (compared "
        "exactly with /run/current-system) or a flake reference (compared through "
        "configurationRevision when the reference pins a rev). Null: observe only.",
    )
    max_generation_age_days: int | None = Field(
        None, gt=0, description="Alert (or, for a flake target, rebuild) when the current "
        "system generation is older than this many days. Null: no age limit."
    )
    require_reboot_alert: bool = Field(
        True, description="Alert when the running kernel/initrd differ from the current "
        "system's (a reboot is needed to finish an update). Never reboots by itself."
    )
    health_timeout: float = Field(
        60.0, gt=0, le=3600, description="Seconds the system has to report 'running' after "
        "a switch before the rebuild transaction rolls back."
    )

    @field_validator("target")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v) > 512 or v.startswith("-"):
            raise ValueError("target must be a /nix/store path or a flake reference (<= 512 chars)")
        if v.startswith("/nix/store/"):
            if not is_store_path(v):
                raise ValueError(
                    f"{v[:80]!r} is not a top-level store path like "
                    "'/nix/store/<32-char hash>-nixos-system-host-24.05'"
                )
        elif not FLAKE_REF_RE.fullmatch(v):
            raise ValueError(f"{v[:80]!r} is not a flake reference like 'github:org/repo#host'")
        return v
