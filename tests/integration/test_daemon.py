"""The real daemon process: sd_notify READY/STATUS/WATCHDOG, the unix status
socket, the metrics textfile (checked by promtool), and a clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.ops.status_server import unix_get
from tests.harness.require import require_tool
from tests.unit.conftest import TRUSTED_KEY

pytestmark = pytest.mark.integration


def poll(pred, timeout: float = 10.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify.sock"))
    s.settimeout(0.1)
    yield s
    s.close()


def recv_all(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out


def start_daemon(tmp_path: Path, notify: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    from reconciler.trust.keys import generate_key_file

    (tmp_path / "baseline.json").write_text(json.dumps({"version": 1, "policy_version": "1.0"}))
    generate_key_file(tmp_path / "signing.key")
    cfg = {
        "siteId": "clinic-1", "hostId": "host-1", "resellerId": "msp-1",
        "baselinePath": str(tmp_path / "baseline.json"),
        "clientCertFile": "/nonexistent/c", "clientKeyFile": "/nonexistent/k",
        "signingKeyFile": str(tmp_path / "signing.key"), "caCertFile": "/nonexistent/ca",
        "mcpPublicKeys": [TRUSTED_KEY],
        "stateDirectory": str(tmp_path / "state"),
        "statusSocket": str(tmp_path / "run" / "status.sock"),
        "metricsTextfile": str(tmp_path / "textfile" / "compliance_agent.prom"),
        "pollInterval": 1,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="600000",
               **(extra_env or {}))
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "run", "--config", str(tmp_path / "config.json")],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )


def test_daemon_notify_socket_metrics_and_sigterm(tmp_path: Path, notify_socket: socket.socket) -> None:
    promtool = require_tool("promtool")
    proc = start_daemon(tmp_path, Path(notify_socket.getsockname()))
    try:
        messages: list[str] = []
        poll(lambda: messages.extend(recv_all(notify_socket)) or any("READY=1" in m for m in messages))
        # the watchdog is fed by the loop itself, more often than every 0.6 s
        poll(lambda: messages.extend(recv_all(notify_socket)) or
             sum("WATCHDOG=1" in m for m in messages) >= 3, timeout=5)
        poll(lambda: messages.extend(recv_all(notify_socket)) or
             any("STATUS=Current" in m for m in messages), timeout=5)

        sock = tmp_path / "run" / "status.sock"
        assert oct(sock.stat().st_mode & 0o777) == "0o660"
        code, body = unix_get(sock, "/metrics")
        assert code == 200 and b"compliance_agent_build_info" in body
        code, body = unix_get(sock, "/status")
        doc = json.loads(body)
        assert code == 200 and doc["summary"] == "Current" and "workqueue" in doc

        textfile = tmp_path / "textfile" / "compliance_agent.prom"
        poll(textfile.exists)
        check = subprocess.run([promtool, "check", "metrics"], input=textfile.read_bytes(),
                               capture_output=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        assert b"compliance_agent_last_successful_pass_timestamp_seconds" in textfile.read_bytes()

        # no TCP/UDP listener owned by the daemon
        own = _listening_inodes_of(proc.pid)
        assert own == set(), f"daemon listens on inet sockets: {own}"

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=5)
        elapsed = time.monotonic() - t0
        print(f"\nSIGTERM -> exit in {elapsed * 1000:.0f} ms")
        assert rc == 0
        assert elapsed < 1.0, f"clean shutdown took {elapsed:.2f}s"
        assert not sock.exists(), "status socket removed on shutdown"
        messages.extend(recv_all(notify_socket))
        assert any("STOPPING=1" in m for m in messages)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert "level=INFO" in stderr and "msg=stopped" in stderr
        assert all(line.startswith("level=") for line in stderr.splitlines() if line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _listening_inodes_of(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            state, inode = cols[3], cols[9]
            if inode in inodes and (state == "0A" or table.startswith("udp")):
                listening.add(f"{table}:{inode}")
    return listening
