"""Backup reads through the root actuator get the job's own time, not the 30 s read cap.

Under the NixOS module the agent cannot read the backup password files, so
`restic check` / `borg check` run in the actuator. A repository check of a
real clinic's repository takes minutes; capped at the 30 s meant for quick
reads (nft listings, LUKS headers) it timed out on every pass and the
repository was never verified. The actuator now allows a backup read the
timeout the baseline it verified itself gives that job (`check_timeout` for
the check, `command_timeout` for the listing and the canary dump), every
other read keeps the short cap, and only one long read runs at a time so a
compromised agent cannot hold the actuator's connection slots with them.

The host is a recording stand-in (what the actuator would run and with which
timeout); the socket, framing, policy and server threads are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from controllers.backup import check_argv, snapshots_argv
from reconciler.actuator.client import ActuatorClient, ActuatorRefused, PrivilegedReadHost
from reconciler.actuator.protocol import MAX_OBSERVE_TIMEOUT, Refusal
from reconciler.actuator.server import ActuatorServer
from specs.actions import StartUnit
from specs.host import Completed
from specs.kinds.backup import BackupJob
from tests.harness.wait import wait_for
from tests.unit.test_actuator_server import Env, RecordingHost

JOB = BackupJob(
    name="nightly",
    repository="/srv/restic/nightly",
    password_file="/run/keys/restic",
    check_timeout=5400.0,
    command_timeout=300.0,
)


class TimedHost(RecordingHost):
    """Remembers the timeout of each command; can hold the repository check (`held`)
    until released."""

    def __init__(self, held: Sequence[str] = tuple(check_argv(JOB))) -> None:
        super().__init__()
        self.held = list(held)
        self.timeouts: list[float] = []
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.hold.set()

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, *, stdin: bytes | None = None
    ) -> Completed:
        self.timeouts.append(timeout)
        if list(argv) == self.held:
            self.holding.set()
            assert self.hold.wait(20)
        return super().run(argv, timeout, stdin=stdin)


def backup_env(tmp_path: Path, job: BackupJob) -> Env:
    e = Env(tmp_path)
    e.host = TimedHost(held=check_argv(job))
    body = json.loads(e.baseline.read_text())
    body["backup"] = {"jobs": [json.loads(job.model_dump_json())]}
    e.baseline.write_text(json.dumps(body))
    return e


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return backup_env(tmp_path, JOB)


@pytest.fixture
def server(env: Env) -> Iterator[ActuatorServer]:
    with serving(env) as srv:
        yield srv


@contextlib.contextmanager
def serving(env: Env) -> Iterator[ActuatorServer]:
    srv = env.server()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            srv.serve_one(0.1)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv
    stop.set()
    t.join(10)
    srv.join(10)
    srv.listener.close()


def host_of(env: Env) -> TimedHost:
    assert isinstance(env.host, TimedHost)
    return env.host


def test_repository_check_gets_the_jobs_check_timeout(env: Env, server: ActuatorServer) -> None:
    host = PrivilegedReadHost(RecordingHost(), ActuatorClient(env.socket))
    done = host.run(check_argv(JOB), timeout=JOB.check_timeout)
    assert done.exit_code == 0
    assert host_of(env).timeouts == [5400.0]


def test_snapshot_listing_gets_the_jobs_command_timeout(env: Env, server: ActuatorServer) -> None:
    host = PrivilegedReadHost(RecordingHost(), ActuatorClient(env.socket))
    host.run(snapshots_argv(JOB), timeout=JOB.command_timeout)
    assert host_of(env).timeouts == [300.0]


def test_a_backup_read_never_gets_more_than_the_baseline_allows(
    env: Env, server: ActuatorServer
) -> None:
    ActuatorClient(env.socket).observe(check_argv(JOB), timeout=80_000.0)
    assert host_of(env).timeouts == [5400.0]


def test_other_reads_keep_the_short_cap(env: Env, server: ActuatorServer) -> None:
    with pytest.raises(ActuatorRefused) as info:
        ActuatorClient(env.socket).observe(["nft", "-j", "list", "ruleset"], timeout=3000.0)
    assert info.value.reason is Refusal.InvalidParams
    host = PrivilegedReadHost(RecordingHost(), ActuatorClient(env.socket))
    host.run(["nft", "-j", "list", "ruleset"], timeout=3000.0)
    assert host_of(env).timeouts == [MAX_OBSERVE_TIMEOUT]


def test_one_long_read_at_a_time_and_quick_reads_still_pass(
    env: Env, server: ActuatorServer
) -> None:
    timed = host_of(env)
    timed.hold.clear()
    client = ActuatorClient(env.socket)
    first = threading.Thread(
        target=lambda: client.observe(check_argv(JOB), timeout=JOB.check_timeout), daemon=True
    )
    first.start()
    try:
        assert timed.holding.wait(10)
        with pytest.raises(ActuatorRefused) as info:
            client.observe(check_argv(JOB), timeout=JOB.check_timeout)
        assert info.value.reason is Refusal.Busy
        assert "repository check" in str(info.value) or "long read" in str(info.value)
        quick = client.observe(["nft", "-j", "list", "ruleset"])
        assert quick.exit_code == 0
    finally:
        timed.hold.set()
        first.join(10)
    # the slot is free again once the first check finished
    client.observe(check_argv(JOB), timeout=JOB.check_timeout)
    assert timed.timeouts.count(5400.0) == 2


BORG_JOB = BackupJob(
    name="offsite", tool="borg", repository="/srv/borg/offsite",
    password_file="/run/keys/borg", check_timeout=7200.0, command_timeout=600.0,
)


def near_misses() -> list[list[str]]:
    """Backup-looking argvs that are not exactly one of the baseline's reads."""
    check = check_argv(JOB)
    borg_check = check_argv(BORG_JOB)
    return [
        [*check, "--read-data"],  # a longer, heavier check than the baseline's
        [*check[:-1], "check "],
        ["restic", *check[1:-1], "prune"],
        [check[0] + "\n", *check[1:]],
        ["/usr/bin/restic", *check[1:]],
        ["env", *check],  # a restic read dressed as borg's env wrapper
        ["env", "BORG_PASSCOMMAND=cat /etc/shadow", *borg_check[borg_check.index("borg"):]],
        [*borg_check[:-1], "/srv/borg/other"],
        ["env", "borg", "check"],
        [*snapshots_argv(JOB), "--latest", "1000"],
    ]


@pytest.mark.parametrize("argv", near_misses())
def test_a_near_miss_of_a_backup_read_gets_no_long_timeout_and_runs_nothing(
    env: Env, server: ActuatorServer, argv: list[str]
) -> None:
    body = json.loads(env.baseline.read_text())
    body["backup"]["jobs"].append(json.loads(BORG_JOB.model_dump_json()))
    env.baseline.write_text(json.dumps(body))
    with pytest.raises(ActuatorRefused) as info:
        ActuatorClient(env.socket).observe(argv, timeout=JOB.check_timeout)
    assert info.value.reason in (Refusal.ObservationNotAllowed, Refusal.InvalidParams)
    assert host_of(env).ran == [] and host_of(env).timeouts == []


def test_racing_long_reads_run_one_and_leave_host_changes_free(
    env: Env, server: ActuatorServer
) -> None:
    """Eight repository checks sent at once: one runs, the others are Busy at once;
    while it runs, a host change still goes through (long reads take no change lock)."""
    timed = host_of(env)
    timed.hold.clear()
    client = ActuatorClient(env.socket, timeout=30)
    go = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        go.wait(10)
        try:
            client.observe(check_argv(JOB), timeout=JOB.check_timeout)
            what = "ran"
        except ActuatorRefused as e:
            what = str(e.reason)
        with lock:
            outcomes.append(what)

    racers = [threading.Thread(target=one, daemon=True) for _ in range(8)]
    for t in racers:
        t.start()
    try:
        assert timed.holding.wait(10)

        def answered() -> bool:
            with lock:
                return len(outcomes) == 7

        assert wait_for(answered, 10), "the others are answered without waiting"
        started = client.execute(StartUnit(unit="sshd.service"))
        assert started.ok, started
        with lock:
            assert sorted(outcomes) == ["Busy"] * 7, outcomes
    finally:
        timed.hold.set()
        for t in racers:
            t.join(10)
    assert sorted(outcomes) == ["Busy"] * 7 + ["ran"]
    assert timed.timeouts.count(JOB.check_timeout) == 1


def test_a_snapshot_listing_is_not_blocked_by_a_running_repository_check(
    env: Env, server: ActuatorServer
) -> None:
    """A check takes up to its job's hour; the listing (its job's command_timeout, over
    30 s here, so also a long read) has its own lane: an agent restarted during a
    check still sees its snapshots, while a second check stays Busy."""
    timed = host_of(env)
    timed.hold.clear()
    client = ActuatorClient(env.socket)
    first = threading.Thread(
        target=lambda: client.observe(check_argv(JOB), timeout=JOB.check_timeout), daemon=True
    )
    first.start()
    try:
        assert timed.holding.wait(10)
        listing = client.observe(snapshots_argv(JOB), timeout=JOB.command_timeout)
        assert listing.exit_code == 0
        with pytest.raises(ActuatorRefused) as info:
            client.observe(check_argv(JOB), timeout=JOB.check_timeout)
        assert info.value.reason is Refusal.Busy
    finally:
        timed.hold.set()
        first.join(10)


def test_a_listing_that_names_check_among_its_arguments_is_not_a_repository_check(
    tmp_path: Path,
) -> None:
    """A job whose hostname is "check" (restic's listing then says `--host check`):
    its snapshot listing is still a listing, in the other lane, so a running
    repository check does not make it Busy."""
    job = JOB.model_copy(update={"hostname": "check"})
    env = backup_env(tmp_path, job)
    timed = host_of(env)
    timed.hold.clear()
    with serving(env):
        client = ActuatorClient(env.socket)
        first = threading.Thread(
            target=lambda: client.observe(check_argv(job), timeout=job.check_timeout),
            daemon=True,
        )
        first.start()
        try:
            assert timed.holding.wait(10)
            assert "check" in snapshots_argv(job)
            listing = client.observe(snapshots_argv(job), timeout=job.command_timeout)
            assert listing.exit_code == 0
        finally:
            timed.hold.set()
            first.join(10)
