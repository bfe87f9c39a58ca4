"""Logging controller against the REAL journal of a systemd 252 container.

The forwarder stand-in really forwards: it follows the journal for the canary
identifier and appends what it reads to a spool file, like a forwarder's disk
buffer would hold it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controllers.logging_ import LoggingController
from reconciler.actuator.local import LocalActuator
from reconciler.runtime.reconcile import Runtime
from reconciler.service import guard_policy
from specs.actions import RestartUnit
from specs.config import parse_config
from specs.drift import Remedy
from specs.host import Completed, FileStat
from specs.kinds.logging_ import LoggingSpec
from specs.status import Outcome
from tests.harness.sdbox import SystemdContainer

SPOOL = "/var/spool/fwd/out.log"
FORWARDER_UNIT = f"""[Unit]
Description=log forwarder stand-in (compliance-agent test)

[Service]
ExecStartPre=/bin/mkdir -p /var/spool/fwd
ExecStart=/bin/sh -c 'exec journalctl -f -n 0 -o cat -t compliance-agent-canary >> {SPOOL}'

[Install]
WantedBy=multi-user.target
"""
JOURNALD = "systemd-journald.service"


def spec(**kw: object) -> LoggingSpec:
    base: dict[str, object] = {
        "forwarders": [{"unit": "fwd-standin.service", "spool_path": "/var/spool/fwd"}],
        "canary_deadline_seconds": 5,
    }
    base.update(kw)
    return LoggingSpec.model_validate(base)


@pytest.fixture
def box(systemd_container: SystemdContainer) -> Iterator[SystemdContainer]:
    systemd_container.install_unit("fwd-standin.service", FORWARDER_UNIT)
    systemd_container.check(["systemctl", "enable", "--now", "fwd-standin.service"])
    _wait_forwarder_following(systemd_container)
    try:
        yield systemd_container
    finally:
        # never leave journald frozen, even if an assertion failed mid-test
        with contextlib.suppress(Exception):
            systemd_container.run(["systemctl", "kill", "-s", "CONT", JOURNALD])


def _wait_forwarder_following(box: SystemdContainer, deadline_s: float = 20.0) -> None:
    """`active` only means the forwarder's process exists; its `journalctl -f -n 0`
    forwards nothing written before it opened the journal. Send warm-up lines
    until one arrives, so the tests measure the controller, not start-up."""
    deadline = time.monotonic() + deadline_s
    n = 0
    while time.monotonic() < deadline:
        n += 1
        box.check(["systemd-cat", "-t", "compliance-agent-canary", "echo", f"warm-up-{n}"])
        poll_until = time.monotonic() + 0.5
        while time.monotonic() < poll_until:
            with contextlib.suppress(OSError):
                if "warm-up-" in box.read_text(SPOOL):
                    return
            time.sleep(0.05)
    raise AssertionError("the forwarder stand-in never started forwarding")


def wait_active(box: SystemdContainer, unit: str, deadline_s: float = 10.0) -> str:
    deadline = time.monotonic() + deadline_s
    state = ""
    while time.monotonic() < deadline:
        state = box.run(["systemctl", "is-active", unit]).stdout.strip()
        if state == "active":
            break
    return state


def test_canary_round_trip_through_journal_and_forwarder(box: SystemdContainer) -> None:
    ctl = LoggingController()
    obs = ctl.observe(box, spec())
    assert obs.canary is not None
    assert obs.canary.written and obs.canary.in_journal, obs.canary
    assert obs.canary.in_spool == {"fwd-standin.service": True}, obs.canary
    # it really is in the real journal, written by systemd-cat
    back = box.run(["journalctl", "-o", "cat", "-t", "compliance-agent-canary"]).stdout
    assert obs.canary.marker in back.splitlines()
    assert obs.canary.marker in box.read_text(SPOOL)
    drifts = ctl.diff(spec(), obs)
    assert drifts == []
    assert ctl.plan(spec(), obs, drifts) == []  # above all: no journald restart


def test_stopped_forwarder_is_started_again(box: SystemdContainer) -> None:
    box.check(["systemctl", "stop", "fwd-standin.service"])
    ctl = LoggingController()
    obs = ctl.observe(box, spec(canary_deadline_seconds=1))
    drifts = ctl.diff(spec(), obs)
    assert [d.reason for d in drifts] == ["UnitInactive"]
    actions = ctl.plan(spec(), obs, drifts)
    assert [(a.type, a.unit, a.disruptive) for a in actions] == [  # type: ignore[union-attr]
        ("StartUnit", "fwd-standin.service", False)
    ]
    assert LocalActuator(box).execute(actions[0]).ok
    assert wait_active(box, "fwd-standin.service") == "active"
    after = ctl.observe(box, spec())
    assert ctl.diff(spec(), after) == [], after.canary


def test_forwarder_running_but_not_forwarding_is_restarted(box: SystemdContainer) -> None:
    # A wedged forwarder: the process runs, nothing reaches the spool.
    box.check(["systemctl", "kill", "-s", "STOP", "fwd-standin.service"])
    try:
        ctl = LoggingController()
        obs = ctl.observe(box, spec(canary_deadline_seconds=1))
        drifts = ctl.diff(spec(), obs)
        assert [d.reason for d in drifts] == ["ForwarderCanaryLost"]
        assert ctl.plan(spec(), obs, drifts) == [
            RestartUnit(unit="fwd-standin.service", reason="ForwarderCanaryLost")
        ]
    finally:
        box.run(["systemctl", "kill", "-s", "CONT", "fwd-standin.service"])


def test_frozen_journald_loses_the_canary_and_only_then_gets_a_disruptive_restart(
    box: SystemdContainer,
) -> None:
    # Stopping journald would not break logging: its sockets start it again on
    # the next write. A SIGSTOPped journald is what really loses records: the
    # sockets still accept (so systemd-cat succeeds) but nothing is stored.
    box.check(["systemctl", "kill", "-s", "STOP", JOURNALD])
    ctl = LoggingController()
    s = spec(forwarders=[], canary_deadline_seconds=2)
    obs = ctl.observe(box, s)
    assert obs.canary is not None and obs.canary.written and not obs.canary.in_journal
    drifts = ctl.diff(s, obs)
    assert [d.reason for d in drifts] == ["CanaryLost"]
    actions = ctl.plan(s, obs, drifts)
    assert actions == [RestartUnit(unit=JOURNALD, disruptive=True, reason="CanaryLost")]
    # what the runtime does inside the maintenance window
    result = LocalActuator(box).execute(actions[0])
    assert result.ok, result.error
    assert wait_active(box, JOURNALD) == "active"
    after = ctl.observe(box, s)
    assert after.canary is not None and after.canary.ok, after.canary
    assert ctl.diff(s, after) == []


def test_stopped_journald_is_revived_by_its_socket_so_no_restart(box: SystemdContainer) -> None:
    box.check(["systemctl", "stop", JOURNALD])
    ctl = LoggingController()
    s = spec(forwarders=[])
    obs = ctl.observe(box, s)
    assert obs.canary is not None and obs.canary.ok, obs.canary
    drifts = ctl.diff(s, obs)
    assert all(d.reason != "CanaryLost" for d in drifts)
    assert all(
        not (isinstance(a, RestartUnit) and a.unit == JOURNALD) for a in ctl.plan(s, obs, drifts)
    )


def test_guardrail_8_through_the_runtime_window_guard(
    box: SystemdContainer, tmp_path: Path
) -> None:
    """The real Runtime + guards: outside the window the journald restart is
    deferred (journald stays frozen), inside it runs and the canary passes."""
    cfg = parse_config({
        "siteId": "clinic-1", "hostId": "host-1", "baselinePath": str(tmp_path / "b.json"),
        "clientCertFile": str(tmp_path / "c.pem"), "clientKeyFile": str(tmp_path / "c.key"),
        "signingKeyFile": str(tmp_path / "s.key"), "caCertFile": str(tmp_path / "ca.pem"),
        "mcpPublicKeys": ["ab" * 32], "resellerId": "msp-1",
        "stateDirectory": str(tmp_path / "state"), "statusSocket": None,
        "maintenanceWindow": "02:00-04:00",
    })  # fmt: skip
    s = spec(forwarders=[], canary_deadline_seconds=2)
    box.check(["systemctl", "kill", "-s", "STOP", JOURNALD])

    def runtime(at: datetime) -> Runtime:
        return Runtime(guard_policy(cfg), box, LocalActuator(box), {"logging": LoggingController()}, None,
                       clock=lambda: at)  # fmt: skip

    business_hours = runtime(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    res = business_hours.reconcile("logging", s)
    assert res.outcome is Outcome.deferred, (res.outcome, res.error)
    assert [a.unit for a in res.planned] == [JOURNALD]  # type: ignore[union-attr]
    assert res.verdicts[0][-1].reason == "OutsideMaintenanceWindow"
    pid = box.run(["systemctl", "show", "-p", "MainPID", "--value", JOURNALD]).stdout.strip()
    proc_state = box.read_text(f"/proc/{pid}/stat").rsplit(") ", 1)[1][0]
    assert proc_state == "T", "journald was touched outside the window (it is no longer stopped)"

    in_window = runtime(datetime(2026, 11, 26, 3, 0, tzinfo=UTC))
    res = in_window.reconcile("logging", s)
    assert res.outcome is Outcome.success, (res.outcome, res.error, res.remaining)
    assert [r.result for r in res.action_records] == ["ok", "ok"]
    assert res.remaining == []


class Unprivileged:
    """The container Host, but every command runs as nobody (like an agent
    deployed without the systemd-journal group)."""

    def __init__(self, box: SystemdContainer) -> None:
        self.box = box

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        return self.box.run([*drop, *argv], timeout)

    def read_text(self, path: str) -> str:
        return self.box.read_text(path)

    def stat(self, path: str) -> FileStat:
        return self.box.stat(path)


def test_agent_without_journal_access_alerts_and_never_restarts_journald(
    box: SystemdContainer,
) -> None:
    ctl = LoggingController()
    s = spec(forwarders=[], canary_deadline_seconds=2)
    obs = ctl.observe(Unprivileged(box), s)
    assert obs.canary is not None and obs.canary.written, obs.canary
    assert obs.canary.journal_unreadable is not None, obs.canary
    drifts = ctl.diff(s, obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("JournalUnreadable", Remedy.alert)]
    assert ctl.plan(s, obs, drifts) == []
