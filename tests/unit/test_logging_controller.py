"""Logging controller on recorded systemd 252 / journalctl output, with a fake clock.

The property that matters most (guardrail 8): the plan never restarts journald
when the canary passed, and restarts it only as a disruptive action when it failed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from controllers.logging_ import POLL_INTERVAL, CanaryObserved, LoggingController, LoggingObserved
from controllers.services import unit_states
from specs.actions import RestartUnit, StartUnit
from specs.drift import Drift, Remedy
from specs.host import Completed, FileStat
from specs.kinds.logging_ import LoggingSpec
from tests.conftest import FIXTURES

FIX = FIXTURES / "logging"
MARKER = "canary-0123456789abcdef"  # the marker in the recorded journalctl output
JOURNALD = "systemd-journald.service"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeHost:
    """systemd-cat / journalctl / grep / systemctl show, answered from recordings.

    `journal_after` / `spool_after`: how many read-backs return nothing before
    the canary shows up (None: never).
    """

    def __init__(
        self,
        show: str = "systemctl-show-journald-vector-active.txt",
        *,
        write_rc: int = 0,
        journal_after: int | None = 0,
        spool_after: int | None = 0,
        journal_denied: bool = False,
    ) -> None:
        self.journal_denied = journal_denied
        self.show = (FIX / show).read_text()
        self.write_rc = write_rc
        self.journal_after = journal_after
        self.spool_after = spool_after
        self.calls: list[list[str]] = []

    def count(self, tool: str) -> int:
        return sum(1 for c in self.calls if c[0] == tool)

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        args = list(argv)
        self.calls.append(args)
        tool = args[0]
        if tool == "systemd-cat":
            err = "Failed to create stream fd: Connection refused\n" if self.write_rc else ""
            return Completed(argv=args, exit_code=self.write_rc, stdout="", stderr=err, duration=0)
        if tool == "journalctl" and self.journal_denied:
            err = "No journal files were opened due to insufficient permissions.\n"
            return Completed(argv=args, exit_code=1, stdout="", stderr=err, duration=0)
        if tool == "journalctl":
            seen = self.journal_after is not None and self.count("journalctl") > self.journal_after
            out = MARKER + "\n" if seen else ""
            return Completed(argv=args, exit_code=0, stdout=out, stderr="", duration=0)
        if tool == "grep":
            seen = self.spool_after is not None and self.count("grep") > self.spool_after
            return Completed(argv=args, exit_code=0 if seen else 1, stdout="", stderr="",
                             duration=0)  # fmt: skip
        if args[:2] == ["systemctl", "show"]:
            return Completed(argv=args, exit_code=0, stdout=self.show, stderr="", duration=0)
        raise AssertionError(f"unexpected command {args}")

    def read_text(self, path: str) -> str:
        raise AssertionError("not used")

    def stat(self, path: str) -> FileStat:
        raise AssertionError("not used")


def spec(**kw: object) -> LoggingSpec:
    base: dict[str, object] = {
        "forwarders": [{"unit": "vector.service", "spool_path": "/var/spool/vector"}],
        "canary_deadline_seconds": 2,
    }
    base.update(kw)
    return LoggingSpec.model_validate(base)


def controller(clock: FakeClock | None = None) -> LoggingController:
    clock = clock or FakeClock()
    return LoggingController(marker=lambda: MARKER, monotonic=clock.monotonic, sleep=clock.sleep)


def journald_restarts(actions: Sequence[object]) -> list[RestartUnit]:
    return [a for a in actions if isinstance(a, RestartUnit) and a.unit == JOURNALD]


def test_healthy_canary_no_drift_no_actions() -> None:
    ctl = controller()
    host = FakeHost()
    obs = ctl.observe(host, spec())
    assert (
        obs.canary is not None and obs.canary.ok and obs.canary.in_spool == {"vector.service": True}
    )
    assert ctl.diff(spec(), obs) == []
    assert ctl.plan(spec(), obs, []) == []
    assert host.calls[0] == [
        "systemd-cat", "-t", "compliance-agent-canary", "-p", "info", "echo", MARKER,
    ]  # fmt: skip


def test_canary_arriving_late_within_deadline_passes() -> None:
    clock = FakeClock()
    ctl = controller(clock)
    obs = ctl.observe(FakeHost(journal_after=5, spool_after=8), spec())
    assert obs.canary is not None and obs.canary.ok
    assert obs.canary.journal_seconds == pytest.approx(5 * POLL_INTERVAL)


def test_lost_canary_plans_disruptive_journald_restart_only() -> None:
    clock = FakeClock()
    ctl = controller(clock)
    host = FakeHost(journal_after=None, spool_after=None)
    obs = ctl.observe(host, spec())
    assert obs.canary is not None and obs.canary.written and not obs.canary.in_journal
    # bounded: stopped at the deadline, polling at POLL_INTERVAL
    assert clock.now - 100.0 == pytest.approx(2.0, abs=POLL_INTERVAL)
    assert host.count("journalctl") <= 2 / POLL_INTERVAL + 2
    drifts = ctl.diff(spec(), obs)
    assert [d.reason for d in drifts] == ["CanaryLost"]  # no forwarder blame on top
    actions = ctl.plan(spec(), obs, drifts)
    assert actions == [RestartUnit(unit=JOURNALD, disruptive=True, reason="CanaryLost")]
    assert actions[0].disruptive


def test_canary_write_failure_is_canary_lost() -> None:
    ctl = controller()
    host = FakeHost(write_rc=1)
    obs = ctl.observe(host, spec())
    assert host.count("journalctl") == 0
    drifts = ctl.diff(spec(), obs)
    assert [d.reason for d in drifts] == ["CanaryLost"]
    assert "Connection refused" in drifts[0].actual
    assert journald_restarts(ctl.plan(spec(), obs, drifts))[0].disruptive


def test_forwarder_inactive_started_without_journald_restart() -> None:
    ctl = controller()
    obs = ctl.observe(FakeHost("systemctl-show-vector-inactive.txt", spool_after=None), spec())
    drifts = ctl.diff(spec(), obs)
    assert [d.reason for d in drifts] == ["UnitInactive"]
    actions = ctl.plan(spec(), obs, drifts)
    assert StartUnit(unit="vector.service", reason="UnitInactive") in actions
    assert journald_restarts(actions) == []


def test_forwarder_running_but_canary_missing_from_spool_is_restarted() -> None:
    ctl = controller()
    obs = ctl.observe(FakeHost(spool_after=None), spec())
    drifts = ctl.diff(spec(), obs)
    assert [d.reason for d in drifts] == ["ForwarderCanaryLost"]
    assert ctl.plan(spec(), obs, drifts) == [
        RestartUnit(unit="vector.service", reason="ForwarderCanaryLost")
    ]


def test_journald_inactive_with_passing_canary_is_alert_only() -> None:
    show = (FIX / "systemctl-show-journald-vector-active.txt").read_text()
    host = FakeHost()
    running = "ActiveState=active\nSubState=running\nUnitFileState=static"
    host.show = show.replace(running, "ActiveState=inactive\nSubState=dead\nUnitFileState=static")
    ctl = controller()
    obs = ctl.observe(host, spec())
    drifts = ctl.diff(spec(), obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("JournaldInactive", Remedy.alert)]
    assert ctl.plan(spec(), obs, drifts) == []


def test_plan_refuses_journald_restart_if_observation_shows_canary_passed() -> None:
    # Even a stray CanaryLost drift (e.g. from an older pass) cannot restart
    # journald when this observation's canary passed.
    ctl = controller()
    obs = ctl.observe(FakeHost(), spec())
    stray = Drift(field="canary.journal", reason="CanaryLost", expected="", actual="")
    assert journald_restarts(ctl.plan(spec(), obs, [stray])) == []


def test_canary_disabled_writes_nothing_and_never_restarts_journald() -> None:
    ctl = controller()
    host = FakeHost(journal_after=None)
    obs = ctl.observe(host, spec(canary=False))
    assert obs.canary is None and host.count("systemd-cat") == 0
    assert (
        journald_restarts(ctl.plan(spec(canary=False), obs, ctl.diff(spec(canary=False), obs)))
        == []
    )


@pytest.mark.parametrize(
    ("written", "in_journal", "in_spool", "fwd_state"),
    list(
        itertools.product(
            [True, False],
            [True, False],
            [True, False],
            ["active", "inactive", "failed", "activating"],
        )
    ),
)
def test_guardrail_8_over_all_observations(
    written: bool, in_journal: bool, in_spool: bool, fwd_state: str
) -> None:
    show = (FIX / "systemctl-show-journald-vector-active.txt").read_text()
    show = show.replace("Id=vector.service\nNames=vector.service\nLoadState=loaded\n"
                        "ActiveState=active", "Id=vector.service\nNames=vector.service\n"
                        f"LoadState=loaded\nActiveState={fwd_state}")  # fmt: skip
    units = unit_states([JOURNALD, "vector.service"], show)
    from controllers.services import ServicesObserved

    canary = CanaryObserved(
        marker=MARKER, written=written, in_journal=written and in_journal,
        in_spool={"vector.service": in_spool}, deadline_seconds=2,
    )  # fmt: skip
    obs = LoggingObserved(units=ServicesObserved(units=units), canary=canary)
    ctl = controller()
    actions = ctl.plan(spec(), obs, ctl.diff(spec(), obs))
    restarts = journald_restarts(actions)
    if canary.ok:
        assert restarts == []
    else:
        assert len(restarts) == 1 and restarts[0].disruptive
    assert all(not a.disruptive for a in actions if a not in restarts)


def test_facts_carry_canary_and_unit_states() -> None:
    ctl = controller()
    obs = ctl.observe(FakeHost(), spec())
    facts = ctl.facts(spec(), obs)
    assert facts["canary"]["marker"] == MARKER and facts["canary"]["in_journal"] is True
    assert facts["units"][JOURNALD]["active_state"] == "active"


def test_recorded_journal_line_is_what_we_match() -> None:
    # the real journalctl -o json record of a systemd-cat canary (systemd 252)
    import json

    rec = json.loads((FIX / "journalctl-canary.json").read_text())
    assert rec["SYSLOG_IDENTIFIER"] == "compliance-agent-canary"
    assert rec["MESSAGE"] == MARKER and rec["_TRANSPORT"] == "stdout"


def test_example_baseline_parses() -> None:
    from specs.baseline import load_baseline
    from tests.conftest import REPO_ROOT

    baseline = load_baseline(REPO_ROOT / "examples" / "baselines" / "logging.json")
    assert list(baseline.resources()) == ["logging"]


def test_unreadable_journal_is_alert_only_and_never_restarts_journald() -> None:
    clock = FakeClock()
    ctl = controller(clock)
    host = FakeHost(journal_denied=True)
    obs = ctl.observe(host, spec())
    assert obs.canary is not None and not obs.canary.ok and not obs.canary.lost
    assert host.count("journalctl") == 1  # no pointless polling until the deadline
    drifts = ctl.diff(spec(), obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("JournalUnreadable", Remedy.alert)]
    assert "systemd-journal" in drifts[0].message
    assert ctl.plan(spec(), obs, drifts) == []
    # even a stray CanaryLost drift cannot restart journald on such an observation
    stray = Drift(field="canary.journal", reason="CanaryLost", expected="", actual="")
    assert journald_restarts(ctl.plan(spec(), obs, [stray])) == []


def test_partial_journal_view_hint_counts_as_unreadable() -> None:
    host = FakeHost(journal_after=None)
    hint = (
        "Hint: You are currently not seeing messages from other users and the system.\n"
        "      Users in groups 'adm', 'systemd-journal' can see all messages.\n"
    )
    real_run = host.run

    def run(argv: Sequence[str], timeout: float = 30.0) -> Completed:
        done = real_run(argv, timeout)
        if argv[0] == "journalctl":
            return done.model_copy(update={"stderr": hint})
        return done

    host.run = run  # type: ignore[method-assign]
    obs = controller().observe(host, spec())
    assert obs.canary is not None and obs.canary.journal_unreadable is not None
    assert "not seeing messages" in obs.canary.journal_unreadable
