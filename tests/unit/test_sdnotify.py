from __future__ import annotations

import socket
from pathlib import Path

from reconciler.ops.sdnotify import Notifier


def test_notify_fields_and_watchdog_interval(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
        assert n.enabled and n.watchdog_interval == 2.0
        assert n.ready("ok")
        assert s.recv(100) == b"READY=1\nSTATUS=ok"


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None


def test_a_receiver_that_stops_reading_never_blocks_the_sender(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))  # bound, never read: its queue fills up
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        results = [n.status(f"pass {i}") for i in range(5000)]
    assert results[0] is True
    assert False in results, "once the queue is full, messages are dropped, not waited on"


def test_disabled_without_socket() -> None:
    n = Notifier({})
    assert not n.enabled and n.ready("x") is False
