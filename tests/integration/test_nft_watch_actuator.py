"""The nftables watch behind the root actuator, with real parts: the actuator
process runs as root inside a throwaway network namespace (so its `nft` is the
namespace's), on a unix socket in a temporary directory; the agent side is
the daemon wired by `reconciler.service` with `actuatorSocket` set, as under
the NixOS module, where the agent cannot run `nft monitor` itself."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.ops.sdnotify import Notifier
from reconciler.runtime.daemon import Daemon, DaemonPolicy
from reconciler.service import new_agent, watch_factories
from specs.config import parse_config
from tests.harness.netns import NetNamespace
from tests.harness.require import require_root, require_tool
from tests.harness.unprivileged import NOBODY

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "nft"
DEADLINE = 20.0


def wait_for(cond: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class ActuatorProcess:
    """`python -m reconciler.actuator.server` as root in `ns`, on `workdir/actuator.sock`
    (0660 root:65534, like the module's socket unit), logging to a file."""

    def __init__(self, ns: NetNamespace, workdir: Path, config: Path,
                 module: str = "reconciler.actuator.server") -> None:
        self.ns = ns
        self.workdir = workdir
        self.config = config
        self.module = module
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
        argv = [sys.executable, "-m", self.module, "--config", str(self.config),
                "--allow-user", "nobody", "--socket", str(self.socket),
                "--state-directory", str(self.workdir / "actuator-state")]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns.name, *argv], cwd=REPO,
                stdout=subprocess.DEVNULL, stderr=log,
                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert wait_for(lambda: self.socket.exists() or self.proc.poll() is not None), \
            self.log()
        assert self.proc.poll() is None, self.log()
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


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Outside pytest's 0700 tmp tree, so uid 65534 can reach the socket.
    d = Path(tempfile.mkdtemp(prefix="nft-watch-act-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ns() -> Iterator[NetNamespace]:
    require_root()
    require_tool("nft")
    require_tool("ip")
    with NetNamespace("nft-act") as n:
        yield n


def test_a_flushed_ruleset_is_repaired_through_the_actuator_long_before_the_next_pass(
    ns: NetNamespace, workdir: Path
) -> None:
    ruleset = workdir / "nftables.rules"
    shutil.copy(FIX / "baseline.nft", ruleset)
    config_path = write_config(workdir, {"firewall": {
        "ruleset_path": str(ruleset),
        "ruleset_sha256": hashlib.sha256(ruleset.read_bytes()).hexdigest()}},
        allowDisruptiveOutsideWindow=True)
    actuator = ActuatorProcess(ns, workdir, config_path)
    actuator.start()
    cfg = parse_config(json.loads(config_path.read_text()))
    applied: list[float] = []
    # The agent as the service builds it with actuatorSocket: nft reads and the
    # apply go through the actuator, and so must the nftables watch.
    agent = new_agent(cfg, listeners=(lambda r: applied.extend(time.monotonic()
                                                               for _ in r.executed),))
    daemon = Daemon(agent, DaemonPolicy(poll_interval=3600, workers=2),
                    notifier=Notifier(environ={}), watches=watch_factories(cfg))
    runner = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    runner.start()

    def nft_watch_up() -> bool:
        return any(h.name == "nftables" and h.up for h in daemon.watch_hub.health())

    try:
        assert wait_for(lambda: daemon.passes_completed == 1)
        assert len(applied) == 1, "the first pass applied the baseline ruleset"
        assert wait_for(nft_watch_up), daemon.watch_hub.status()
        assert wait_for(lambda: not daemon.hints.pending() and not daemon.queue.processing())
        time.sleep(2.5)  # past the echo window of the first apply
        assert len(applied) == 1, "the apply's own notices did not make another apply"

        ns.check(["nft", "flush", "ruleset"])  # drift: the firewall is gone
        # seen at once; applied when the first apply's action backoff (10 s) ends
        assert wait_for(lambda: len(applied) == 2, timeout=30.0), "the flush was not repaired"
        assert daemon.passes_completed == 1, "repaired on the nft notice, not by a pass"
        assert "table" in ns.check(["nft", "list", "ruleset"]).stdout
        time.sleep(3.0)  # bounded: the repair's own notices must not start a cycle
        assert len(applied) == 2
    finally:
        daemon.stop()
        runner.join(10)
        actuator.stop()
        print(actuator.log())
