"""The rebuild transaction's state, persisted root-side so it outlives the actuator.

A switch may restart the actuator itself (its unit, or the agent's, changed
in the new generation). What the transaction must still do afterwards (wait
for the switch, health-check until the deadline, roll back to the generation
it recorded) is written here before each step, so the next actuator process
(restarted by the switch, by systemd after a crash, or by socket activation)
picks it up where it stopped and finishes it once.

The journal is one JSON file in the actuator's state directory (root, 0700),
replaced atomically: written to a temporary file, fsync'ed, renamed over the
old one, then the directory fsync'ed, so a crash leaves either the old or the
new state, never a torn one. Only the newest transaction is kept; once it is
`done` it carries its `ActionResult` until the agent has been told.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from reconciler.actuator.result import ActionResult
from specs.actions import NixosRebuild
from specs.errors import ComplianceAgentError
from specs.status import ActionRecord

JOURNAL_FILE = "rebuild-transaction.json"
MAX_JOURNAL_BYTES = 4 * 1024 * 1024  # records are bounded; a bigger file is not ours


class Phase(StrEnum):
    """Where a transaction stands; each phase is resumable on its own."""

    switching = "switching"  # the switch unit was (or is about to be) started
    checking = "checking"  # switch done; health check until `deadline`
    rolling_back = "rolling_back"  # back to `prev_gen` (its unit started, or about to be)
    checking_rollback = "checking_rollback"  # rollback done; health check until `deadline`
    done = "done"  # `result` is final


class RebuildTransaction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    txid: str
    action: NixosRebuild
    health_timeout: float
    prev_gen: int | None
    prev_system: str | None
    baseline_failed: list[str] | None  # failed units before the switch, if already degraded
    phase: Phase
    started_at: float  # wall clock (epoch seconds): survives restarts, unlike monotonic
    phase_started_at: float
    deadline: float | None = None  # end of the current phase's health check
    why: str = ""  # why the switch is being rolled back
    next_step: int
    records: list[ActionRecord] = []
    rollback_activations: int = 0  # rollback units this transaction started (at most one)
    result: ActionResult | None = None
    delivered: bool = False  # the result reached the agent

    @property
    def switch_unit(self) -> str:
        return f"compliance-agent-switch-{self.txid}.service"

    @property
    def rollback_unit(self) -> str:
        return f"compliance-agent-rollback-{self.txid}.service"


def new_txid() -> str:
    return secrets.token_hex(6)


class TransactionJournalError(ComplianceAgentError):
    """The journal exists but cannot be read: a transaction may be open, so no new one starts."""


class TransactionJournal:
    """The newest transaction, in `path` (None: kept in memory only, for in-process use)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._memory: RebuildTransaction | None = None

    def load(self) -> RebuildTransaction | None:
        if self.path is None:
            return self._memory.model_copy(deep=True) if self._memory else None
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_JOURNAL_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TransactionJournalError(f"cannot read {self.path}: {e.strerror}") from e
        if len(raw) > MAX_JOURNAL_BYTES:
            raise TransactionJournalError(f"{self.path} is larger than {MAX_JOURNAL_BYTES} bytes")
        try:
            return RebuildTransaction.model_validate_json(raw)
        except ValidationError as e:
            raise TransactionJournalError(
                f"{self.path} is not a rebuild transaction ({e.error_count()} errors); "
                "check the system profile by hand, then remove the file"
            ) from e

    def save(self, tx: RebuildTransaction) -> None:
        if self.path is None:
            self._memory = tx.model_copy(deep=True)
            return
        data = tx.model_dump_json().encode()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
