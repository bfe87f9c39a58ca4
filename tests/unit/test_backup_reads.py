"""The backup reads the root actuator serves: exactly the controller's argv for a
job of the actuator's baseline, nothing else (reconciler/actuator/backup_reads.py)."""

from __future__ import annotations

import pytest

from controllers.backup import check_argv, dump_argv, snapshots_argv
from reconciler.actuator.backup_reads import allowed_backup_read, is_backup_read
from reconciler.actuator.client import needs_privilege
from specs.kinds.backup import BackupSpec

SHA = "0" * 64
SPEC = BackupSpec.model_validate({"jobs": [
    {"name": "ehr", "repository": "/var/lib/restic-ehr",
     "password_file": "/run/secrets/restic-ehr-password", "hostname": "clinic-a",
     "restore_test": {"canary_path": "/var/lib/ehr/canary.txt", "expected_sha256": SHA}},
    {"name": "docs", "tool": "borg", "repository": "ssh://nas/./docs",
     "password_file": "/run/secrets/borg-docs", "check_interval": None,
     "restore_test": {"canary_path": "/srv/docs/canary.txt", "expected_sha256": SHA}},
]})
EHR, DOCS = SPEC.jobs


@pytest.mark.parametrize("argv", [
    snapshots_argv(EHR), check_argv(EHR), dump_argv(EHR, "a" * 64, "/var/lib/ehr/canary.txt"),
    dump_argv(EHR, "latest", "/var/lib/ehr/canary.txt"),
    snapshots_argv(DOCS),
    dump_argv(DOCS, "docs-2026-11-30T02:00:00", "/srv/docs/canary.txt"),
])
def test_the_controllers_reads_of_baseline_jobs_are_served(argv: list[str]) -> None:
    assert is_backup_read(argv) and needs_privilege(argv)
    assert allowed_backup_read(argv, SPEC)


def _swap(argv: list[str], old: str, new: str) -> list[str]:
    assert old in argv
    return [new if a == old else a for a in argv]


@pytest.mark.parametrize("argv", [
    # another password file: root would feed /etc/shadow to restic
    _swap(snapshots_argv(EHR), "/run/secrets/restic-ehr-password", "/etc/shadow"),
    # another repository, e.g. one the agent controls
    _swap(snapshots_argv(EHR), "/var/lib/restic-ehr", "/tmp/evil-repo"),
    # another subcommand: key material, raw objects, a restore onto the host
    [*snapshots_argv(EHR)[:7], "key", "list"],
    [*snapshots_argv(EHR)[:7], "cat", "config"],
    [*snapshots_argv(EHR)[:7], "restore", "latest", "--target", "/"],
    # dump of any file but the canary: that would read PHI out of the backup
    dump_argv(EHR, "latest", "/var/lib/ehr/patients.db"),
    # a snapshot "id" that is an option
    dump_argv(EHR, "--help", "/var/lib/ehr/canary.txt"),
    # restic (>= 0.16.4) reads "ID:subfolder" as the snapshot's subfolder, so the
    # canary's path would name <subfolder>/<canary path>: another file than the canary
    dump_argv(EHR, "latest:home", "/var/lib/ehr/canary.txt"),
    dump_argv(EHR, "a" * 64 + ":srv", "/var/lib/ehr/canary.txt"),
    # no --host filter: other than the baseline's argv
    [a for a in snapshots_argv(EHR) if a not in ("--host", "clinic-a")],
    # the check of a job whose checks are off
    check_argv(DOCS),
    # borg: the passcommand pointed elsewhere
    _swap(snapshots_argv(DOCS), "BORG_PASSCOMMAND=cat -- /run/secrets/borg-docs",
          "BORG_PASSCOMMAND=cat -- /etc/shadow"),
    dump_argv(DOCS, "x", "/srv/docs/other.txt"),
])
def test_anything_else_is_refused(argv: list[str]) -> None:
    assert is_backup_read(argv)
    assert not allowed_backup_read(argv, SPEC)


def test_no_backup_spec_serves_nothing() -> None:
    assert not allowed_backup_read(snapshots_argv(EHR), None)
    assert not allowed_backup_read(snapshots_argv(EHR), BackupSpec())


def test_other_commands_are_not_backup_reads() -> None:
    assert not is_backup_read(["systemctl", "show", "restic-backups-ehr.service"])
    assert not needs_privilege(["systemctl", "show", "restic-backups-ehr.service"])
