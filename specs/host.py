"""The Host contract controllers observe through.

Controllers never spawn processes or touch files themselves; they call a Host.
The runtime provides a local implementation (reconciler.actuator.host.LocalHost) and
tests provide one that runs inside a systemd container.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from specs.errors import ComplianceAgentError


class Completed(BaseModel):
    model_config = ConfigDict(frozen=True)

    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    duration: float  # seconds


class FileStat(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    is_dir: bool
    is_symlink: bool
    link_target: str | None = None


class HostError(ComplianceAgentError):
    """Base of Host failures (not a non-zero exit: that is a Completed)."""


class CommandTimeout(HostError):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        super().__init__(f"{argv[0]} did not finish within {timeout:g}s")


class CommandNotFound(HostError):
    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        super().__init__(f"{argv[0]}: command not found")


class Host(Protocol):
    def run(
        self, argv: Sequence[str], timeout: float = 30.0, *, stdin: bytes | None = None
    ) -> Completed:
        """Run argv (no shell), with `stdin` as its input (else none). Non-zero exit is a
        Completed; a timeout raises CommandTimeout."""
        ...

    def read_text(self, path: str) -> str:
        """Read a file; raises FileNotFoundError / PermissionError like open()."""
        ...

    def stat(self, path: str) -> FileStat:
        """lstat() a path; raises FileNotFoundError like os.lstat()."""
        ...
