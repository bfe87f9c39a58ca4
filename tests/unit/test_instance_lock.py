"""One daemon per state directory, and a status socket only its owner removes
(issue 14, finding 4). The real two-daemon case is in
tests/integration/test_fault_campaign.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.ops.status_server import StatusServer, unix_get
from reconciler.store.instance_lock import LOCK_FILE, InstanceLockError, acquire


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    lock = acquire(state)
    with pytest.raises(InstanceLockError) as err:
        acquire(state)
    assert err.value.holder_pid == os.getpid()
    assert f"pid {os.getpid()}" in str(err.value) and str(state) in str(err.value)
    assert (state / LOCK_FILE).stat().st_mode & 0o777 == 0o600
    lock.release()
    acquire(state).release()  # free again once released


def test_a_dead_holder_never_blocks_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = ("import os, sys; from pathlib import Path;"
            "from reconciler.store.instance_lock import acquire;"
            f"acquire(Path({str(state)!r})); os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], timeout=60, check=False)
    assert proc.returncode == -9
    assert (state / LOCK_FILE).read_text().strip().isdigit()  # its pid is left behind
    acquire(state).release()


def test_the_lock_file_is_not_inherited_by_children(tmp_path: Path) -> None:
    lock = acquire(tmp_path)
    fds = os.listdir("/proc/self/fd")
    assert lock._fd is not None and str(lock._fd) in fds
    assert os.get_inheritable(lock._fd) is False
    lock.release()


def status_server(path: Path, name: str) -> StatusServer:
    return StatusServer(path, lambda: b"", lambda: {"who": name})


def test_a_live_status_socket_is_never_taken_over(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "status.sock"
    first = status_server(sock, "first")
    first.start()
    second = status_server(sock, "second")
    with pytest.raises(OSError, match="in use"):
        second.start()
    code, body = unix_get(sock, "/status")
    assert code == 200 and b"first" in body
    second.stop()  # never started: must not remove the first one's socket
    assert unix_get(sock, "/healthz")[0] == 200
    first.stop()
    assert not sock.exists()


def test_stop_removes_only_the_socket_it_bound(tmp_path: Path) -> None:
    sock = tmp_path / "status.sock"
    old = status_server(sock, "old")
    old.start()
    os.unlink(sock)  # e.g. an operator cleaned up; a new agent took the path
    new = status_server(sock, "new")
    new.start()
    old.stop()
    assert unix_get(sock, "/status")[1].count(b"new") == 1
    new.stop()
    assert not sock.exists()


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    import socket

    sock = tmp_path / "status.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))
    s.close()  # bound, never listening: what a killed process leaves
    srv = status_server(sock, "fresh")
    srv.start()
    assert unix_get(sock, "/healthz")[0] == 200
    srv.stop()


def test_a_pass_that_may_act_is_refused_beside_a_running_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reconciler.cli.main import main
    from specs.config import load_config
    from tests.unit.test_trust_support import write_config

    cfg = write_config(tmp_path)
    held = acquire(load_config(cfg).state_directory)  # as `compliance-agent run` holds it
    try:
        assert main(["reconcile", "--once", "--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert "cannot reconcile" in err and f"pid {os.getpid()}" in err
    finally:
        held.release()
