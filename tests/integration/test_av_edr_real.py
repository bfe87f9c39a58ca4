"""AV/EDR controller against a REAL systemd 252 (container): stand-in scanner units,
engine binary and signature database files inside the container."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta

from controllers.av_edr import AvEdrController
from reconciler.actuator.local import LocalActuator
from specs.actions import StartUnit
from specs.drift import Remedy
from specs.kinds.av_edr import AvEdrSpec
from tests.harness.sdbox import SystemdContainer

ENGINE = "/usr/local/sbin/clamd-standin"
ENGINE_BODY = "#!/bin/sh\nexec /bin/sleep infinity\n"
ENGINE_SHA = hashlib.sha256(ENGINE_BODY.encode()).hexdigest()
DAILY = "/var/lib/clamav/daily.cvd"

DAEMON_UNIT = f"""[Unit]
Description=clamd stand-in (compliance-agent test)

[Service]
ExecStart={ENGINE}

[Install]
WantedBy=multi-user.target
"""
# The updater makes the signatures fresh the way freshclam does: it rewrites the
# database (as .cld, like an incremental update).
UPDATER_UNIT = """[Unit]
Description=freshclam stand-in (compliance-agent test)

[Service]
Type=oneshot
ExecStart=/usr/bin/touch /var/lib/clamav/daily.cld
"""


def setup_scanner(box: SystemdContainer) -> None:
    box.write_file(ENGINE, ENGINE_BODY, mode=0o755)
    box.write_file(DAILY, "ClamAV-VDB:stand-in\n")
    box.install_unit("clamd-standin.service", DAEMON_UNIT)
    box.install_unit("freshclam-standin.service", UPDATER_UNIT)
    box.check(["systemctl", "enable", "--now", "clamd-standin.service"])


def spec(**kw: object) -> AvEdrSpec:
    base: dict[str, object] = {
        "units": [{"name": "clamd-standin.service"}],
        "engine_path": ENGINE,
        "engine_sha256": ENGINE_SHA,
        "signature_dbs": [DAILY],
        "max_signature_age_hours": 24,
        "updater_unit": "freshclam-standin.service",
    }
    base.update(kw)
    return AvEdrSpec.model_validate(base)


def wait_active(box: SystemdContainer, unit: str, deadline_s: float = 10.0) -> str:
    deadline = time.monotonic() + deadline_s
    state = ""
    while time.monotonic() < deadline:
        state = box.run(["systemctl", "is-active", unit]).stdout.strip()
        if state == "active":
            break
    return state


def test_healthy_scanner_has_no_drift(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    setup_scanner(box)
    ctl = AvEdrController()
    obs = ctl.observe(box, spec())
    assert ctl.diff(spec(), obs) == []
    facts = ctl.facts(spec(), obs)
    assert facts["engine_sha256"] == ENGINE_SHA
    assert facts["units"]["clamd-standin.service"]["active_state"] == "active"


def test_stopped_scanner_is_restarted_and_then_running(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    setup_scanner(box)
    box.check(["systemctl", "stop", "clamd-standin.service"])
    ctl = AvEdrController()
    obs = ctl.observe(box, spec())
    drifts = ctl.diff(spec(), obs)
    assert [d.reason for d in drifts] == ["UnitInactive"]
    actions = ctl.plan(spec(), obs, drifts)
    assert actions == [StartUnit(unit="clamd-standin.service", reason="UnitInactive")]
    assert not actions[0].disruptive
    result = LocalActuator(box).execute(actions[0])
    assert result.ok, result.error
    assert wait_active(box, "clamd-standin.service") == "active"
    assert ctl.diff(spec(), ctl.observe(box, spec())) == []


def test_killed_scanner_with_failed_state_gets_restart(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    setup_scanner(box)
    box.check(["systemctl", "kill", "-s", "KILL", "clamd-standin.service"])
    ctl = AvEdrController()
    deadline = time.monotonic() + 10
    drifts = []
    while time.monotonic() < deadline:
        drifts = ctl.diff(spec(), ctl.observe(box, spec()))
        if drifts and drifts[0].reason == "UnitFailed":
            break
    assert [d.reason for d in drifts] == ["UnitFailed"]
    (action,) = ctl.plan(spec(), ctl.observe(box, spec()), drifts)
    assert action.type == "RestartUnit"
    assert LocalActuator(box).execute(action).ok
    assert wait_active(box, "clamd-standin.service") == "active"


def test_engine_with_wrong_hash_is_alert_only(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    setup_scanner(box)
    box.write_file(ENGINE, ENGINE_BODY + "# tampered\n", mode=0o755)
    ctl = AvEdrController()
    obs = ctl.observe(box, spec())
    drifts = ctl.diff(spec(), obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("EngineHashMismatch", Remedy.alert)]
    tampered = hashlib.sha256((ENGINE_BODY + "# tampered\n").encode()).hexdigest()
    assert drifts[0].actual == tampered
    assert ctl.plan(spec(), obs, drifts) == []


def test_missing_engine_is_alert_only(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    setup_scanner(box)
    ctl = AvEdrController()
    s = spec(engine_path="/usr/local/sbin/no-such-clamd")
    obs = ctl.observe(box, s)
    drifts = ctl.diff(s, obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("EngineMissing", Remedy.alert)]
    assert ctl.plan(s, obs, drifts) == []


def test_stale_signatures_start_the_updater_which_freshens_them(
    systemd_container: SystemdContainer,
) -> None:
    box = systemd_container
    setup_scanner(box)
    old = time.time() - 3 * 86400
    os.utime(box.host_path(DAILY), (old, old))
    ctl = AvEdrController()
    obs = ctl.observe(box, spec())
    drifts = ctl.diff(spec(), obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("SignaturesStale", Remedy.remediate)]
    actions = ctl.plan(spec(), obs, drifts)
    assert actions == [StartUnit(unit="freshclam-standin.service", reason="SignaturesStale")]
    assert LocalActuator(box).execute(actions[0]).ok  # oneshot: start returns when done
    after = ctl.observe(box, spec())
    assert after.signatures[0].found == "/var/lib/clamav/daily.cld"
    assert ctl.diff(spec(), after) == []


def test_stale_signatures_without_updater_only_alert(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    setup_scanner(box)
    old = time.time() - 3 * 86400
    os.utime(box.host_path(DAILY), (old, old))
    s = spec(updater_unit=None)
    ctl = AvEdrController(clock=lambda: datetime.now(UTC) + timedelta(minutes=1))
    obs = ctl.observe(box, s)
    drifts = ctl.diff(s, obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("SignaturesStale", Remedy.alert)]
    assert ctl.plan(s, obs, drifts) == []
