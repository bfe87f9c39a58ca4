"""Evidence under faults, with the real daemon (`compliance-agent run`).

* the state database is lost (WAL scrambled after a SIGKILL, the whole DB
  deleted while stopped): the next run rebuilds the index from the signed
  files, keeps every file, reuses no sequence, and `evidence verify --all`
  passes;
* the state directory is a small tmpfs (8 MiB: SQLite's WAL alone grows to
  about 4 MiB before it is checkpointed) that a filler file fills up: the daemon reports
  evidence as unwritable (status: Failed with the reason, metric, no
  watchdog ping) and recovers once space returns, nothing lost.

The baseline manages `encryption` (read-only, alert-only) with a 1 s snapshot
interval, so every pass makes a bundle.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.ops.status_server import unix_get
from reconciler.store.evidence_index import FILE_RE
from reconciler.trust.keys import generate_key_file
from tests.harness.require import require_root, require_tool
from tests.support.control_plane import REPO_ROOT, wait_for
from tests.support.fault_report import report

pytestmark = pytest.mark.integration


def _config(tmp: Path, state: Path) -> Path:
    generate_key_file(tmp / "signing.key")
    (tmp / "baseline.json").write_text(json.dumps({
        "version": 1, "policy_version": "1.0", "encryption": {"devices": []}}))
    config = tmp / "config.json"
    config.write_text(json.dumps({
        "siteId": "clinic-1", "hostId": "host-faults", "deploymentMode": "direct",
        "baselinePath": str(tmp / "baseline.json"),
        "clientCertFile": "/nonexistent/c", "clientKeyFile": "/nonexistent/k",
        "signingKeyFile": str(tmp / "signing.key"), "caCertFile": "/nonexistent/ca",
        "mcpPublicKeys": ["ab" * 32], "stateDirectory": str(state),
        "statusSocket": str(tmp / "run" / "status.sock"),
        "pollInterval": 1, "evidenceSnapshotInterval": 1,
    }))
    return config


def _files(state: Path) -> dict[str, bytes]:
    ev = state / "evidence"
    if not ev.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in ev.iterdir() if FILE_RE.match(p.name)}


def _start(config: Path, log: Path, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "run", "--config", str(config)],
            cwd=REPO_ROOT, stdout=out, stderr=out, env={**os.environ, **(env or {})})


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(15)


def _verify(config: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "reconciler.cli", "evidence", "verify", "--all",
                        "--config", str(config)], cwd=REPO_ROOT, capture_output=True,
                       timeout=120, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _run_until(config: Path, state: Path, log: Path, more: int, sig: int) -> None:
    before = len(_files(state))
    proc = _start(config, log)
    try:
        wait_for(lambda: proc.poll() is not None or len(_files(state)) >= before + more,
                 60, f"{more} new bundles")
        assert proc.poll() is None, f"daemon exited: {log.read_text()[-3000:]}"
    finally:
        _stop(proc, sig)


def _assert_kept_and_not_reused(state: Path, before: dict[str, bytes]) -> str:
    """Every signed file kept byte for byte, no sequence used twice; the summary line."""
    after = _files(state)
    kept = sum(1 for name, data in before.items() if after.get(name) == data)
    seqs = [int(n[:12]) for n in after]
    duplicates = len(seqs) - len(set(seqs))
    line = (f"files_before={len(before)} kept={kept} lost={len(before) - kept} "
            f"files_after={len(after)} duplicates={duplicates}")
    for name, data in before.items():
        assert after.get(name) == data, f"signed evidence file {name} lost"
    assert duplicates == 0, "a sequence number was used twice"
    return line


def test_real_daemon_db_lost_keeps_every_file(tmp_path: Path, request: pytest.FixtureRequest
                                               ) -> None:
    state = tmp_path / "state"
    config = _config(tmp_path, state)
    log = tmp_path / "daemon.log"
    _run_until(config, state, log, 4, signal.SIGKILL)
    wal = state / "state.db-wal"
    assert wal.stat().st_size > 64
    before = _files(state)
    data = bytearray(wal.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = os.urandom(64)
    wal.write_bytes(bytes(data))
    _run_until(config, state, log, 2, signal.SIGTERM)
    report(request.config, "DB loss, WAL scrambled after SIGKILL: "
           + _assert_kept_and_not_reused(state, before))
    assert "evidence index was reconciled with the files" in _verify(config)

    # An older copy of the database restored over the current one (stopped cleanly:
    # the copy has no WAL), the evidence files left as they are.
    backup = tmp_path / "state.db.bak"
    shutil.copy2(state / "state.db", backup)
    _run_until(config, state, log, 3, signal.SIGTERM)
    before = _files(state)
    shutil.copy2(backup, state / "state.db")
    for name in ("state.db-wal", "state.db-shm"):
        (state / name).unlink(missing_ok=True)
    _run_until(config, state, log, 2, signal.SIGTERM)
    report(request.config, "DB loss, older copy restored: "
           + _assert_kept_and_not_reused(state, before))
    _verify(config)

    before = _files(state)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (state / name).unlink(missing_ok=True)
    _run_until(config, state, log, 2, signal.SIGTERM)
    report(request.config, "DB loss, state.db+wal+shm deleted: "
           + _assert_kept_and_not_reused(state, before))
    print("\n" + _verify(config)[-500:])
    assert "evidence index rebuilt from the signed files" in log.read_text()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    require_root()
    mount = require_tool("mount")
    umount = require_tool("umount")
    target = tmp_path / "state"
    target.mkdir()
    subprocess.run([mount, "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(target)],
                   check=True, timeout=30)
    try:
        yield target
    finally:
        subprocess.run([umount, "-l", str(target)], check=False, timeout=30)


def _fill(path: Path) -> None:
    """Write until the filesystem says ENOSPC (unbuffered: the error comes from write)."""
    chunk = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


def _status(sock: Path) -> dict[str, object]:
    code, body = unix_get(sock, "/status")
    assert code == 200
    doc: dict[str, object] = json.loads(body)
    return doc


def _metric(sock: Path, name: str) -> float | None:
    _, body = unix_get(sock, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_real_daemon_disk_full_reports_unwritable_and_recovers(
        tmp_path: Path, small_tmpfs: Path, request: pytest.FixtureRequest) -> None:
    state = small_tmpfs
    config = _config(tmp_path, state)
    log = tmp_path / "daemon.log"
    sock = tmp_path / "run" / "status.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.05)
    proc = _start(config, log, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                "WATCHDOG_USEC": "3000000"})
    try:
        wait_for(lambda: len(_files(state)) >= 2 and sock.exists(), 60, "first bundles")
        filler = state / "filler"
        _fill(filler)
        # Whichever write fails first (the status row or the bundle), the reason says so.
        wait_for(lambda: "disk is full" in json.dumps(_status(sock).get("unhealthy")), 60,
                 "the daemon to report evidence unwritable")
        doc = _status(sock)
        assert doc["summary"] == "Failed" and doc["loop_healthy"] is False, doc
        assert _metric(sock, "compliance_agent_loop_healthy") == 0
        # While unhealthy the loop stops feeding the watchdog (systemd would restart it).
        _drain(notify)
        assert not any("WATCHDOG=1" in m for m in _listen(notify, 2.0))

        filler.unlink()
        count = len(_files(state))
        wait_for(lambda: "unhealthy" not in _status(sock) and len(_files(state)) > count + 1,
                 60, "the daemon to write evidence again")
        assert _metric(sock, "compliance_agent_evidence_write_failures_consecutive") == 0
        assert _metric(sock, "compliance_agent_loop_healthy") == 1
        assert (_metric(sock, "compliance_agent_evidence_last_write_timestamp_seconds")
                or 0) > time.time() - 60
        report(request.config, f"disk full (8 MiB tmpfs): reported Failed/unwritable, watchdog "
               f"withheld, recovered; bundles={len(_files(state))}")
    finally:
        _stop(proc)
        notify.close()
    _verify(config)


def _drain(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out


def _listen(s: socket.socket, seconds: float) -> list[str]:
    """Everything received during a window longer than the 1 s ping interval."""
    out: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out += _drain(s)
    return out
