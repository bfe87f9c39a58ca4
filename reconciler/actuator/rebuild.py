"""The NixOS rebuild transaction (guardrail 5): switch, health-check, roll back.

    1. remember the running system and the system profile's generation N
    2. switch: store path -> `nix-env -p PROFILE --set TARGET` then
       `TARGET/bin/switch-to-configuration switch`; flake -> `nixos-rebuild switch --flake REF`
    3. health: `systemctl is-system-running --wait` within `health_timeout` must
       print `running` (degraded, maintenance, stopping, or the timeout = unhealthy)
    4. failed switch (any non-zero exit: switch-to-configuration exits 2 when the
       activation script failed and 4 when units failed, 1 when it refused to
       start; the profile already points at the new generation in every case) or
       unhealthy -> `nix-env -p PROFILE --switch-generation N` and the previously
       running system's `bin/switch-to-configuration switch`, then health again
       -> outcome `reverted` (rollback_generation N); still unhealthy -> `failed`.

A host that was already degraded before the switch is judged by its failed
units instead: the switch is unhealthy only if it added failed units, so an
unrelated broken unit does not make every rebuild roll back.

Every command is one ActionRecord (step, action, command, exit_code,
duration_sec, result) so evidence shows exactly what ran.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from reconciler.actuator.result import ActionResult
from specs.actions import NixosRebuild
from specs.host import CommandNotFound, CommandTimeout, Completed, Host, HostError
from specs.kinds.patching import is_store_path
from specs.status import ActionRecord, Outcome

PROFILE = "/nix/var/nix/profiles/system"
CURRENT_SYSTEM = "/run/current-system"
NIX_ENV_TIMEOUT = 120.0
SWITCH_TIMEOUT = 1800.0  # a flake switch may build; a hung activation must still end
QUERY_TIMEOUT = 15.0
GENERATION_LINK_RE = re.compile(r"^(?:.*/)?system-(\d+)-link$")


class _Steps:
    """Runs commands through the Host and records each as an ActionRecord."""

    def __init__(self, host: Host, start: int, monotonic: Callable[[], float]) -> None:
        self.host = host
        self.next_step = start
        self.monotonic = monotonic
        self.records: list[ActionRecord] = []

    def run(self, label: str, argv: list[str], timeout: float) -> Completed | None:
        """Run argv; None when it timed out or could not start (already recorded)."""
        started = self.monotonic()
        try:
            done = self.host.run(argv, timeout=timeout)
        except CommandTimeout as e:
            self.add(label, argv, None, self.monotonic() - started, "timeout", str(e))
            return None
        except (CommandNotFound, HostError) as e:
            self.add(label, argv, None, self.monotonic() - started, "failed", str(e))
            return None
        ok = done.exit_code == 0
        detail = "" if ok else _tail(done.stderr or done.stdout)
        self.add(label, argv, done.exit_code, done.duration, "ok" if ok else "failed", detail)
        return done

    def add(self, label: str, argv: list[str], code: int | None, duration: float,
             result: str, detail: str) -> None:
        self.records.append(ActionRecord(
            step=self.next_step, action=label, command=list(argv), exit_code=code,
            duration_sec=round(max(duration, 0.0), 3), result=result, detail=detail,
        ))
        self.next_step += 1


def execute_rebuild(
    host: Host,
    action: NixosRebuild,
    *,
    health_timeout: float,
    step_start: int = 1,
    monotonic: Callable[[], float] = time.monotonic,
) -> ActionResult:
    steps = _Steps(host, step_start, monotonic)
    prev_gen = profile_generation(host)
    prev_system = _link(host, CURRENT_SYSTEM)
    if prev_system is None and prev_gen is not None:
        prev_system = _link(host, generation_link(prev_gen))
    baseline_failed = _failed_units_if_degraded(host)

    switched, why = _switch(steps, action)
    if switched:
        healthy, why = _healthy(steps, health_timeout, baseline_failed)
        if healthy:
            return ActionResult(action=action, records=steps.records, ok=True)
    elif not _changed(host, prev_gen, prev_system):
        # nothing was activated (e.g. the build or `nix-env --set` failed): nothing to undo
        return ActionResult(action=action, records=steps.records, ok=False,
                            outcome=Outcome.failed, error=f"{why}; the system was not changed")

    if prev_gen is None or prev_system is None:
        return ActionResult(
            action=action, records=steps.records, ok=False, outcome=Outcome.failed,
            error=f"{why}; cannot roll back: no previous generation of {PROFILE} was known "
            "(check the profile with 'nix-env -p /nix/var/nix/profiles/system --list-generations')",
        )
    rolled, rollback_why = _rollback(steps, prev_gen, prev_system)
    if rolled:
        healthy, rollback_why = _healthy(steps, health_timeout, baseline_failed)
        if healthy:
            return ActionResult(
                action=action, records=steps.records, ok=False, outcome=Outcome.reverted,
                rollback_generation=prev_gen,
                error=f"{why}; rolled back to generation {prev_gen}",
            )
    return ActionResult(
        action=action, records=steps.records, ok=False, outcome=Outcome.failed,
        rollback_generation=prev_gen,
        error=f"{why}; rollback to generation {prev_gen} did not recover: {rollback_why}. "
        "Inspect 'systemctl --failed' and 'journalctl -b' on the host",
    )


def _switch(steps: _Steps, action: NixosRebuild) -> tuple[bool, str]:
    label = action.type
    if is_store_path(action.target):
        argv = ["nix-env", "-p", PROFILE, "--set", action.target]
        done = steps.run(label, argv, NIX_ENV_TIMEOUT)
        if done is None or done.exit_code != 0:
            return False, f"setting {PROFILE} to {action.target} failed"
        argv = [f"{action.target}/bin/switch-to-configuration", "switch"]
    else:
        argv = ["nixos-rebuild", "switch", "--flake", action.target]
    done = steps.run(label, argv, SWITCH_TIMEOUT)
    if done is None:
        return False, f"switch to {action.target} did not complete"
    if done.exit_code != 0:
        return False, f"switch to {action.target} failed with exit code {done.exit_code}"
    return True, ""


def _rollback(steps: _Steps, gen: int, system: str) -> tuple[bool, str]:
    argv = ["nix-env", "-p", PROFILE, "--switch-generation", str(gen)]
    done = steps.run("Rollback", argv, NIX_ENV_TIMEOUT)
    if done is None or done.exit_code != 0:
        return False, f"'{' '.join(argv)}' failed"
    argv = [f"{system}/bin/switch-to-configuration", "switch"]
    done = steps.run("Rollback", argv, SWITCH_TIMEOUT)
    if done is None or done.exit_code != 0:
        code = "timed out" if done is None else f"exited {done.exit_code}"
        return False, f"re-activating {system} {code}"
    return True, ""


def _healthy(
    steps: _Steps, timeout: float, baseline_failed: set[str] | None
) -> tuple[bool, str]:
    argv = ["systemctl", "is-system-running", "--wait"]
    started = steps.monotonic()
    try:
        done = steps.host.run(argv, timeout=timeout)
    except CommandTimeout:
        steps.add("HealthCheck", argv, None, steps.monotonic() - started, "timeout",
                   f"system did not settle within {timeout:g}s")
        return False, f"system did not reach 'running' within {timeout:g}s"
    except HostError as e:
        steps.add("HealthCheck", argv, None, 0.0, "failed", str(e))
        return False, f"health check could not run: {e}"
    state = done.stdout.strip().splitlines()[-1].strip() if done.stdout.strip() else "unknown"
    if state == "running":
        steps.add("HealthCheck", argv, done.exit_code, done.duration, "ok", state)
        return True, ""
    if state == "degraded" and baseline_failed is not None:
        now_failed = failed_units(steps.host) or set()
        new = sorted(now_failed - baseline_failed)
        detail = f"degraded before and after; new failed units: {', '.join(new) or 'none'}"
        steps.add("HealthCheck", argv, done.exit_code, done.duration,
                   "failed" if new else "ok", detail)
        if new:
            return False, f"units failed after the switch: {', '.join(new)}"
        return True, ""
    failed = sorted(failed_units(steps.host) or set()) if state == "degraded" else []
    detail = state + (f"; failed units: {', '.join(failed)}" if failed else "")
    steps.add("HealthCheck", argv, done.exit_code, done.duration, "failed", detail)
    return False, f"system is '{state}' after the switch" + (
        f" (failed: {', '.join(failed)})" if failed else ""
    )


def _failed_units_if_degraded(host: Host) -> set[str] | None:
    try:
        done = host.run(["systemctl", "is-system-running"], timeout=QUERY_TIMEOUT)
    except HostError:
        return None
    if done.stdout.strip() != "degraded":
        return None
    return failed_units(host)


def failed_units(host: Host) -> set[str] | None:
    argv = ["systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager"]
    try:
        done = host.run(argv, timeout=QUERY_TIMEOUT)
    except HostError:
        return None
    units = set()
    for line in done.stdout.splitlines():
        parts = line.split()
        if parts:
            units.add(parts[0].lstrip("●*").strip() or parts[-1])
    return {u for u in units if u}


def profile_generation(host: Host) -> int | None:
    """N of the system profile's current `system-N-link`, or None without a profile."""
    target = _link(host, PROFILE)
    if target is None:
        return None
    m = GENERATION_LINK_RE.fullmatch(target)
    return int(m.group(1)) if m else None


def generation_link(gen: int) -> str:
    return f"{PROFILE}-{gen}-link"


def _changed(host: Host, prev_gen: int | None, prev_system: str | None) -> bool:
    return profile_generation(host) != prev_gen or _link(host, CURRENT_SYSTEM) != prev_system


def _link(host: Host, path: str) -> str | None:
    try:
        return host.stat(path).link_target
    except OSError:
        return None


def _tail(text: str, limit: int = 500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]
