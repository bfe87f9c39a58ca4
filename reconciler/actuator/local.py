"""The actuator: executes typed actions, and nothing else changes the host.

`LocalActuator` runs each action's fixed argv through a Host (no shell).
Actions with their own transaction (NixosRebuild: switch, health check,
rollback) are dispatched to their module. The privileged deployment puts the
same class behind a unix socket (reconciler.actuator.server); the agent then
talks to it through reconciler.actuator.client with the same `execute` API.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from reconciler.actuator.rebuild import execute_rebuild
from reconciler.actuator.result import ActionResult, skipped_result
from specs.actions import Action, ApplyNftRuleset, NixosRebuild
from specs.host import CommandNotFound, CommandTimeout, Host
from specs.status import ActionRecord

DEFAULT_COMMAND_TIMEOUT = 120.0


class LocalActuator:
    def __init__(
        self,
        host: Host,
        *,
        rebuild_health_timeout: float = 60.0,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.rebuild_health_timeout = rebuild_health_timeout
        self.command_timeout = command_timeout
        self.monotonic = monotonic

    def execute(self, action: Action, step_start: int = 1) -> ActionResult:
        if isinstance(action, NixosRebuild):
            return execute_rebuild(
                self.host,
                action,
                health_timeout=min(action.health_timeout, self.rebuild_health_timeout),
                step_start=step_start,
                monotonic=self.monotonic,
            )
        if isinstance(action, ApplyNftRuleset):
            refusal = self._check_ruleset_file(action)
            if refusal:
                return skipped_result(action, "refused", refusal, step_start)
        return self._run_commands(action, step_start)

    def _check_ruleset_file(self, action: ApplyNftRuleset) -> str | None:
        # Re-hash right before applying: a file swapped after planning is never loaded.
        try:
            body = self.host.read_text(action.path).encode()
        except OSError as e:
            return f"cannot read {action.path}: {e.strerror}"
        digest = hashlib.sha256(body).hexdigest()
        if digest != action.sha256:
            return f"{action.path} has sha256 {digest}, baseline expects {action.sha256}"
        return None

    def _run_commands(self, action: Action, step_start: int) -> ActionResult:
        records: list[ActionRecord] = []
        for i, argv in enumerate(action.commands()):
            step = step_start + i
            started = self.monotonic()
            try:
                done = self.host.run(argv, timeout=self.command_timeout)
            except CommandTimeout as e:
                records.append(
                    ActionRecord(
                        step=step, action=action.type, command=argv, exit_code=None,
                        duration_sec=round(self.monotonic() - started, 3),
                        result="timeout", detail=str(e),
                    )
                )
                return ActionResult(action=action, records=records, ok=False, error=str(e))
            except CommandNotFound as e:
                records.append(
                    ActionRecord(
                        step=step, action=action.type, command=argv, exit_code=None,
                        duration_sec=0.0, result="failed", detail=str(e),
                    )
                )
                return ActionResult(action=action, records=records, ok=False, error=str(e))
            ok = done.exit_code == 0
            records.append(
                ActionRecord(
                    step=step, action=action.type, command=argv, exit_code=done.exit_code,
                    duration_sec=round(done.duration, 3),
                    result="ok" if ok else "failed",
                    detail="" if ok else _tail(done.stderr or done.stdout),
                )
            )
            if not ok:
                return ActionResult(
                    action=action, records=records, ok=False,
                    error=f"{' '.join(argv)} exited {done.exit_code}: {_tail(done.stderr)}",
                )
        return ActionResult(action=action, records=records, ok=True)


def _tail(text: str, limit: int = 500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]
