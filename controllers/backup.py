"""Backup controller (HIPAA 164.308(a)(7)(ii)(A)): fresh snapshots, sound repository, restorable.

Per job, observe asks the backup tool itself (restic or borg) for the newest
snapshot, and, when due, runs the repository check and a canary restore:

* snapshot listing: every pass (`restic snapshots --json --latest 1`,
  `borg list --json --last 1`), read-only (`--no-lock` / `--bypass-lock`).
* repository check: `restic check` / `borg check` is far too slow for every
  pass, and neither tool records when a check last ran, so the verdict is
  memoised in this controller for `check_interval` hours (a failure for at
  most an hour). The memo is only a rate limit: losing it (agent restart)
  just runs the check again, so the design stays level-triggered.
* restore test: the canary file is streamed out of the newest snapshot
  (`restic dump` / `borg extract --stdout`) and hashed; no temporary files.
  Snapshots are immutable, so the hash is memoised per snapshot id and
  repeated after `restore_test.max_age_hours`. A new snapshot is tested at once.

Remediation is only ever `RunBackup` (non-disruptive `systemctl start --no-block`
of the job's unit): for a missing or stale snapshot, and for a `run_backup`
order (a trigger, satisfied once a snapshot newer than the order exists).
A failed check or restore is alert-only: the agent cannot repair a repository.
Secrets: the password file's path is passed to the tool; its content is never read.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from controllers.base import ControllerBase
from specs.actions import Action, RunBackup
from specs.drift import Drift, Remedy
from specs.host import Host, HostError
from specs.kinds.backup import RUN_BACKUP_ORDER, BackupJob, BackupSpec, BackupTool
from specs.resource import Trigger

FAILED_CHECK_RETRY = timedelta(hours=1)
# unit states in which the job is already running: starting it again is pointless
RUNNING_STATES = frozenset({"activating", "active", "reloading", "deactivating"})
REMEDIABLE = ("snapshot", "trigger")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Snapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    short_id: str
    time: datetime
    hostname: str = ""
    paths: list[str] = []
    name: str = ""  # borg archive name (borg addresses archives by name)


class CheckResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    checked_at: datetime
    ok: bool
    message: str = ""


class RestoreResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    tested_at: datetime
    snapshot_id: str
    canary_path: str
    actual_sha256: str | None  # None: the canary could not be streamed out
    message: str = ""


class JobObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    repository: str  # redacted: URL credentials replaced by ***
    latest: Snapshot | None = None
    error: str | None = None  # listing snapshots failed: why
    unit_state: str | None = None  # ActiveState of the job's unit
    check: CheckResult | None = None
    restore: RestoreResult | None = None


class BackupObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    observed_at: datetime
    jobs: dict[str, JobObserved]


# -- parsing (pure) -----------------------------------------------------------

_FRACTION_RE = re.compile(r"(\.\d{6})\d+")


def parse_time(text: str) -> datetime:
    """restic (ns precision, offset or Z) / borg (us, naive; we run it with TZ=UTC) times."""
    value = datetime.fromisoformat(_FRACTION_RE.sub(r"\1", text.strip()))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _ResticSnapshot(BaseModel):  # one entry of `restic snapshots --json`
    id: str
    time: str
    short_id: str = ""
    hostname: str = ""
    paths: list[str] | None = None


class _BorgArchive(BaseModel):  # one entry of `borg list --json`'s "archives"
    id: str
    name: str
    start: str


class _BorgList(BaseModel):
    archives: list[_BorgArchive] = []


def parse_restic_snapshots(stdout: str) -> Snapshot | None:
    """Newest snapshot of `restic snapshots --json [--latest N]` (flat or grouped output).

    Raises ValueError (pydantic's ValidationError is one) on anything unexpected.
    """
    data = json.loads(stdout or "[]")
    if not isinstance(data, list):
        raise ValueError("restic snapshots --json did not print a JSON list")
    items: list[Any] = []
    for entry in data:
        # `--group-by` output wraps lists: [{"group_key": ..., "snapshots": [...]}]
        grouped = isinstance(entry, dict) and isinstance(entry.get("snapshots"), list)
        items.extend(entry["snapshots"] if grouped else [entry])
    snaps = []
    for item in items:
        s = _ResticSnapshot.model_validate(item)
        snaps.append(Snapshot(id=s.id, short_id=s.short_id or s.id[:8], time=parse_time(s.time),
                              hostname=s.hostname, paths=s.paths or []))  # fmt: skip
    return max(snaps, key=lambda s: s.time, default=None)


def parse_borg_list(stdout: str) -> Snapshot | None:
    """Newest archive of `borg list --json --last 1 REPO`; ValueError if unreadable."""
    listing = _BorgList.model_validate_json(stdout)
    snaps = [
        Snapshot(id=a.id, short_id=a.id[:8], time=parse_time(a.start), name=a.name)
        for a in listing.archives
    ]
    return max(snaps, key=lambda s: s.time, default=None)


def redact_repository(repo: str) -> str:
    """restic takes credentials in URLs (rest:https://user:pw@host/): keep them out of evidence."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", repo)


def _tail(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-limit:]


# -- commands ------------------------------------------------------------------


def _base_argv(job: BackupJob) -> list[str]:
    if job.tool is BackupTool.restic:
        assert job.password_file is not None  # enforced by the spec
        return ["restic", "-r", job.repository, "--password-file", job.password_file,
                "--no-cache", "--no-lock"]  # fmt: skip
    # borg takes secrets only from the environment; `env` sets it without a shell.
    # BORG_PASSCOMMAND is split by borg (shlex), never run by a shell either.
    env = ["env", "TZ=UTC", "BORG_RELOCATED_REPO_ACCESS_IS_OK=no"]
    if job.password_file:
        env.append(f"BORG_PASSCOMMAND=cat -- {shlex.quote(job.password_file)}")
    else:
        env.append("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes")
    return [*env, "borg"]


def snapshots_argv(job: BackupJob) -> list[str]:
    if job.tool is BackupTool.restic:
        host = ["--host", job.hostname] if job.hostname else []
        return [*_base_argv(job), "snapshots", "--json", "--latest", "1", *host]
    return [*_base_argv(job), "list", "--json", "--last", "1", "--bypass-lock", "--",
            job.repository]  # fmt: skip


def check_argv(job: BackupJob) -> list[str]:
    if job.tool is BackupTool.restic:
        return [*_base_argv(job), "check"]
    return [*_base_argv(job), "check", "--bypass-lock", "--", job.repository]


def dump_argv(job: BackupJob, snapshot_id: str, path: str) -> list[str]:
    if job.tool is BackupTool.restic:
        return [*_base_argv(job), "dump", snapshot_id, path]
    # borg stores paths without the leading slash; archives are addressed by name
    return [*_base_argv(job), "extract", "--stdout", "--bypass-lock", "--",
            f"{job.repository}::{snapshot_id}", path.lstrip("/")]  # fmt: skip


class BackupController(ControllerBase[BackupSpec, BackupObserved]):
    spec_type = BackupSpec
    kind = "backup"

    def __init__(self, clock: Clock = utcnow) -> None:
        self.clock = clock
        self._checks: dict[tuple[str, str], CheckResult] = {}
        self._restores: dict[tuple[str, str, str, str], RestoreResult] = {}

    def backoff(self, spec: BackupSpec) -> tuple[float, float]:
        return spec.retry_backoff_base, spec.retry_backoff_cap

    # -- observe -----------------------------------------------------------

    def observe(self, host: Host, spec: BackupSpec) -> BackupObserved:
        now = self.clock()
        return BackupObserved(
            observed_at=now, jobs={j.name: self._observe_job(host, j, now) for j in spec.jobs}
        )

    def _observe_job(self, host: Host, job: BackupJob, now: datetime) -> JobObserved:
        base = {"name": job.name, "repository": redact_repository(job.repository)}
        unit_state = self._unit_state(host, job)
        try:
            done = host.run(snapshots_argv(job), timeout=job.command_timeout)
        except HostError as e:
            return JobObserved(**base, unit_state=unit_state, error=str(e))
        if done.exit_code != 0:
            return JobObserved(
                **base, unit_state=unit_state,
                error=f"{job.tool.value} exited {done.exit_code}: {_tail(done.stderr)}",
            )  # fmt: skip
        try:
            parse = parse_restic_snapshots if job.tool is BackupTool.restic else parse_borg_list
            latest = parse(done.stdout)
        except ValueError as e:
            error = f"unreadable {job.tool.value} output: {_tail(str(e))}"
            return JobObserved(**base, unit_state=unit_state, error=error)
        check = self._check(host, job, now) if job.check_interval else None
        restore = None
        if job.restore_test and latest is not None:
            # borg extracts by archive name, restic dumps by snapshot id
            ref = latest.id if job.tool is BackupTool.restic else latest.name
            restore = self._restore(host, job, ref, latest.id, now)
        return JobObserved(**base, latest=latest, unit_state=unit_state, check=check,
                           restore=restore)  # fmt: skip

    def _unit_state(self, host: Host, job: BackupJob) -> str | None:
        try:
            done = host.run(
                ["systemctl", "show", "--property=ActiveState", "--value", job.unit_name],
                timeout=10,
            )
        except HostError:
            return None
        state = done.stdout.strip()
        return state if done.exit_code == 0 and state else None

    def _check(self, host: Host, job: BackupJob, now: datetime) -> CheckResult:
        key = (job.tool.value, job.repository)
        cached = self._checks.get(key)
        assert job.check_interval is not None
        if cached is not None:
            ttl = timedelta(hours=job.check_interval)
            if not cached.ok:
                ttl = min(ttl, FAILED_CHECK_RETRY)
            if now - cached.checked_at < ttl:
                return cached
        try:
            done = host.run(check_argv(job), timeout=job.check_timeout)
        except HostError as e:
            # a timeout or missing tool says nothing about the repository: do not memoise
            return CheckResult(checked_at=now, ok=False, message=f"check did not complete: {e}")
        ok = done.exit_code == 0
        # the tools print progress on stdout and the findings on stderr
        message = "" if ok else f"exited {done.exit_code}: {_tail(done.stderr or done.stdout)}"
        result = CheckResult(checked_at=now, ok=ok, message=message)
        self._checks[key] = result
        return result

    def _restore(
        self, host: Host, job: BackupJob, ref: str, snapshot_id: str, now: datetime
    ) -> RestoreResult:
        test = job.restore_test
        assert test is not None
        key = (job.tool.value, job.repository, snapshot_id, test.canary_path)
        cached = self._restores.get(key)
        if cached is not None and now - cached.tested_at < timedelta(hours=test.max_age_hours):
            return cached
        base = {"tested_at": now, "snapshot_id": snapshot_id, "canary_path": test.canary_path}
        try:
            done = host.run(dump_argv(job, ref, test.canary_path), timeout=job.command_timeout)
        except HostError as e:
            return RestoreResult(**base, actual_sha256=None, message=f"restore did not run: {e}")
        if done.exit_code != 0:
            result = RestoreResult(
                **base, actual_sha256=None,
                message=f"restore exited {done.exit_code}: {_tail(done.stderr)}",
            )  # fmt: skip
        elif "\ufffd" in done.stdout or "[truncated:" in done.stdout:
            # The Host returns text capped at its output limit: only a small
            # UTF-8 canary survives byte-exact, so refuse to hash anything else.
            result = RestoreResult(
                **base, actual_sha256=None,
                message="the canary is not small UTF-8 text; use a text canary under 1 MiB",
            )  # fmt: skip
        else:
            digest = hashlib.sha256(done.stdout.encode("utf-8")).hexdigest()
            result = RestoreResult(**base, actual_sha256=digest)
        self._restores[key] = result
        return result

    # -- diff / plan ---------------------------------------------------------

    def diff(self, spec: BackupSpec, observed: BackupObserved) -> list[Drift]:
        drifts: list[Drift] = []
        for job in spec.jobs:
            obs = observed.jobs.get(job.name)
            if obs is None:
                continue
            drifts.extend(_job_drifts(spec, job, obs, observed.observed_at))
        known = {j.name for j in spec.jobs}
        for trig in spec.triggers:
            wanted = trig.params.get("job")
            if trig.action == RUN_BACKUP_ORDER and wanted is not None and wanted not in known:
                drifts.append(Drift(
                    field=f"triggers.{trig.order_id}", reason="UnknownBackupJob",
                    expected=f"a job named {wanted!r}", actual=", ".join(sorted(known)) or "none",
                    message=f"order {trig.order_id} asks to back up job {wanted!r}, which "
                    "this host's baseline does not define", remedy=Remedy.alert,
                ))  # fmt: skip
        return drifts

    def plan(self, spec: BackupSpec, observed: BackupObserved, drifts: list[Drift]) -> list[Action]:
        actions: list[Action] = []
        for job in spec.jobs:
            fields = {f"jobs.{job.name}.{part}" for part in REMEDIABLE}
            reasons = [
                d.reason for d in drifts if d.field in fields and d.remedy is Remedy.remediate
            ]
            obs = observed.jobs.get(job.name)
            if not reasons or (obs is not None and obs.unit_state in RUNNING_STATES):
                continue  # nothing to do, or the job is running right now
            # an order-driven start carries the order id, for the authenticity guard
            # and the evidence; several pending orders are served by one start
            orders = pending_orders(spec, job, obs) if obs is not None else []
            order_id = orders[0].order_id if orders else None
            action = RunBackup(unit=job.unit_name, reason=reasons[0], order_id=order_id)
            if all(a.key != action.key for a in actions):
                actions.append(action)
        return actions

    def facts(self, spec: BackupSpec, observed: BackupObserved) -> dict[str, Any]:
        jobs = [
            {
                "job": o.name,
                "repository": o.repository,
                "snapshot_id": o.latest.id if o.latest else None,
                "snapshot_time": o.latest.time.isoformat() if o.latest else None,
                "check_ok": o.check.ok if o.check else None,
                "restore_ok": _restore_ok(spec.job(o.name), o),
            }
            for o in observed.jobs.values()
        ]
        out: dict[str, Any] = {"jobs": jobs}
        if len(jobs) == 1:  # the common case: flat fields, as evidence consumers expect
            out.update({k: jobs[0][k] for k in ("snapshot_id", "snapshot_time", "repository")})
        return out


def pending_orders(spec: BackupSpec, job: BackupJob, obs: JobObserved) -> list[Trigger]:
    """`run_backup` triggers for `job` not yet satisfied by a snapshot newer than the order."""
    if obs.error is not None:
        return []  # cannot tell; RepositoryUnavailable is reported instead
    return [
        t for t in spec.triggers
        if t.action == RUN_BACKUP_ORDER and t.params.get("job", job.name) == job.name
        and (obs.latest is None or obs.latest.time <= t.requested_at)
    ]  # fmt: skip


def _restore_ok(job: BackupJob | None, obs: JobObserved) -> bool | None:
    if job is None or job.restore_test is None or obs.restore is None:
        return None
    return obs.restore.actual_sha256 == job.restore_test.expected_sha256


def _job_drifts(spec: BackupSpec, job: BackupJob, obs: JobObserved, now: datetime) -> list[Drift]:
    prefix = f"jobs.{job.name}"
    where = f"job {job.name!r} ({obs.repository})"
    if obs.error is not None:
        return [Drift(
            field=f"{prefix}.repository", reason="RepositoryUnavailable",
            expected="snapshots can be listed", actual=obs.error,
            message=f"{where}: cannot list snapshots: {obs.error}. Check the repository "
            "location, that the password file exists and is readable, and the network.",
            remedy=Remedy.alert,
        )]  # fmt: skip
    drifts: list[Drift] = []
    max_age = timedelta(hours=job.max_snapshot_age)
    if obs.latest is None:
        drifts.append(Drift(
            field=f"{prefix}.snapshot", reason="NoSnapshot", expected="at least one snapshot",
            actual="none", message=f"{where} has no snapshot yet; starting {job.unit_name}",
        ))  # fmt: skip
    elif now - obs.latest.time > max_age:
        age_h = (now - obs.latest.time).total_seconds() / 3600
        drifts.append(Drift(
            field=f"{prefix}.snapshot", reason="BackupStale",
            expected=f"newest snapshot younger than {job.max_snapshot_age:g}h",
            actual=f"{obs.latest.short_id} at {obs.latest.time.isoformat()} ({age_h:.1f}h old)",
            message=f"{where}: newest snapshot is {age_h:.1f}h old; starting {job.unit_name}",
        ))  # fmt: skip
    for trig in pending_orders(spec, job, obs):
        drifts.append(Drift(
            field=f"{prefix}.trigger", reason="BackupRequested",
            expected=f"a snapshot newer than {trig.requested_at.isoformat()}",
            actual=obs.latest.time.isoformat() if obs.latest else "none",
            message=f"order {trig.order_id} requested a backup of {where}",
        ))  # fmt: skip
    if obs.check is not None and not obs.check.ok:
        drifts.append(Drift(
            field=f"{prefix}.check", reason="RepositoryCheckFailed", expected="check passes",
            actual=obs.check.message,
            message=f"{where}: repository check failed at {obs.check.checked_at.isoformat()}: "
            f"{obs.check.message}. Inspect the repository with '{job.tool.value} check' and "
            "repair it; the agent does not repair repositories.",
            remedy=Remedy.alert,
        ))  # fmt: skip
    test = job.restore_test
    if test is not None and obs.restore is not None:
        actual = obs.restore.actual_sha256
        if actual != test.expected_sha256:
            detail = obs.restore.message or f"sha256 {actual}"
            drifts.append(Drift(
                field=f"{prefix}.restore_test", reason="RestoreTestFailed",
                expected=f"{test.canary_path} with sha256 {test.expected_sha256}",
                actual=detail,
                message=f"{where}: restoring {test.canary_path} from snapshot "
                f"{obs.restore.snapshot_id[:8]} gave {detail}. The backup may not be "
                "restorable: investigate before relying on it.",
                remedy=Remedy.alert,
            ))  # fmt: skip
    return drifts
