"""Backup controller: parsing of recorded restic/borg output, drift, plan, triggers, memos."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.backup import (
    BackupController,
    BackupObserved,
    CheckResult,
    JobObserved,
    RestoreResult,
    Snapshot,
    check_argv,
    dump_argv,
    parse_borg_list,
    parse_restic_snapshots,
    parse_time,
    redact_repository,
    snapshots_argv,
)
from specs.actions import RunBackup
from specs.drift import Remedy
from specs.host import CommandTimeout, Completed, FileStat
from specs.kinds.backup import BackupJob, BackupSpec
from specs.resource import Trigger
from tests.conftest import FIXTURES

FIX = FIXTURES / "backup"
CANARY = "hello canary\n"
CANARY_SHA = hashlib.sha256(CANARY.encode()).hexdigest()
T0 = datetime(2026, 11, 26, 1, 36, 41, 716948, tzinfo=UTC)  # newest in the 0.14 fixture


def job(**kw: object) -> BackupJob:
    base: dict[str, object] = {
        "name": "ehr",
        "repository": "/srv/restic/ehr",
        "password_file": "/run/secrets/restic-ehr",
        "max_snapshot_age": 26,
        "check_interval": 168,
        "restore_test": {"canary_path": "/tmp/rt/canary.txt", "expected_sha256": CANARY_SHA},
    }
    base.update(kw)
    return BackupJob.model_validate(base)


def spec(*jobs: BackupJob, triggers: list[Trigger] | None = None) -> BackupSpec:
    return BackupSpec(jobs=list(jobs) or [job()], triggers=triggers or [])


Responder = Callable[[list[str]], Completed]


class FakeHost:
    """Answers by the tool's subcommand; records every argv."""

    def __init__(self, answers: dict[str, Responder | Completed]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        args = list(argv)
        self.calls.append(args)
        for word, answer in self.answers.items():
            if word in args:
                return answer(args) if callable(answer) else answer
        return done(args, 0, "")

    def read_text(self, path: str) -> str:
        raise AssertionError("the backup controller must not read files (secrets!)")

    def stat(self, path: str) -> FileStat:
        raise AssertionError("not used")

    def count(self, word: str) -> int:
        return sum(1 for c in self.calls if word in c)


def done(argv: list[str], rc: int, out: str, err: str = "") -> Completed:
    return Completed(argv=argv, exit_code=rc, stdout=out, stderr=err, duration=0.01)


def restic_host(
    snapshots: str | None = None, check_rc: int = 0, dump: str = CANARY, unit: str = "inactive"
) -> FakeHost:
    snaps = (
        snapshots
        if snapshots is not None
        else (FIX / "restic-0.14-snapshots-latest.json").read_text()
    )
    return FakeHost({
        "snapshots": done([], 0, snaps),
        "check": done([], check_rc, "", "Fatal: repository contains errors" if check_rc else ""),
        "dump": done([], 0, dump),
        "systemctl": done([], 0, unit + "\n"),
    })  # fmt: skip


def at(dt: datetime) -> Callable[[], datetime]:
    return lambda: dt


# -- parsing -------------------------------------------------------------------


def test_parse_restic_014_fixture_picks_newest_of_groups() -> None:
    snap = parse_restic_snapshots((FIX / "restic-0.14-snapshots-latest.json").read_text())
    assert snap is not None
    assert snap.short_id == "9211e835"
    assert snap.hostname == "clinic-a"
    assert snap.time == datetime(2026, 11, 26, 1, 36, 47, 485063, tzinfo=UTC)


def test_parse_restic_017_summary_format_and_offsets() -> None:
    snap = parse_restic_snapshots((FIX / "restic-0.17-snapshots-summary.json").read_text())
    assert snap is not None and snap.short_id == "a1b2c3d4"
    assert snap.time == datetime(2025, 3, 2, 0, 0, 4, 512334, tzinfo=UTC)  # +01:00 normalised


def test_parse_restic_grouped_output() -> None:
    snap = parse_restic_snapshots((FIX / "restic-grouped-snapshots.json").read_text())
    assert snap is not None and snap.short_id == "22222222"


def test_parse_restic_empty_and_garbage() -> None:
    assert parse_restic_snapshots("[]\n") is None
    assert parse_restic_snapshots("") is None
    with pytest.raises(ValueError):
        parse_restic_snapshots('{"not": "a list"}')


def test_parse_borg_list_fixture() -> None:
    snap = parse_borg_list((FIX / "borg-1.2-list-last1.json").read_text())
    assert snap is not None and snap.name == "first"
    assert snap.time == datetime(2026, 11, 26, 1, 37, 7, tzinfo=UTC)
    assert parse_borg_list((FIX / "borg-1.2-list-empty.json").read_text()) is None


def test_parse_time_variants() -> None:
    assert parse_time("2024-01-02T03:04:05.123456789+01:00") == datetime(
        2024, 1, 2, 2, 4, 5, 123456, tzinfo=UTC
    )
    assert parse_time("2024-01-02T03:04:05Z").tzinfo is not None


def test_redact_repository_credentials() -> None:
    assert (
        redact_repository("rest:https://u:s3cret@host:8000/r") == "rest:https://u:***@host:8000/r"
    )
    assert redact_repository("/srv/restic") == "/srv/restic"
    assert redact_repository("sftp:user@host:/srv") == "sftp:user@host:/srv"


def test_argv_passes_password_file_path_only() -> None:
    j = job()
    argv = snapshots_argv(j)
    assert argv[:5] == [
        "restic",
        "-r",
        "/srv/restic/ehr",
        "--password-file",
        "/run/secrets/restic-ehr",
    ]
    assert "--no-lock" in argv and "--json" in argv
    assert check_argv(j)[-1] == "check"
    assert dump_argv(j, "abc", "/x")[-3:] == ["dump", "abc", "/x"]


def test_borg_argv_uses_env_passcommand_without_shell() -> None:
    j = job(tool="borg", repository="/srv/borg", password_file="/run/keys/borg pw")
    argv = snapshots_argv(j)
    assert argv[0] == "env"
    assert "BORG_PASSCOMMAND=cat -- '/run/keys/borg pw'" in argv
    assert argv[-2:] == ["--", "/srv/borg"]
    assert dump_argv(j, "arch-1", "/var/canary")[-2:] == ["/srv/borg::arch-1", "var/canary"]
    assert j.unit_name == "borgbackup-job-ehr.service"


def test_restic_job_requires_password_file() -> None:
    with pytest.raises(ValueError, match="password_file"):
        BackupJob(name="x", repository="/r")
    with pytest.raises(ValueError, match="must not start with '-'"):
        BackupJob(name="x", repository="--help", password_file="/p")


# -- observe / diff / plan ----------------------------------------------------------


def test_fresh_snapshot_check_and_restore_pass_no_drift() -> None:
    ctl = BackupController(clock=at(T0 + timedelta(hours=1)))
    s = spec()
    obs = ctl.observe(restic_host(), s)
    assert ctl.diff(s, obs) == []
    assert ctl.plan(s, obs, []) == []
    facts = ctl.facts(s, obs)
    assert facts["snapshot_id"].startswith("9211e835")
    assert facts["repository"] == "/srv/restic/ehr"
    assert facts["jobs"][0]["restore_ok"] is True


def test_stale_snapshot_plans_nonblocking_run_backup() -> None:
    ctl = BackupController(clock=at(T0 + timedelta(hours=30)))
    s = spec()
    obs = ctl.observe(restic_host(), s)
    drifts = ctl.diff(s, obs)
    assert [d.reason for d in drifts] == ["BackupStale"]
    actions = ctl.plan(s, obs, drifts)
    assert actions == [RunBackup(unit="restic-backups-ehr.service", reason="BackupStale")]
    assert not actions[0].disruptive
    assert actions[0].commands() == [
        ["systemctl", "start", "--no-block", "restic-backups-ehr.service"]
    ]


def test_no_snapshot_plans_run_backup_and_skips_restore() -> None:
    ctl = BackupController(clock=at(T0))
    s = spec()
    host = restic_host(snapshots="[]")
    obs = ctl.observe(host, s)
    drifts = ctl.diff(s, obs)
    assert [d.reason for d in drifts] == ["NoSnapshot"]
    assert [a.reason for a in ctl.plan(s, obs, drifts)] == ["NoSnapshot"]
    assert host.count("dump") == 0


def test_running_job_is_not_started_again() -> None:
    ctl = BackupController(clock=at(T0 + timedelta(hours=30)))
    s = spec()
    obs = ctl.observe(restic_host(unit="activating"), s)
    drifts = ctl.diff(s, obs)
    assert [d.reason for d in drifts] == ["BackupStale"]
    assert ctl.plan(s, obs, drifts) == []


def test_check_failure_is_alert_only() -> None:
    ctl = BackupController(clock=at(T0))
    s = spec()
    obs = ctl.observe(restic_host(check_rc=1), s)
    drifts = ctl.diff(s, obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("RepositoryCheckFailed", Remedy.alert)]
    assert "repository contains errors" in drifts[0].message
    assert ctl.plan(s, obs, drifts) == []


def test_restore_mismatch_is_alert_only_and_expected_hash_change_needs_no_rerun() -> None:
    ctl = BackupController(clock=at(T0))
    host = restic_host()
    obs = ctl.observe(host, spec())
    wrong = spec(
        job(restore_test={"canary_path": "/tmp/rt/canary.txt", "expected_sha256": "0" * 64})
    )
    drifts = ctl.diff(wrong, obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("RestoreTestFailed", Remedy.alert)]
    assert CANARY_SHA in drifts[0].actual
    assert ctl.plan(wrong, obs, drifts) == []


def test_restore_of_binary_canary_is_refused_not_misreported() -> None:
    ctl = BackupController(clock=at(T0))
    obs = ctl.observe(restic_host(dump="\ufffd\ufffdbinary"), spec())
    (drift,) = ctl.diff(spec(), obs)
    assert drift.reason == "RestoreTestFailed" and "UTF-8 text" in drift.actual


def test_listing_failure_is_alert_with_stderr() -> None:
    ctl = BackupController(clock=at(T0))
    host = FakeHost({"snapshots": done([], 1, "", "Fatal: wrong password or no key found\n")})
    obs = ctl.observe(host, spec())
    (drift,) = ctl.diff(spec(), obs)
    assert drift.reason == "RepositoryUnavailable" and drift.remedy is Remedy.alert
    assert "wrong password" in drift.message
    assert host.count("check") == 0 and host.count("dump") == 0


def test_listing_timeout_is_captured_per_job() -> None:
    def hang(argv: list[str]) -> Completed:
        raise CommandTimeout(argv, 120)

    ctl = BackupController(clock=at(T0))
    obs = ctl.observe(FakeHost({"snapshots": hang}), spec())
    assert obs.jobs["ehr"].error is not None and "did not finish" in obs.jobs["ehr"].error


def test_check_and_restore_are_memoised_until_due() -> None:
    now = [T0]
    ctl = BackupController(clock=lambda: now[0])
    host = restic_host()
    s = spec()
    ctl.observe(host, s)
    ctl.observe(host, s)
    assert host.count("check") == 1 and host.count("dump") == 1
    now[0] = T0 + timedelta(hours=25)  # restore memo (24h) expired, check (168h) not
    ctl.observe(host, s)
    assert host.count("check") == 1 and host.count("dump") == 2
    now[0] = T0 + timedelta(hours=169)
    ctl.observe(host, s)
    assert host.count("check") == 2


def test_failed_check_is_retried_within_the_hour_not_every_pass() -> None:
    now = [T0]
    ctl = BackupController(clock=lambda: now[0])
    host = restic_host(check_rc=1)
    ctl.observe(host, spec())
    now[0] = T0 + timedelta(minutes=30)
    ctl.observe(host, spec())
    assert host.count("check") == 1
    now[0] = T0 + timedelta(minutes=61)
    ctl.observe(host, spec())
    assert host.count("check") == 2


def test_check_disabled() -> None:
    ctl = BackupController(clock=at(T0))
    host = restic_host()
    ctl.observe(host, spec(job(check_interval=None)))
    assert host.count("check") == 0


# -- triggers (orders) -------------------------------------------------------------


def trig(requested: datetime, job_name: str | None = "ehr") -> Trigger:
    params = {"job": job_name} if job_name else {}
    return Trigger(order_id="o-1", action="run_backup", params=params, requested_at=requested)


def test_run_backup_order_is_level_triggered() -> None:
    ctl = BackupController(clock=at(T0 + timedelta(hours=1)))
    pending = spec(triggers=[trig(T0 + timedelta(minutes=5))])
    obs = ctl.observe(restic_host(), pending)
    drifts = ctl.diff(pending, obs)
    assert [d.reason for d in drifts] == ["BackupRequested"]
    assert ctl.plan(pending, obs, drifts) == [
        RunBackup(unit="restic-backups-ehr.service", reason="BackupRequested", order_id="o-1")
    ]
    # a snapshot newer than the request satisfies it, whatever happened in between
    satisfied = spec(triggers=[trig(T0 - timedelta(minutes=5))])
    assert ctl.diff(satisfied, obs) == []


def test_trigger_without_job_applies_to_all_and_unknown_job_alerts() -> None:
    ctl = BackupController(clock=at(T0))
    two = [job(), job(name="imaging", repository="/srv/restic/img")]
    s = spec(*two, triggers=[trig(T0 + timedelta(minutes=1), None)])
    obs = ctl.observe(restic_host(), s)
    plan = ctl.plan(s, obs, ctl.diff(s, obs))
    assert sorted(a.unit for a in plan if isinstance(a, RunBackup)) == [
        "restic-backups-ehr.service",
        "restic-backups-imaging.service",
    ]
    bad = spec(triggers=[trig(T0, "nope")])
    drifts = ctl.diff(bad, ctl.observe(restic_host(), bad))
    assert [(d.reason, d.remedy) for d in drifts] == [("UnknownBackupJob", Remedy.alert)]


def test_stale_and_requested_give_one_action_per_unit() -> None:
    ctl = BackupController(clock=at(T0 + timedelta(hours=40)))
    s = spec(triggers=[trig(T0 + timedelta(hours=39))])
    obs = ctl.observe(restic_host(), s)
    drifts = ctl.diff(s, obs)
    assert {d.reason for d in drifts} == {"BackupStale", "BackupRequested"}
    (action,) = ctl.plan(s, obs, drifts)
    assert action.order_id == "o-1"  # the order is named even when staleness came first


def test_diff_is_pure_on_recorded_observation() -> None:
    obs = BackupObserved(
        observed_at=T0 + timedelta(hours=27),
        jobs={
            "ehr": JobObserved(
                name="ehr",
                repository="/srv/restic/ehr",
                latest=Snapshot(id="f" * 64, short_id="ffffffff", time=T0),
                check=CheckResult(checked_at=T0, ok=True),
                restore=RestoreResult(
                    tested_at=T0, snapshot_id="f" * 64, canary_path="/c", actual_sha256=CANARY_SHA
                ),
            )
        },
    )
    assert [d.reason for d in BackupController().diff(spec(), obs)] == ["BackupStale"]


def test_backoff_comes_from_spec() -> None:
    s = BackupSpec(jobs=[job()], retry_backoff_base=60, retry_backoff_cap=600)
    assert BackupController().backoff(s) == (60, 600)


def test_example_baseline_parses() -> None:
    from specs.baseline import load_baseline
    from tests.conftest import REPO_ROOT

    baseline = load_baseline(REPO_ROOT / "examples" / "baselines" / "backup.json")
    assert list(baseline.resources()) == ["backup"]


# -- fuzz: whatever the tool prints, parsing fails only with ValueError --------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "time",
                    "short_id",
                    "snapshots",
                    "archives",
                    "name",
                    "start",
                    "paths",
                    "hostname",
                    "x",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_parsers_fail_only_with_value_error(value: object) -> None:
    text = json.dumps(value)
    for parse in (parse_restic_snapshots, parse_borg_list):
        try:
            result = parse(text)
        except ValueError:
            continue
        assert result is None or isinstance(result, Snapshot)


@given(st.text(max_size=200))
def test_parsers_on_arbitrary_text(text: str) -> None:
    for parse in (parse_restic_snapshots, parse_borg_list):
        with contextlib.suppress(ValueError):
            parse(text)
