"""Backup controller against REAL restic (and borg) repositories in tmp_path, via LocalHost."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controllers.backup import BackupController
from reconciler.actuator.host import LocalHost
from specs.actions import RunBackup
from specs.drift import Remedy
from specs.kinds.backup import BackupJob, BackupSpec
from specs.resource import Trigger
from tests.harness.require import require_tool

pytestmark = pytest.mark.integration

CANARY_TEXT = "compliance-agent backup canary\n"


class Repo:
    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "repo"
        self.password_file = tmp / "restic-password"
        self.password_file.write_text("correct horse battery staple\n")
        self.password_file.chmod(0o600)
        self.canary = tmp / "data" / "canary.txt"
        self.canary.parent.mkdir()
        self.canary.write_text(CANARY_TEXT)
        # restic must not write a cache into $HOME during tests
        self.env = {"XDG_CACHE_HOME": str(tmp / "cache"), "HOME": str(tmp)}
        self.host = LocalHost(env=self.env)
        self.restic("init")

    def restic(self, *args: str) -> str:
        argv = ["restic", "-r", str(self.path), "--password-file", str(self.password_file), *args]
        done = self.host.run(argv, timeout=120)
        assert done.exit_code == 0, f"{argv}: {done.stderr}"
        return done.stdout

    def backup(self) -> None:
        self.restic("backup", "--quiet", str(self.canary.parent))

    def spec(self, expected_sha256: str | None = None, **kw: object) -> BackupSpec:
        sha = expected_sha256 or hashlib.sha256(CANARY_TEXT.encode()).hexdigest()
        job = BackupJob.model_validate({
            "name": "ehr",
            "repository": str(self.path),
            "password_file": str(self.password_file),
            "max_snapshot_age": 26,
            "restore_test": {"canary_path": str(self.canary), "expected_sha256": sha},
        })  # fmt: skip
        return BackupSpec.model_validate({"jobs": [job], **kw})


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    require_tool("restic")
    r = Repo(tmp_path)
    r.backup()
    return r


def now() -> datetime:
    return datetime.now(UTC)


def test_fresh_repository_has_no_drift_and_facts_name_the_snapshot(repo: Repo) -> None:
    ctl = BackupController()
    spec = repo.spec()
    obs = ctl.observe(repo.host, spec)
    job = obs.jobs["ehr"]
    assert job.error is None, job.error
    assert job.latest is not None and abs(now() - job.latest.time) < timedelta(minutes=5)
    assert job.check is not None and job.check.ok, job.check
    expected = hashlib.sha256(CANARY_TEXT.encode()).hexdigest()
    assert job.restore is not None and job.restore.actual_sha256 == expected
    assert ctl.diff(spec, obs) == []
    facts = ctl.facts(spec, obs)
    listed = repo.restic("snapshots", "--json")
    assert facts["snapshot_id"] in listed and facts["repository"] == str(repo.path)


def test_frozen_clock_far_ahead_makes_backup_stale_and_plans_run_backup(repo: Repo) -> None:
    ctl = BackupController(clock=lambda: now() + timedelta(days=3))
    spec = repo.spec()
    obs = ctl.observe(repo.host, spec)
    drifts = ctl.diff(spec, obs)
    assert [d.reason for d in drifts] == ["BackupStale"]
    assert ctl.plan(spec, obs, drifts) == [
        RunBackup(unit="restic-backups-ehr.service", reason="BackupStale")
    ]


def test_restore_test_fails_when_expected_canary_hash_changes(repo: Repo) -> None:
    ctl = BackupController()
    spec = repo.spec(expected_sha256=hashlib.sha256(b"something else\n").hexdigest())
    drifts = ctl.diff(spec, ctl.observe(repo.host, spec))
    assert [(d.reason, d.remedy) for d in drifts] == [("RestoreTestFailed", Remedy.alert)]


def test_restore_test_fails_when_canary_is_not_in_snapshot(repo: Repo, tmp_path: Path) -> None:
    ctl = BackupController()
    spec = repo.spec()
    missing = spec.jobs[0].model_copy(
        update={"restore_test": spec.jobs[0].restore_test.model_copy(  # type: ignore[union-attr]
            update={"canary_path": str(tmp_path / "never-backed-up.txt")})}
    )  # fmt: skip
    spec2 = spec.model_copy(update={"jobs": [missing]})
    (drift,) = ctl.diff(spec2, ctl.observe(repo.host, spec2))
    assert drift.reason == "RestoreTestFailed" and "not found" in drift.actual


def test_deleted_pack_file_fails_the_repository_check(repo: Repo) -> None:
    # Delete a pack holding only file data (not trees): restic then reports the
    # missing pack at once instead of retrying tree loads for minutes.
    data_packs = []
    for index_id in repo.restic("list", "index").split():
        index = json.loads(repo.restic("cat", "index", index_id))
        data_packs += [
            p["id"] for p in index["packs"] if all(b["type"] == "data" for b in p["blobs"])
        ]
    assert data_packs, "restic wrote no data pack?"
    (repo.path / "data" / data_packs[0][:2] / data_packs[0]).unlink()
    ctl = BackupController()
    spec = repo.spec()
    no_restore = spec.model_copy(
        update={"jobs": [spec.jobs[0].model_copy(update={"restore_test": None})]}
    )
    obs = ctl.observe(repo.host, no_restore)
    drifts = {d.reason: d for d in ctl.diff(no_restore, obs)}
    assert list(drifts) == ["RepositoryCheckFailed"]
    assert drifts["RepositoryCheckFailed"].remedy is Remedy.alert
    assert f"pack {data_packs[0]}: does not exist" in drifts["RepositoryCheckFailed"].actual
    assert ctl.plan(no_restore, obs, list(drifts.values())) == []


def test_wrong_password_is_reported_without_leaking_it(repo: Repo) -> None:
    repo.password_file.write_text("not the password\n")
    ctl = BackupController()
    spec = repo.spec()
    (drift,) = ctl.diff(spec, ctl.observe(repo.host, spec))
    assert drift.reason == "RepositoryUnavailable" and "wrong password" in drift.message
    assert "not the password" not in drift.model_dump_json()


def test_run_backup_order_is_satisfied_by_a_newer_snapshot(repo: Repo) -> None:
    ctl = BackupController()
    requested = now()  # after the fixture's snapshot, before the next one
    spec = repo.spec(
        triggers=[Trigger(order_id="o-7", action="run_backup", params={"job": "ehr"},
                          requested_at=requested)]
    )  # fmt: skip
    obs = ctl.observe(repo.host, spec)
    drifts = ctl.diff(spec, obs)
    assert [d.reason for d in drifts] == ["BackupRequested"]
    (action,) = ctl.plan(spec, obs, drifts)
    assert action.order_id == "o-7" and action.unit == "restic-backups-ehr.service"  # type: ignore[union-attr]
    repo.backup()  # what the job's unit does when RunBackup starts it
    assert ctl.diff(spec, ctl.observe(repo.host, spec)) == []


def test_borg_repository_with_passphrase_file(tmp_path: Path) -> None:
    require_tool("borg")
    env = {"BORG_BASE_DIR": str(tmp_path / "borg-base"), "HOME": str(tmp_path)}
    host = LocalHost(env=env)
    pw = tmp_path / "borg-pass"
    pw.write_text("borg secret\n")
    pw.chmod(0o600)
    data = tmp_path / "data"
    data.mkdir()
    (data / "canary.txt").write_text(CANARY_TEXT)
    repo = tmp_path / "borg-repo"
    benv = {**env, "BORG_PASSCOMMAND": f"cat {pw}"}
    for argv in (["borg", "init", "-e", "repokey", str(repo)],
                 ["borg", "create", f"{repo}::first", str(data)]):  # fmt: skip
        subprocess.run(argv, check=True, env={**benv, "PATH": "/usr/bin:/bin"}, capture_output=True)
    job = BackupJob.model_validate({
        "name": "files", "tool": "borg", "repository": str(repo), "password_file": str(pw),
        "restore_test": {"canary_path": str(data / "canary.txt"),
                         "expected_sha256": hashlib.sha256(CANARY_TEXT.encode()).hexdigest()},
    })  # fmt: skip
    spec = BackupSpec(jobs=[job])
    ctl = BackupController()
    obs = ctl.observe(host, spec)
    o = obs.jobs["files"]
    assert o.error is None, o.error
    assert o.latest is not None and o.latest.name == "first"
    assert abs(now() - o.latest.time) < timedelta(minutes=5)  # TZ=UTC made borg's naive time UTC
    assert o.check is not None and o.check.ok, o.check
    assert ctl.diff(spec, obs) == []
    stale = BackupController(clock=lambda: now() + timedelta(days=2))
    assert [d.reason for d in stale.diff(spec, stale.observe(host, spec))] == ["BackupStale"]


# -- the whole loop in a real systemd: stale -> RunBackup -> the job's unit runs restic ----

JOB_UNIT = """[Unit]
Description=restic backup job stand-in (what services.restic.backups.ehr generates)

[Service]
Type=oneshot
Environment=HOME=/root
ExecStart=/usr/local/bin/restic -r /srv/backup/repo --password-file /etc/restic/pw \
  backup --quiet /var/lib/canary
"""


def test_run_backup_order_through_runtime_starts_the_real_job_unit(
    systemd_rootfs: Path, tmp_path: Path
) -> None:
    from reconciler.actuator.local import LocalActuator
    from reconciler.runtime.reconcile import Runtime
    from reconciler.service import guard_policy
    from specs.config import parse_config
    from specs.status import Outcome
    from tests.harness.sdbox import Bind, SystemdContainer

    restic = Path(require_tool("restic")).resolve()
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    binds = [Bind(restic, "/usr/local/bin/restic"), Bind(backup_dir, "/srv/backup", False)]
    with SystemdContainer(tmp_path / "sdbox", rootfs=systemd_rootfs, binds=binds) as box:
        box.write_file("/etc/restic/pw", "container secret\n", mode=0o600)
        box.write_file("/var/lib/canary/canary.txt", CANARY_TEXT)
        box.check(["/usr/local/bin/restic", "-r", "/srv/backup/repo", "--password-file",
                   "/etc/restic/pw", "init"], timeout=60)  # fmt: skip
        box.install_unit("restic-backups-ehr.service", JOB_UNIT)
        job = BackupJob.model_validate({
            "name": "ehr", "repository": "/srv/backup/repo", "password_file": "/etc/restic/pw",
            "restore_test": {"canary_path": "/var/lib/canary/canary.txt",
                             "expected_sha256": hashlib.sha256(CANARY_TEXT.encode()).hexdigest()},
        })  # fmt: skip
        order = Trigger(order_id="o-42", action="run_backup", params={"job": "ehr"},
                        requested_at=now())  # fmt: skip
        spec = BackupSpec(jobs=[job], triggers=[order])
        cfg = parse_config({
            "siteId": "c", "hostId": "h", "baselinePath": str(tmp_path / "b.json"),
            "clientCertFile": str(tmp_path / "c.pem"), "clientKeyFile": str(tmp_path / "c.key"),
            "signingKeyFile": str(tmp_path / "s.key"), "caCertFile": str(tmp_path / "ca.pem"),
            "mcpPublicKeys": ["ab" * 32], "resellerId": "m",
            "stateDirectory": str(tmp_path / "state"), "statusSocket": None,
        })  # fmt: skip
        ctl = BackupController()
        rt = Runtime(guard_policy(cfg), box, LocalActuator(box), {"backup": ctl}, None)

        first = rt.reconcile("backup", spec)
        assert {d.reason for d in first.drifts} == {"NoSnapshot", "BackupRequested"}
        (action,) = first.planned
        assert isinstance(action, RunBackup) and action.order_id == "o-42"
        assert first.verdicts[0][1].reason == "OrderAdmitted"
        assert [r.result for r in first.action_records] == ["ok"]

        # --no-block: the job runs on its own; poll until systemd says it finished
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = box.run(["systemctl", "show", "-p", "ActiveState", "--value",
                             "restic-backups-ehr.service"]).stdout.strip()  # fmt: skip
            if state in ("inactive", "failed"):
                break
        assert state == "inactive", box.run(["journalctl", "-u", "restic-backups-ehr.service"])

        second = rt.reconcile("backup", spec)
        assert second.outcome is Outcome.success, (second.drifts, second.error)
        assert second.drifts == [] and second.planned == []
        assert second.facts["snapshot_id"]
        obs = ctl.observe(box, spec).jobs["ehr"]
        expected = hashlib.sha256(CANARY_TEXT.encode()).hexdigest()
        assert obs.restore is not None and obs.restore.actual_sha256 == expected
