"""Logging controller, kind "logging" (HIPAA 164.312(b), 164.308(a)(1)(ii)(D)).

(The module is not called `logging` so it can never shadow the standard library.)

observe:
1. the canary: write one unique line to the journal with
   `systemd-cat -t compliance-agent-canary echo <marker>`, then poll, bounded by
   `canary_deadline_seconds`, until `journalctl SYSLOG_IDENTIFIER=... MESSAGE=<marker>`
   returns it and every forwarder's `spool_path` contains it (`grep -rqF`).
   This line is the ONLY side effect of observing, on purpose: a unit that is
   "active" proves nothing about whether audit records are really stored.
2. unit states of journald and the forwarders, through the services
   controller (one `systemctl show`).

diff / plan:
* a forwarder unit inactive/failed/disabled: the services controller's drift
  and action (StartUnit / RestartUnit / EnableUnit, non-disruptive);
* forwarder active but the canary never reached its spool: ForwarderCanaryLost
  -> RestartUnit(forwarder), non-disruptive;
* the canary never reached the journal: CanaryLost -> RestartUnit(journald,
  disruptive=True). Guardrail 8: journald is restarted ONLY after a failed
  canary, and only as a disruptive action, so the runtime's maintenance-window
  guard decides when. A journald that merely looks inactive while the canary
  passes (it is socket-activated) is alert-only, never restarted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from controllers.base import ControllerBase
from controllers.services import ServicesController, ServicesObserved
from specs.actions import Action, RestartUnit
from specs.drift import Drift, Remedy
from specs.host import Host, HostError
from specs.kinds.logging_ import CANARY_IDENTIFIER, LoggingSpec
from specs.kinds.services import ServicesSpec, UnitSpec
from specs.watch import WatchTargets

POLL_INTERVAL = 0.05  # seconds between read-backs of the canary
# What journalctl (systemd 252) says when the agent may not read the system journal.
PERMISSION_HINTS = (
    "insufficient permissions",
    "not seeing messages from other users and the system",
)
COMMAND_TIMEOUT = 10.0


def new_marker() -> str:
    return f"compliance-agent-canary-{uuid.uuid4().hex}"


class CanaryObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    marker: str
    written: bool
    write_error: str | None = None
    in_journal: bool = False
    journal_seconds: float | None = None  # how long until journalctl returned it
    # The agent may not read the whole journal (not root, not in systemd-journal):
    # then a missing canary says nothing about journald and must not restart it.
    journal_unreadable: str | None = None
    in_spool: dict[str, bool] = {}  # forwarder unit -> marker seen in its spool_path
    spool_errors: dict[str, str] = {}
    deadline_seconds: float

    @property
    def ok(self) -> bool:
        return self.written and self.in_journal

    @property
    def lost(self) -> bool:
        """Evidence that journald loses records (not merely that we cannot look)."""
        return not self.ok and self.journal_unreadable is None


class LoggingObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    units: ServicesObserved
    canary: CanaryObserved | None = None


def write_argv(marker: str) -> list[str]:
    return ["systemd-cat", "-t", CANARY_IDENTIFIER, "-p", "info", "echo", marker]


def journal_argv(marker: str) -> list[str]:
    # no --quiet: journalctl's hint that we only see part of the journal is the
    # signal that the agent lacks permission (see PERMISSION_HINTS)
    return ["journalctl", "--no-pager", "--output=cat",
            f"SYSLOG_IDENTIFIER={CANARY_IDENTIFIER}", f"MESSAGE={marker}"]  # fmt: skip


def spool_argv(marker: str, path: str) -> list[str]:
    # -r: a spool may be a directory of queue files; -a: they may be binary
    return ["grep", "-r", "-q", "-a", "-F", "-e", marker, "--", path]


def _units_spec(spec: LoggingSpec, with_journald: bool) -> ServicesSpec:
    units = [UnitSpec(name=f.unit) for f in spec.forwarders]
    if with_journald:
        # journald is static (no [Install]): only its activity is of interest
        units.insert(0, UnitSpec(name=spec.journald_unit, enabled=False))
    return ServicesSpec(units=units)


class LoggingController(ControllerBase[LoggingSpec, LoggingObserved]):
    spec_type = LoggingSpec
    kind = "logging"

    def __init__(
        self,
        *,
        marker: Callable[[], str] = new_marker,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.marker = marker
        self.monotonic = monotonic
        self.sleep = sleep
        self.services = ServicesController()

    def backoff(self, spec: LoggingSpec) -> tuple[float, float]:
        return spec.restart_backoff_base, max(spec.restart_backoff_cap, spec.restart_backoff_base)

    def targets(self, spec: LoggingSpec) -> WatchTargets:
        return WatchTargets.of(units=[spec.journald_unit, *(f.unit for f in spec.forwarders)])

    # -- observe -----------------------------------------------------------------

    def observe(self, host: Host, spec: LoggingSpec) -> LoggingObserved:
        canary = self._canary(host, spec) if spec.canary else None
        units = self.services.observe(host, _units_spec(spec, with_journald=True))
        return LoggingObserved(units=units, canary=canary)

    def _canary(self, host: Host, spec: LoggingSpec) -> CanaryObserved:
        marker = self.marker()
        deadline_s = spec.canary_deadline_seconds
        base: dict[str, Any] = {"marker": marker, "deadline_seconds": deadline_s}
        try:
            done = host.run(write_argv(marker), timeout=COMMAND_TIMEOUT)
        except HostError as e:
            return CanaryObserved(**base, written=False, write_error=str(e))
        if done.exit_code != 0:
            error = f"systemd-cat exited {done.exit_code}: {done.stderr.strip()[:300]}"
            return CanaryObserved(**base, written=False, write_error=error)
        spools = {f.unit: f.spool_path for f in spec.forwarders if f.spool_path}
        in_spool = dict.fromkeys(spools, False)
        errors: dict[str, str] = {}
        journal_s: float | None = None
        start = self.monotonic()
        while True:  # bounded: exits at the deadline at the latest
            if journal_s is None and self._in_journal(host, marker, errors):
                journal_s = round(self.monotonic() - start, 3)
            if "unreadable" in errors:
                break  # polling cannot help: we are not allowed to see it
            for unit, path in spools.items():
                if not in_spool[unit]:
                    in_spool[unit] = self._in_spool(host, marker, unit, path, errors)
            if journal_s is not None and all(in_spool.values()):
                break
            if self.monotonic() - start >= deadline_s:
                break
            self.sleep(POLL_INTERVAL)
        for unit, seen in in_spool.items():
            if seen:
                errors.pop(unit, None)  # an early "no such file" is moot once it arrived
        if journal_s is not None:
            errors.pop("journal", None)
        unreadable = errors.pop("unreadable", None) if journal_s is None else None
        return CanaryObserved(
            **base, written=True, in_journal=journal_s is not None, journal_seconds=journal_s,
            journal_unreadable=unreadable, in_spool=in_spool, spool_errors=errors,
        )  # fmt: skip

    def _in_journal(self, host: Host, marker: str, errors: dict[str, str]) -> bool:
        try:
            done = host.run(journal_argv(marker), timeout=COMMAND_TIMEOUT)
        except HostError as e:
            errors["journal"] = str(e)
            return False
        found = marker in done.stdout.splitlines()
        if not found and any(h in done.stderr for h in PERMISSION_HINTS):
            errors["unreadable"] = done.stderr.strip()[:300]
        elif done.exit_code != 0:
            errors["journal"] = f"journalctl exited {done.exit_code}: {done.stderr.strip()[:300]}"
        return found

    def _in_spool(
        self, host: Host, marker: str, unit: str, path: str, errors: dict[str, str]
    ) -> bool:
        try:
            done = host.run(spool_argv(marker, path), timeout=COMMAND_TIMEOUT)
        except HostError as e:
            errors[unit] = str(e)
            return False
        if done.exit_code > 1:
            errors[unit] = done.stderr.strip()[:300] or f"grep exited {done.exit_code}"
        return done.exit_code == 0

    # -- diff / plan ---------------------------------------------------------------

    def diff(self, spec: LoggingSpec, observed: LoggingObserved) -> list[Drift]:
        drifts = self.services.diff(_units_spec(spec, with_journald=False), observed.units)
        canary = observed.canary
        journald = observed.units.units.get(spec.journald_unit)
        if canary is not None and canary.journal_unreadable is not None:
            drifts.append(Drift(
                field="canary.journal", reason="JournalUnreadable",
                expected="the agent can read the system journal",
                actual=canary.journal_unreadable,
                message=f"cannot verify audit logging: journalctl says "
                f"'{canary.journal_unreadable}'. Run the agent as root or add its user to "
                "the systemd-journal group. journald is not restarted for this.",
                remedy=Remedy.alert,
            ))  # fmt: skip
        elif canary is not None and canary.lost:
            if not canary.written:
                actual = f"write failed: {canary.write_error}"
            else:
                actual = f"not in the journal after {canary.deadline_seconds:g}s"
            state = journald.active_state if journald else "unknown"
            drifts.append(Drift(
                field="canary.journal", reason="CanaryLost",
                expected=f"canary readable with journalctl within {canary.deadline_seconds:g}s",
                actual=actual,
                message=f"audit log canary {canary.marker} was lost ({actual}; {spec.journald_unit}"
                f" is {state}). Audit records are not being stored. The agent restarts "
                f"{spec.journald_unit} in the maintenance window; check disk space and "
                "`journalctl --verify` now.",
            ))  # fmt: skip
        elif journald is not None and journald.active_state not in ("active", "reloading"):
            # The canary got through (socket activation revives journald), so
            # there is nothing to repair; report it, never restart it for this.
            drifts.append(Drift(
                field=f"units.{spec.journald_unit}.active", reason="JournaldInactive",
                expected="active", actual=journald.active_state,
                message=f"{spec.journald_unit} is {journald.active_state} although the canary "
                "passed", remedy=Remedy.alert,
            ))  # fmt: skip
        if canary is not None and canary.ok:
            drifts.extend(_spool_drifts(spec, observed, canary))
        return drifts

    def plan(
        self, spec: LoggingSpec, observed: LoggingObserved, drifts: list[Drift]
    ) -> list[Action]:
        unit_drifts = [d for d in drifts if d.field.startswith("units.")]
        actions = self.services.plan(
            _units_spec(spec, with_journald=False), observed.units, unit_drifts
        )
        for d in drifts:
            if d.remedy is not Remedy.remediate or d.reason != "ForwarderCanaryLost":
                continue
            restart = RestartUnit(unit=d.field.split(".", 1)[1], reason=d.reason)
            if all(a.key != restart.key for a in actions):
                actions.append(restart)
        canary = observed.canary
        # Guardrail 8, checked against the observation itself and not only the
        # drift list: no journald restart unless this pass's canary failed.
        if canary is not None and canary.lost and any(d.reason == "CanaryLost" for d in drifts):
            actions.append(RestartUnit(unit=spec.journald_unit, disruptive=True,
                                       reason="CanaryLost"))  # fmt: skip
        return actions

    def facts(self, spec: LoggingSpec, observed: LoggingObserved) -> dict[str, Any]:
        out: dict[str, Any] = self.services.facts(
            _units_spec(spec, with_journald=True), observed.units
        )
        c = observed.canary
        if c is not None:
            out["canary"] = {
                "marker": c.marker, "written": c.written, "in_journal": c.in_journal,
                "journal_seconds": c.journal_seconds, "in_spool": c.in_spool,
            }  # fmt: skip
        return out


def _spool_drifts(
    spec: LoggingSpec, observed: LoggingObserved, canary: CanaryObserved
) -> list[Drift]:
    out: list[Drift] = []
    for fwd in spec.forwarders:
        if fwd.spool_path is None or canary.in_spool.get(fwd.unit, False):
            continue
        state = observed.units.units.get(fwd.unit)
        if state is None or state.active_state != "active":
            continue  # the unit drift already covers a forwarder that is not running
        error = canary.spool_errors.get(fwd.unit)
        out.append(Drift(
            field=f"forwarders.{fwd.unit}", reason="ForwarderCanaryLost",
            expected=f"canary in {fwd.spool_path} within {canary.deadline_seconds:g}s",
            actual=error or "not found",
            message=f"{fwd.unit} is running but the canary {canary.marker} did not reach "
            f"{fwd.spool_path}{f' ({error})' if error else ''}; restarting {fwd.unit}",
        ))  # fmt: skip
    return out
