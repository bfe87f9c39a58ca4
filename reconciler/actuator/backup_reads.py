"""Backup reads the root actuator runs for the unprivileged agent.

Under the NixOS module the backup jobs' password files and repositories
(restic, borg) are root's: the agent, an unprivileged user, can read neither,
and must not (the password decrypts every backed-up file). So the backup
controller's three reads go to the actuator, which runs them only when the
argv is exactly what `controllers.backup` builds for a job of the baseline
the actuator verified itself:

* the snapshot listing (`restic ... snapshots --json --latest 1`, `borg list --json --last 1`),
* the repository check (`restic check` / `borg check`), when the job has a check interval,
* the restore test's canary dump (`restic dump <snapshot> <canary_path>`,
  `borg extract --stdout <repo>::<archive> <canary>`), for the canary the job names.

The request carries the password file's *path* (already in the signed
baseline), never the password: root's tool reads the file. The reply is the
tool's output: snapshot metadata, the check verdict, the canary's text (a
file the baseline designates to be read back). Another repository, another
password file, another canary path, or any other subcommand (`cat`,
`restore`, `key list`, `dump` of another file...) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from controllers.backup import check_argv, dump_argv, snapshots_argv
from specs.kinds.backup import BackupSpec, BackupTool

# A snapshot id (restic) or archive name (borg) as the controller passes it:
# never an option, never a path.
SNAPSHOT_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,199}$")
# restic's is a hex id or "latest", never "ID:subfolder" (restic >= 0.16.4 would
# then dump <subfolder>/<canary path>, a file other than the canary); borg archive
# names may hold ":" (timestamps), and borg takes the archive as all after "::".
RESTIC_SNAPSHOT_REF_RE = re.compile(r"latest|[0-9a-f]{8,64}")


def is_backup_read(argv: Sequence[str]) -> bool:
    """A backup tool invocation (as the controller builds them): the actuator's to run."""
    args = list(argv)
    return bool(args) and (args[0] == "restic" or (args[0] == "env" and "borg" in args))


def allowed_backup_read(argv: Sequence[str], spec: BackupSpec | None) -> bool:
    """True when `argv` is one of the reads the baseline's backup spec implies."""
    return backup_read_timeout(argv, spec) is not None


def is_repository_check(argv: Sequence[str], spec: BackupSpec | None) -> bool:
    """True when `argv` is the repository check of one of the spec's jobs (by the
    whole argv: a listing may hold the word "check" too, e.g. `--host check`)."""
    args = list(argv)
    return spec is not None and any(
        job.check_interval is not None and args == check_argv(job) for job in spec.jobs)


def backup_read_timeout(argv: Sequence[str], spec: BackupSpec | None) -> float | None:
    """The time the baseline gives this read (the job's `check_timeout` for its
    repository check, `command_timeout` for the listing and the canary dump), or
    None when `argv` is not one of the reads the backup spec implies."""
    args = list(argv)
    if spec is None or len(args) < 2:
        return None
    for job in spec.jobs:
        if args == snapshots_argv(job):
            return job.command_timeout
        if job.check_interval is not None and args == check_argv(job):
            return job.check_timeout
        test = job.restore_test
        if test is None:
            continue
        ref = args[-2]
        if job.tool is BackupTool.borg:
            prefix = f"{job.repository}::"
            if not ref.startswith(prefix):
                continue
            ref = ref[len(prefix):]
        elif not RESTIC_SNAPSHOT_REF_RE.fullmatch(ref):
            continue
        if SNAPSHOT_REF_RE.fullmatch(ref) and args == dump_argv(job, ref, test.canary_path):
            return job.command_timeout
    return None
