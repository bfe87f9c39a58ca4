"""The rebuild transaction's host reads and its step recorder.

What the transaction reads from the host (the system profile's generation,
/run/current-system, failed units), how it judges health, and `Steps`, which
runs a command through the Host and records it as an ActionRecord in the
journaled transaction, so evidence shows exactly what ran
(reconciler.actuator.rebuild).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from reconciler.actuator.transaction import RebuildTransaction
from specs.host import CommandNotFound, CommandTimeout, Completed, Host, HostError
from specs.status import ActionRecord

PROFILE = "/nix/var/nix/profiles/system"
CURRENT_SYSTEM = "/run/current-system"
QUERY_TIMEOUT = 15.0
GENERATION_LINK_RE = re.compile(r"^(?:.*/)?system-(\d+)-link$")


class Steps:
    """Runs commands through the Host and records each as an ActionRecord."""

    def __init__(self, host: Host, tx: RebuildTransaction,
                 monotonic: Callable[[], float]) -> None:
        self.host = host
        self.tx = tx  # records go into the journaled transaction
        self.monotonic = monotonic

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
        detail = "" if ok else tail(done.stderr or done.stdout)
        self.add(label, argv, done.exit_code, done.duration, "ok" if ok else "failed", detail)
        return done

    def add(self, label: str, argv: list[str], code: int | None, duration: float,
             result: str, detail: str) -> None:
        self.tx.records.append(ActionRecord(
            step=self.tx.next_step, action=label, command=list(argv), exit_code=code,
            duration_sec=round(max(duration, 0.0), 3), result=result, detail=detail,
        ))
        self.tx.next_step += 1


def healthy(
    steps: Steps, timeout: float, baseline_failed: set[str] | None
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


def failed_units_if_degraded(host: Host) -> set[str] | None:
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
    target = link(host, PROFILE)
    if target is None:
        return None
    m = GENERATION_LINK_RE.fullmatch(target)
    return int(m.group(1)) if m else None


def generation_link(gen: int) -> str:
    return f"{PROFILE}-{gen}-link"


def changed(host: Host, prev_gen: int | None, prev_system: str | None) -> bool:
    return profile_generation(host) != prev_gen or link(host, CURRENT_SYSTEM) != prev_system


def link(host: Host, path: str) -> str | None:
    try:
        return host.stat(path).link_target
    except OSError:
        return None


def tail(text: str, limit: int = 500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]
