"""The status socket under abuse by a local user in the agent's group.

Half-open connections must not pin a thread each (bounded concurrency), a
silent peer is dropped after the read timeout, and an oversized request is
answered with an error instead of being buffered.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.ops.status_server import StatusServer, unix_get


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StatusServer]:
    s = StatusServer(tmp_path / "status.sock", lambda: b"m 1\n", lambda: {"ok": True})
    s.start()
    yield s
    s.stop()


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))  # blocking: waits for room in the backlog
    s.settimeout(5)
    return s


def _request_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_half_open_connections_do_not_pin_a_thread_each(server: StatusServer) -> None:
    idle = [_connect(server.path) for _ in range(64)]
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _request_threads() < 64:
            time.sleep(0.01)  # give an unbounded server the time to show it (bounded poll)
        assert _request_threads() <= 16
        code, _ = unix_get(server.path, "/healthz", timeout=10)
        assert code in (200, 503)
    finally:
        for s in idle:
            s.close()


def test_a_silent_peer_is_dropped_after_the_read_timeout(tmp_path: Path) -> None:
    s = StatusServer(tmp_path / "status.sock", lambda: b"", lambda: {}, read_timeout=0.3)
    s.start()
    try:
        conn = _connect(s.path)
        conn.settimeout(10)  # a server that never drops it makes recv time out: a failure
        received = b""
        while chunk := conn.recv(1024):
            received += chunk
        assert received == b""
    finally:
        s.stop()


def test_an_oversized_request_is_refused(server: StatusServer) -> None:
    with _connect(server.path) as conn:
        conn.sendall(b"GET /" + b"a" * 20000 + b" HTTP/1.0\r\nHost: x\r\n\r\n")
        head = conn.recv(64)
    code = int(head.split(b" ", 2)[1])
    assert code in (414, 431)


def test_oversized_headers_are_refused(server: StatusServer) -> None:
    with _connect(server.path) as conn:
        conn.sendall(b"GET /healthz HTTP/1.0\r\n" + b"X-Pad: " + b"b" * 9000 + b"\r\n" * 2)
        head = conn.recv(64)
    assert int(head.split(b" ", 2)[1]) == 431


def test_a_drip_feeding_peer_is_dropped_at_the_whole_request_deadline(tmp_path: Path) -> None:
    """The read timeout bounds the whole request head, not each read: peers that send
    a byte every half timeout must not hold every slot for as long as they like."""
    s = StatusServer(tmp_path / "status.sock", lambda: b"", lambda: {"ok": True},
                     read_timeout=1.0, max_connections=2)
    s.start()
    stop = threading.Event()
    dropped: list[bool] = []

    def drip() -> None:
        conn = _connect(s.path)
        try:
            for _ in range(40):  # 20 s of drip, far past the 1 s deadline
                if stop.is_set():
                    return
                conn.sendall(b"G")
                if stop.wait(0.5):
                    return
        except OSError:
            dropped.append(True)  # the server cut us off
        finally:
            conn.close()

    drippers = [threading.Thread(target=drip, daemon=True) for _ in range(2)]
    for t in drippers:
        t.start()
    try:
        deadline = time.monotonic() + 10.0
        served = False
        while time.monotonic() < deadline and not served:
            code, _ = unix_get(s.path, "/healthz", timeout=5)
            served = code == 200
            time.sleep(0.2)
        assert served, "drip-feeding peers kept every slot past the request deadline"
    finally:
        stop.set()
        for t in drippers:
            t.join(10)
        s.stop()
