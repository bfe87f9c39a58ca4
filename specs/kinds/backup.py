"""Backups (HIPAA 164.308(a)(7)(ii)(A), data backup plan): desired state of backup jobs.

One entry per job of the NixOS `services.restic.backups.<name>` or
`services.borgbackup.jobs.<name>` modules. The agent never reads a secret:
`password_file` is only a path handed to the backup tool.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from specs.actions import _check_unit
from specs.resource import ResourceSpec

JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SHA256_RE = r"^[0-9a-f]{64}$"

# Order action that asks for a backup now; params: {"job": "<name>"}.
RUN_BACKUP_ORDER = "run_backup"


class BackupTool(StrEnum):
    restic = "restic"
    borg = "borg"


def _absolute(v: str, what: str) -> str:
    if not v.startswith("/") or "\0" in v:
        raise ValueError(f"{what} {v!r} must be an absolute path")
    return v


class RestoreTestSpec(BaseModel):
    """Prove the newest snapshot restores: stream one canary file out of it and hash it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    canary_path: str = Field(
        description="Absolute path of a small UTF-8 text file as stored in the snapshot "
        "(e.g. /var/lib/backup-canary/canary.txt)."
    )
    expected_sha256: str = Field(
        pattern=SHA256_RE, description="SHA-256 (lowercase hex) the restored canary must have."
    )
    max_age_hours: float = Field(
        24.0,
        gt=0,
        description="A passed restore test is repeated after this many hours even when the "
        "newest snapshot did not change (a new snapshot is always tested at once).",
    )

    @field_validator("canary_path")
    @classmethod
    def _abs(cls, v: str) -> str:
        return _absolute(v, "restore_test.canary_path")


class BackupJob(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Job name, the <name> of services.restic.backups.<name>.")
    tool: BackupTool = Field(BackupTool.restic, description="'restic' or 'borg'.")
    repository: str = Field(
        min_length=1,
        description="Repository location as the tool takes it (restic -r / borg REPO).",
    )
    password_file: str | None = Field(
        None,
        description="Path of the repository password file (never read by the agent; "
        "restic gets --password-file, borg BORG_PASSCOMMAND='cat PATH'). Null: "
        "unencrypted (borg) or the tool's own environment.",
    )
    unit: str | None = Field(
        None,
        description="systemd unit running the job; default restic-backups-<name>.service "
        "or borgbackup-job-<name>.service (the NixOS module names).",
    )
    hostname: str | None = Field(
        None, description="Only consider snapshots made by this host (restic --host)."
    )
    max_snapshot_age: float = Field(
        26.0, gt=0, description="Hours after which the newest snapshot is stale."
    )
    check_interval: float | None = Field(
        168.0,
        gt=0,
        description="Hours between repository integrity checks (restic check / borg check); "
        "null disables them.",
    )
    restore_test: RestoreTestSpec | None = None
    command_timeout: float = Field(
        120.0, gt=0, description="Seconds a snapshot listing or canary restore may take."
    )
    check_timeout: float = Field(3600.0, gt=0, description="Seconds a repository check may take.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not JOB_NAME_RE.fullmatch(v):
            raise ValueError(f"job name {v!r} may only use letters, digits, '_', '.', '-'")
        return v

    @field_validator("repository")
    @classmethod
    def _repo(cls, v: str) -> str:
        # a leading dash would be parsed as an option by the tool (argv injection)
        if v.startswith("-") or "\0" in v or "\n" in v:
            raise ValueError(f"repository {v!r} must not start with '-' or contain NUL/newline")
        return v

    @field_validator("password_file")
    @classmethod
    def _pw(cls, v: str | None) -> str | None:
        return None if v is None else _absolute(v, "password_file")

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str | None) -> str | None:
        return None if v is None else _check_unit(v)

    @model_validator(mode="after")
    def _restic_needs_password(self) -> BackupJob:
        if self.tool is BackupTool.restic and self.password_file is None:
            raise ValueError(
                f"job {self.name!r}: restic repositories are always encrypted; "
                "set password_file (the path of services.restic.backups.<name>.passwordFile)"
            )
        return self

    @property
    def unit_name(self) -> str:
        if self.unit:
            return self.unit
        if self.tool is BackupTool.borg:
            return f"borgbackup-job-{self.name}.service"
        return f"restic-backups-{self.name}.service"


class BackupSpec(ResourceSpec):
    """Every job has a fresh snapshot, a repository that passes its check, and restores."""

    jobs: list[BackupJob] = Field(default_factory=list)
    retry_backoff_base: float = Field(
        900.0, gt=0, description="Seconds before a backup started by the agent is started again."
    )
    retry_backoff_cap: float = Field(
        21600.0, gt=0, description="Upper bound of the per-job backup retry backoff, in seconds."
    )

    @model_validator(mode="after")
    def _unique(self) -> BackupSpec:
        names = [j.name for j in self.jobs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"backup job names must be unique; repeated: {', '.join(dupes)}")
        return self

    def job(self, name: str) -> BackupJob | None:
        return next((j for j in self.jobs if j.name == name), None)
