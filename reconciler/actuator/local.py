"""The actuator: executes typed actions, and nothing else changes the host.

`LocalActuator` runs each action's fixed argv through a Host (no shell).
Actions with their own transaction (NixosRebuild: switch, health check,
rollback) are dispatched to their module (reconciler.actuator.rebuild).

`ApplyNftRuleset` loads exactly the bytes it hashed: the file is read once,
hashed, checked for `include` (an included file would be loaded unhashed),
and those same bytes are piped to `nft -f -`. A ruleset file swapped after
the check is never what nft sees, and nothing is read from disk twice.

The privileged deployment puts the same class behind a unix socket
(reconciler.actuator.server); the agent then talks to it through
reconciler.actuator.client with the same `execute` API.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable

from reconciler.actuator.rebuild import RebuildTransactions
from reconciler.actuator.result import ActionResult, skipped_result
from reconciler.actuator.transaction import TransactionJournal
from specs.actions import NFT, Action, ApplyNftRuleset, NixosRebuild
from specs.host import CommandNotFound, CommandTimeout, Host
from specs.status import ActionRecord

DEFAULT_COMMAND_TIMEOUT = 120.0
# nft's include statement, anywhere (a comment mentioning it is refused too: cheap, safe).
NFT_INCLUDE_RE = re.compile(rb"(?<![A-Za-z0-9_])include(?![A-Za-z0-9_])")


def ruleset_problem(body: bytes, path: str, sha256: str) -> str | None:
    """Why these ruleset bytes must not be loaded, or None."""
    digest = hashlib.sha256(body).hexdigest()
    if digest != sha256:
        return f"{path} has sha256 {digest}, baseline expects {sha256}"
    if NFT_INCLUDE_RE.search(body):
        return (f"{path} uses 'include': included files would be loaded without being "
                "hashed; inline them into the baseline ruleset")
    return None


class LocalActuator:
    def __init__(
        self,
        host: Host,
        *,
        rebuild_health_timeout: float = 60.0,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        monotonic: Callable[[], float] = time.monotonic,
        rebuilds: RebuildTransactions | None = None,
    ) -> None:
        self.host = host
        self.command_timeout = command_timeout
        self.monotonic = monotonic
        # The socket server passes its journaled, resumable one; in-process, memory will do.
        self.rebuilds = rebuilds or RebuildTransactions(
            host, TransactionJournal(None), max_health_timeout=rebuild_health_timeout,
            monotonic=monotonic,
        )

    def collect_finished(self, action_type: str) -> ActionResult | None:
        # In-process, `execute` hands every result over itself, and a process that
        # dies takes its in-memory transaction with it: nothing is ever left over.
        return None

    def execute(self, action: Action, step_start: int = 1) -> ActionResult:
        if isinstance(action, NixosRebuild):
            return self.rebuilds.execute(action, step_start)
        if isinstance(action, ApplyNftRuleset):
            return self._apply_ruleset(action, step_start)
        return self._run_commands(action, action.commands(), step_start)

    def _apply_ruleset(self, action: ApplyNftRuleset, step_start: int) -> ActionResult:
        try:
            body = self.host.read_text(action.path).encode()
        except OSError as e:
            return skipped_result(action, "refused", f"cannot read {action.path}: {e.strerror}",
                                  step_start)
        problem = ruleset_problem(body, action.path, action.sha256)
        if problem is not None:
            refused = skipped_result(action, "refused", problem, step_start)
            return refused.model_copy(update={"error": problem})
        return self._run_commands(action, [[NFT, "-f", "-"]], step_start, stdin=body)

    def _run_commands(
        self, action: Action, commands: list[list[str]], step_start: int,
        stdin: bytes | None = None,
    ) -> ActionResult:
        records: list[ActionRecord] = []
        for i, argv in enumerate(commands):
            step = step_start + i
            started = self.monotonic()
            try:
                done = (
                    self.host.run(argv, timeout=self.command_timeout) if stdin is None
                    else self.host.run(argv, timeout=self.command_timeout, stdin=stdin)
                )
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
