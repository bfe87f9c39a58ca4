"""The root actuator as a real process for tests and benchmarks: root, inside a
network namespace (so the `nft` it runs changes only that namespace), on a unix
socket in a work directory, 0660 root:65534 like the module's socket unit."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness.netns import NetNamespace
from tests.harness.unprivileged import NOBODY
from tests.harness.wait import wait_for

REPO = Path(__file__).resolve().parents[2]


class ActuatorProcess:
    """`python -m reconciler.actuator.server` as root in `ns`, on `workdir/actuator.sock`
    (0660 root:65534, like the module's socket unit), logging to a file."""

    def __init__(self, ns: NetNamespace, workdir: Path, config: Path, *,
                 allow_user: str = "nobody", code: Path = REPO) -> None:
        self.ns = ns
        self.workdir = workdir
        self.config = config
        self.allow_user = allow_user
        self.code = code  # the checkout whose actuator runs (an older one, say)
        self.socket = workdir / "actuator.sock"
        self.log_path = workdir / "actuator.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        argv = [sys.executable, "-m", "reconciler.actuator.server", "--config",
                str(self.config), "--allow-user", self.allow_user, "--socket", str(self.socket),
                "--state-directory", str(self.workdir / "actuator-state")]
        with open(self.log_path, "ab") as log:
            proc = self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns.name, *argv], cwd=self.code,
                stdout=subprocess.DEVNULL, stderr=log,
                env={**os.environ, "PYTHONPATH": str(self.code)})
        assert wait_for(lambda: self.socket.exists() or proc.poll() is not None), self.log()
        assert proc.poll() is None, self.log()
        os.chown(self.socket, 0, NOBODY)
        os.chmod(self.socket, 0o660)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def write_config(workdir: Path, baseline: dict[str, Any], **extra: Any) -> Path:
    (workdir / "baseline.json").write_text(json.dumps(
        {"version": 1, "policy_version": "1", **baseline}))
    config = workdir / "config.json"
    config.write_text(json.dumps({
        "siteId": "s", "hostId": "h", "deploymentMode": "direct",
        "baselinePath": str(workdir / "baseline.json"),
        "clientCertFile": "/run/secrets/c", "clientKeyFile": "/run/secrets/k",
        "signingKeyFile": "/run/secrets/s", "caCertFile": "/etc/ca.pem",
        "mcpPublicKeys": ["ab" * 32], "stateDirectory": str(workdir / "agent-state"),
        "statusSocket": None, "actuatorSocket": str(workdir / "actuator.sock"),
        **extra,
    }))
    return config


def nft_children(pid: int) -> list[int]:
    """Processes (zombies included: a child not reaped counts) whose parent is `pid`
    and whose name is nft: the actuator's `nft monitor` children."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                name, rest = f.read().rsplit(b") ", 1)
        except OSError:
            continue
        if int(rest.split()[1]) == pid and name.split(b"(", 1)[1] == b"nft":
            found.append(int(entry))
    return found


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled(count: Callable[[], int], samples: int = 5, interval: float = 0.1,
            timeout: float = 20.0) -> int:
    """`count()` once it has stayed the same for `samples` looks in a row (a just
    started actuator may still hold a start-up thread or file for a moment), so a
    baseline taken from it is the idle one."""
    history: list[int] = []

    def stable() -> bool:
        history.append(count())
        return len(history) >= samples and len(set(history[-samples:])) == 1

    wait_for(stable, timeout, interval=interval)
    return history[-1]
