"""The NixOS rebuild transaction (guardrail 5): switch, health-check, roll back.

    1. remember the running system and the system profile's generation N, and
       journal the transaction root-side (reconciler.actuator.transaction)
    2. switch: store path -> `nix-env -p PROFILE --set TARGET` then
       `TARGET/bin/switch-to-configuration switch`; flake -> `nixos-rebuild switch --flake REF`.
       The switch runs in a transient unit (`systemd-run`, as nixos-rebuild
       does since NixOS 23.11), not as the actuator's child: a generation that
       changes the actuator's or the agent's unit restarts them mid-switch,
       and the switch must not die with them
    3. health: `systemctl is-system-running --wait` until the journaled
       deadline must print `running` (degraded, maintenance, stopping, or the
       deadline = unhealthy)
    4. failed switch (any non-zero exit: switch-to-configuration exits 2 when the
       activation script failed and 4 when units failed, 1 when it refused to
       start; the profile already points at the new generation in every case) or
       unhealthy -> `nix-env -p PROFILE --switch-generation N` and the previously
       running system's `bin/switch-to-configuration switch` (again in a
       transient unit), then health again -> outcome `reverted`
       (rollback_generation N); still unhealthy -> `failed`.

Every phase is journaled before it acts, and the transient units are kept
after they exit (RemainAfterExit, no --collect) until their exit status is
journaled, so an actuator that was restarted or killed at any point resumes
the open transaction (`RebuildTransactions.resume`, called when the actuator
starts and before each rebuild) and finishes it: it waits for a switch that
is still running, health-checks until the same deadline, and rolls back at
most once (a rollback unit that exists is waited for, never started again).
Like deploy-rs's "magic rollback", a new generation is kept only once the
actuator itself has confirmed it healthy.

A host that was already degraded before the switch is judged by its failed
units instead: the switch is unhealthy only if it added failed units, so an
unrelated broken unit does not make every rebuild roll back.

Every command is one ActionRecord (step, action, command, exit_code,
duration_sec, result) so evidence shows exactly what ran.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from reconciler.actuator.rebuild_steps import (
    CURRENT_SYSTEM,
    PROFILE,
    QUERY_TIMEOUT,
    Steps,
    changed,
    failed_units_if_degraded,
    generation_link,
    healthy,
    link,
    profile_generation,
    tail,
)
from reconciler.actuator.result import ActionResult
from reconciler.actuator.transaction import (
    Phase,
    RebuildTransaction,
    TransactionJournal,
    TransactionJournalError,
    new_txid,
)
from specs.actions import NixosRebuild
from specs.host import Host, HostError
from specs.kinds.patching import is_store_path
from specs.status import ActionRecord, Outcome

log = logging.getLogger("compliance_agent.actuator.rebuild")

NIX_ENV_TIMEOUT = 120.0
SWITCH_TIMEOUT = 1800.0  # a flake switch may build; a hung activation must still end
MIN_HEALTH_WAIT = 5.0  # a transaction resumed past its deadline still gets one short look
UNIT_POLL_INTERVAL = 0.5
# Read from the transient unit: its state, and the main process's exit status.
UNIT_PROPERTIES = "LoadState,ActiveState,SubState,Result,ExecMainCode,ExecMainStatus"
CLD_EXITED = "1"  # ExecMainCode: the main process exited (anything else: killed or dumped)


class _UnitEnd:
    """How a transient unit ended: `found` False when systemd no longer knows it."""

    def __init__(self, found: bool, exit_code: int | None = None, detail: str = "",
                 timed_out: bool = False) -> None:
        self.found = found
        self.exit_code = exit_code
        self.detail = detail
        self.timed_out = timed_out


def transient_argv(unit: str, command: list[str], description: str) -> list[str]:
    """`systemd-run` for `command` in its own unit, outside the actuator's cgroup.

    The unit stays loaded after its command exits (RemainAfterExit, no
    --collect) so whoever resumes the transaction can still read the exit
    status; the transaction discards it once that is journaled. The unit does
    not inherit the actuator's environment: NIX_REMOTE=daemon keeps builds
    out of this process tree's sandbox, PATH is the actuator's own.
    """
    return ["systemd-run", f"--unit={unit}", f"--description={description}",
            "--service-type=exec", "--property=RemainAfterExit=yes", "--no-ask-password",
            "--quiet", "--setenv=NIX_REMOTE=daemon", "--setenv=PATH", "--", *command]


def switch_command(action: NixosRebuild) -> list[str]:
    if is_store_path(action.target):
        return [f"{action.target}/bin/switch-to-configuration", "switch"]
    return ["nixos-rebuild", "switch", "--flake", action.target]


class RebuildTransactions:
    """Runs rebuild transactions and finishes the one an earlier process left open.

    `confirm_delivery`: when True (the socket server), a finished result stays
    pending until `acknowledge` says it reached the agent; a rebuild request
    for the same target gets that pending result instead of a new switch, so
    an agent that was restarted mid-transaction still records its outcome.
    When False (in-process), returning the result delivers it.
    """

    def __init__(
        self,
        host: Host,
        journal: TransactionJournal,
        *,
        max_health_timeout: float,
        confirm_delivery: bool = False,
        switch_timeout: float = SWITCH_TIMEOUT,
        poll_interval: float = UNIT_POLL_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.host = host
        self.journal = journal
        self.max_health_timeout = max_health_timeout
        self.confirm_delivery = confirm_delivery
        self.switch_timeout = switch_timeout
        self.poll_interval = poll_interval
        self.monotonic = monotonic
        self.clock = clock
        self.sleep = sleep
        # Transactions are driven under the server's change lock; an acknowledgement
        # comes from a connection thread, so its read-modify-write of the journal
        # must not interleave with a save of a transaction being driven.
        self._journal_lock = threading.Lock()

    def execute(self, action: NixosRebuild, step_start: int = 1) -> ActionResult:
        try:
            tx = self.journal.load()
        except TransactionJournalError as e:
            return _refused(action, step_start, str(e))
        if tx is not None and tx.phase is not Phase.done:
            tx = self._drive(tx)  # an earlier process's transaction finishes first
            if tx.action.target == action.target:
                return self._hand_over(tx)
        elif tx is not None and not tx.delivered and tx.action.target == action.target:
            return self._hand_over(tx)  # it finished while the agent could not hear it
        return self._hand_over(self._drive(self._begin(action, step_start)))

    def resume(self) -> ActionResult | None:
        """Finish a transaction an earlier process left open; None if there is none."""
        try:
            tx = self.journal.load()
        except TransactionJournalError as e:
            log.error("rebuild transaction journal: %s", e)
            return None
        if tx is None or tx.phase is Phase.done:
            return None
        log.info("resuming rebuild transaction %s (%s, phase %s)",
                 tx.txid, tx.action.target, tx.phase)
        return self._drive(tx).result

    def undelivered(self) -> ActionResult | None:
        """The result of a finished transaction that never reached the agent, if any."""
        try:
            tx = self.journal.load()
        except TransactionJournalError as e:
            log.error("rebuild transaction journal: %s", e)
            return None
        if tx is None or tx.phase is not Phase.done or tx.delivered:
            return None
        return tx.result

    def acknowledge(self, result: ActionResult) -> None:
        """`result` reached the agent: a later request starts a new transaction."""
        with self._journal_lock:
            tx = self.journal.load()
            if (tx is not None and tx.phase is Phase.done and not tx.delivered
                    and tx.result == result):
                tx.delivered = True
                self.journal.save(tx)

    # --- phases -------------------------------------------------------------------

    def _begin(self, action: NixosRebuild, step_start: int) -> RebuildTransaction:
        prev_gen = profile_generation(self.host)
        prev_system = link(self.host, CURRENT_SYSTEM)
        if prev_system is None and prev_gen is not None:
            prev_system = link(self.host, generation_link(prev_gen))
        baseline_failed = failed_units_if_degraded(self.host)
        now = self.clock()
        tx = RebuildTransaction(
            txid=new_txid(), action=action,
            health_timeout=min(action.health_timeout, self.max_health_timeout),
            prev_gen=prev_gen, prev_system=prev_system,
            baseline_failed=sorted(baseline_failed) if baseline_failed is not None else None,
            phase=Phase.switching, started_at=now, phase_started_at=now, next_step=step_start,
        )
        self._save(tx)  # before anything changes: a restart from here on resumes
        steps = Steps(self.host, tx, self.monotonic)
        if is_store_path(action.target):
            argv = ["nix-env", "-p", PROFILE, "--set", action.target]
            done = steps.run(action.type, argv, NIX_ENV_TIMEOUT)
            if done is None or done.exit_code != 0:
                self._switch_failed(tx, f"setting {PROFILE} to {action.target} failed")
                return tx
        argv = transient_argv(tx.switch_unit, switch_command(action),
                              f"compliance-agent switch to {action.target}")
        tx.phase_started_at = self.clock()
        self._save(tx)
        if not self._start_unit(steps, action.type, argv):
            self._switch_failed(tx, f"the switch to {action.target} could not be started")
        return tx

    def _drive(self, tx: RebuildTransaction) -> RebuildTransaction:
        while tx.phase is not Phase.done:
            if tx.phase is Phase.switching:
                self._await_switch(tx)
            elif tx.phase is Phase.checking:
                self._check(tx)
            elif tx.phase is Phase.rolling_back:
                self._roll_back(tx)
            else:
                self._check_rollback(tx)
            self._save(tx)
        self._discard(tx.switch_unit)
        self._discard(tx.rollback_unit)
        return tx

    def _await_switch(self, tx: RebuildTransaction) -> None:
        argv = transient_argv(tx.switch_unit, switch_command(tx.action),
                              f"compliance-agent switch to {tx.action.target}")
        end = self._wait_unit(tx.switch_unit, tx.phase_started_at + self.switch_timeout)
        self._record_unit(tx, tx.action.type, argv, tx.switch_unit, end)
        if end.exit_code == 0:
            self._enter(tx, Phase.checking)
        elif not end.found:
            # Gone without a journaled status (a reboot, or it never started):
            # what it did is unknown, so the new generation is not kept.
            self._switch_failed(tx, f"the switch to {tx.action.target} did not complete "
                                "(its unit is gone)")
        elif end.timed_out:
            self._switch_failed(tx, f"switch to {tx.action.target} did not complete")
        else:
            self._switch_failed(tx, f"switch to {tx.action.target} failed with "
                                f"{end.detail or 'an unknown status'}")

    def _check(self, tx: RebuildTransaction) -> None:
        self._discard(tx.switch_unit)  # a failed unit would make the host look degraded
        confirmed, why = self._healthy(tx)
        if confirmed:
            self._finish(tx, ok=True)
        else:
            self._to_rollback(tx, why)

    def _roll_back(self, tx: RebuildTransaction) -> None:
        assert tx.prev_gen is not None and tx.prev_system is not None  # checked on entry
        self._discard(tx.switch_unit)
        steps = Steps(self.host, tx, self.monotonic)
        argv = transient_argv(tx.rollback_unit,
                              [f"{tx.prev_system}/bin/switch-to-configuration", "switch"],
                              f"compliance-agent rollback to generation {tx.prev_gen}")
        if self._unit_state(tx.rollback_unit).get("LoadState") != "loaded":
            # Not started yet (or lost to a reboot): switch the profile back, re-activate.
            gen_argv = ["nix-env", "-p", PROFILE, "--switch-generation", str(tx.prev_gen)]
            done = steps.run("Rollback", gen_argv, NIX_ENV_TIMEOUT)
            if done is None or done.exit_code != 0:
                self._rollback_failed(tx, f"'{' '.join(gen_argv)}' failed")
                return
            tx.rollback_activations += 1
            tx.phase_started_at = self.clock()
            self._save(tx)  # counted before it starts: never under-counted
            if not self._start_unit(steps, "Rollback", argv):
                self._rollback_failed(tx, f"re-activating {tx.prev_system} could not start")
                return
        end = self._wait_unit(tx.rollback_unit, tx.phase_started_at + self.switch_timeout)
        self._record_unit(tx, "Rollback", argv, tx.rollback_unit, end)
        if end.exit_code == 0:
            self._enter(tx, Phase.checking_rollback)
        else:
            status = "timed out" if end.timed_out else (end.detail or "ended with unknown status")
            self._rollback_failed(tx, f"re-activating {tx.prev_system} {status}")

    def _check_rollback(self, tx: RebuildTransaction) -> None:
        self._discard(tx.rollback_unit)
        confirmed, why = self._healthy(tx)
        if confirmed:
            self._finish(tx, ok=False, outcome=Outcome.reverted,
                         rollback_generation=tx.prev_gen,
                         error=f"{tx.why}; rolled back to generation {tx.prev_gen}")
        else:
            self._rollback_failed(tx, why)

    # --- transitions --------------------------------------------------------------

    def _enter(self, tx: RebuildTransaction, phase: Phase) -> None:
        tx.phase = phase
        tx.phase_started_at = self.clock()
        tx.deadline = tx.phase_started_at + tx.health_timeout  # confirmed by then, or undone

    def _switch_failed(self, tx: RebuildTransaction, why: str) -> None:
        if not changed(self.host, tx.prev_gen, tx.prev_system):
            # nothing was activated (e.g. the build or `nix-env --set` failed): nothing to undo
            self._finish(tx, ok=False, outcome=Outcome.failed,
                         error=f"{why}; the system was not changed")
        else:
            self._to_rollback(tx, why)

    def _to_rollback(self, tx: RebuildTransaction, why: str) -> None:
        tx.why = why
        if tx.prev_gen is None or tx.prev_system is None:
            self._finish(
                tx, ok=False, outcome=Outcome.failed,
                error=f"{why}; cannot roll back: no previous generation of {PROFILE} was known "
                "(check the profile with 'nix-env -p /nix/var/nix/profiles/system "
                "--list-generations')",
            )
            return
        tx.phase = Phase.rolling_back
        tx.phase_started_at = self.clock()
        tx.deadline = None

    def _rollback_failed(self, tx: RebuildTransaction, why: str) -> None:
        self._finish(
            tx, ok=False, outcome=Outcome.failed, rollback_generation=tx.prev_gen,
            error=f"{tx.why}; rollback to generation {tx.prev_gen} did not recover: {why}. "
            "Inspect 'systemctl --failed' and 'journalctl -b' on the host",
        )

    def _finish(self, tx: RebuildTransaction, *, ok: bool, outcome: Outcome | None = None,
                rollback_generation: int | None = None, error: str | None = None) -> None:
        tx.result = ActionResult(action=tx.action, records=list(tx.records), ok=ok,
                                 outcome=outcome, rollback_generation=rollback_generation,
                                 error=error)
        tx.phase = Phase.done
        tx.deadline = None
        log.info("rebuild transaction %s to %s finished: %s%s", tx.txid, tx.action.target,
                 "kept" if ok else (outcome or Outcome.failed).value,
                 f" ({error})" if error else "")

    def _hand_over(self, tx: RebuildTransaction) -> ActionResult:
        assert tx.result is not None  # only done transactions are handed over
        if not self.confirm_delivery and not tx.delivered:
            tx.delivered = True
            self._save(tx)
        return tx.result

    def _save(self, tx: RebuildTransaction) -> None:
        with self._journal_lock:
            self.journal.save(tx)

    # --- host helpers ---------------------------------------------------------------

    def _healthy(self, tx: RebuildTransaction) -> tuple[bool, str]:
        remaining = (tx.deadline or self.clock()) - self.clock()
        # A wall clock set back (a time sync) must not stretch the wait past the timeout.
        wait = min(max(remaining, MIN_HEALTH_WAIT), max(tx.health_timeout, MIN_HEALTH_WAIT))
        baseline = set(tx.baseline_failed) if tx.baseline_failed is not None else None
        return healthy(Steps(self.host, tx, self.monotonic), wait, baseline)

    def _start_unit(self, steps: Steps, label: str, argv: list[str]) -> bool:
        """Start a transient unit; a failure to start is recorded (success is recorded
        when the unit ends, with its command's exit status)."""
        started = self.monotonic()
        try:
            done = self.host.run(argv, timeout=QUERY_TIMEOUT)
        except HostError as e:
            steps.add(label, argv, None, self.monotonic() - started, "failed", str(e))
            return False
        if done.exit_code != 0:
            steps.add(label, argv, done.exit_code, done.duration, "failed",
                      tail(done.stderr or done.stdout))
            return False
        return True

    def _record_unit(self, tx: RebuildTransaction, label: str, argv: list[str], unit: str,
                     end: _UnitEnd) -> None:
        result = "ok" if end.exit_code == 0 else ("timeout" if end.timed_out else "failed")
        detail = "" if end.exit_code == 0 else f"{end.detail}: {self._unit_log(unit)}"
        Steps(self.host, tx, self.monotonic).add(
            label, argv, end.exit_code, self.clock() - tx.phase_started_at, result, detail)

    def _unit_log(self, unit: str) -> str:
        """The end of what the unit's command printed (it went to the journal, not to us)."""
        argv = ["journalctl", "-o", "cat", "-n", "20", "--no-pager", "-u", unit]
        try:
            done = self.host.run(argv, timeout=QUERY_TIMEOUT)
        except HostError:
            done = None
        text = tail(done.stdout) if done is not None and done.exit_code == 0 else ""
        return text or f"see 'journalctl -u {unit}'"

    def _unit_state(self, unit: str) -> dict[str, str]:
        argv = ["systemctl", "show", "-p", UNIT_PROPERTIES, "--", unit]
        try:
            done = self.host.run(argv, timeout=QUERY_TIMEOUT)
        except HostError:
            return {}
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def _wait_unit(self, unit: str, deadline: float) -> _UnitEnd:
        """Poll the unit until its command has ended, or stop it at `deadline`."""
        while True:
            state = self._unit_state(unit)
            load, active = state.get("LoadState"), state.get("ActiveState")
            if load == "not-found":
                return _UnitEnd(found=False, detail="its unit is gone; exit status unknown")
            ended = (active == "active" and state.get("SubState") == "exited") or active in (
                "failed", "inactive")
            if load == "loaded" and ended:
                status = state.get("ExecMainStatus", "")
                if state.get("ExecMainCode") == CLD_EXITED and status.isdigit():
                    code = int(status)
                    return _UnitEnd(found=True, exit_code=code, detail=f"exit code {code}")
                return _UnitEnd(found=True, detail=f"{unit} ended: {state.get('Result')} "
                                f"(signal or status {status or 'unknown'})")
            if self.clock() >= deadline:
                self._discard(unit)
                return _UnitEnd(found=True, timed_out=True,
                                detail=f"{unit} did not finish within {self.switch_timeout:g}s; "
                                "stopped")
            self.sleep(self.poll_interval)

    def _discard(self, unit: str) -> None:
        """Stop and unload a transient unit (idempotent: a unit already gone is fine)."""
        for verb in ("stop", "reset-failed"):
            try:
                self.host.run(["systemctl", verb, "--", unit], timeout=QUERY_TIMEOUT)
            except HostError as e:
                log.warning("systemctl %s %s: %s", verb, unit, e)


def execute_rebuild(
    host: Host,
    action: NixosRebuild,
    *,
    health_timeout: float,
    step_start: int = 1,
    monotonic: Callable[[], float] = time.monotonic,
) -> ActionResult:
    """One transaction, journaled in memory (in-process use: nothing resumes it)."""
    transactions = RebuildTransactions(host, TransactionJournal(None),
                                       max_health_timeout=health_timeout, monotonic=monotonic)
    return transactions.execute(action, step_start)


def _refused(action: NixosRebuild, step_start: int, why: str) -> ActionResult:
    record = ActionRecord(step=step_start, action=action.type, command=[], exit_code=None,
                          duration_sec=0.0, result="refused", detail=why)
    return ActionResult(action=action, records=[record], ok=False, outcome=Outcome.failed,
                        error=why)
