"""One daemon per state directory: an exclusive flock(2) on `agent.lock` in it.

Two daemons on one state directory would both reconcile (both may act on the
host) and interleave one evidence chain. The lock is taken at the start of
`compliance-agent run` and held for the life of the process; the kernel drops
it when the process ends, however it ends (SIGKILL included), so a stale lock
file never blocks a restart. The holder writes its pid into the file so a
second start can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from specs.errors import ComplianceAgentError

LOCK_FILE = "agent.lock"


class InstanceLockError(ComplianceAgentError):
    """Another process holds the state directory (or the lock cannot be taken)."""

    def __init__(self, message: str, holder_pid: int | None = None) -> None:
        super().__init__(message)
        self.holder_pid = holder_pid


class InstanceLock:
    """The held lock; `release()` (or process exit) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the description drops the flock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(state_directory: Path) -> InstanceLock:
    """Take the state directory's lock now, or raise naming the holder's pid."""
    state_directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise InstanceLockError(f"{path}: cannot open the instance lock: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        who = f"pid {pid}" if pid is not None else "another process (pid not yet written)"
        raise InstanceLockError(
            f"{state_directory} is in use by {who}: another compliance-agent is running"
            f" on this state directory (lock {path}); stop it first",
            holder_pid=pid,
        ) from None
    except OSError as e:
        os.close(fd)
        raise InstanceLockError(f"{path}: cannot take the instance lock: {e.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return InstanceLock(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
