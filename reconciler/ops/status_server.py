"""HTTP over a unix socket: /metrics (Prometheus exposition), /status (JSON),
/healthz. Never a TCP/UDP listener. Prometheus cannot scrape a unix socket (it
scrapes the metrics textfile through the node exporter); /metrics here is for
a look on the host, and operators' tools read live status without touching
the database.

Access control is the socket file's mode (0660) and its directory's owner.
Anyone in the socket's group is still not trusted with the process's
resources: one request per connection, its head capped at
`MAX_REQUEST_HEAD_BYTES` (414/431 beyond), a peer that has not sent its whole
request head within `read_timeout` seconds is dropped, and at most
`max_connections` are served at once; a connection beyond that gets an
immediate 503 instead of a thread.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from reconciler.ops.status_client import unix_get
from specs.errors import ComplianceAgentError

__all__ = ["StatusServer", "unix_get"]  # unix_get: the client half, kept importable here

log = logging.getLogger("compliance_agent.status_server")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_HEAD_BYTES = 8 * 1024  # request line + headers; a GET carries no body
DEFAULT_READ_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 16
BUSY_DRAIN_SECONDS = 0.05  # per refused connection, in the accept loop
BUSY_REPLY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, path: str, handler: type[BaseHTTPRequestHandler],
                 max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(path, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, _ = super().get_request()
        return conn, ("unix", 0)  # BaseHTTPRequestHandler wants a (host, port) pair

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Full: answer now, from the accept loop, rather than queue a thread.
            # The request is read (briefly) first: closing a unix socket with
            # unread data resets it, and the peer would lose the 503.
            with contextlib.suppress(OSError):
                request.settimeout(BUSY_DRAIN_SECONDS)
                with contextlib.suppress(TimeoutError):
                    request.recv(MAX_REQUEST_HEAD_BYTES)
                request.sendall(BUSY_REPLY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class RequestHeadTooLarge(ComplianceAgentError):
    """A request line (414) or header block (431) over the cap; answered, never raised out."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"request head too large (HTTP {code})")


def _read_head(conn: socket.socket, limit: int, deadline: float) -> bytes:
    """Request line and headers, up to the blank line; RequestHeadTooLarge past
    `limit`, TimeoutError at `deadline` (monotonic). The deadline bounds the whole
    head, not each read: a peer dripping a byte at a time is cut off as well."""
    head = bytearray()
    while (end := _head_end(head)) is None:
        if len(head) > limit:
            first_line = head.find(b"\n")
            raise RequestHeadTooLarge(414 if first_line == -1 or first_line > limit else 431)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request head not complete by the deadline")
        conn.settimeout(remaining)
        chunk = conn.recv(min(4096, limit + 1 - len(head)))
        if not chunk:
            return bytes(head)  # the peer closed: the parser answers what there is
        head += chunk
    return bytes(head[:end])


def _head_end(head: bytearray) -> int | None:
    """Where the head ends (after its blank line), or None while incomplete."""
    if head.startswith((b"\r\n", b"\n")):
        return 2 if head.startswith(b"\r\n") else 1
    ends = [i + len(t) for t in (b"\r\n\r\n", b"\n\n") if (i := head.find(t)) != -1]
    return min(ends) if ends else None


class StatusServer:
    def __init__(
        self,
        path: Path,
        metrics: Callable[[], bytes],
        status: Callable[[], dict[str, Any]],
        mode: int = 0o660,
        *,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.path = path
        self._metrics = metrics
        self._status = status
        self.mode = mode
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self._server: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we made

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        try:
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode):
                if _answers(self.path):
                    # Another live agent owns it: never take its socket away.
                    raise OSError(errno.EADDRINUSE, f"{self.path}: status socket in use by"
                                  " another running process; refusing to replace it")
                os.unlink(self.path)  # stale socket from a previous run
            else:
                raise FileExistsError(
                    f"{self.path} exists and is not a socket; refusing to replace it"
                )
        except FileNotFoundError:
            pass
        handler = _make_handler(self._metrics, self._status, self.read_timeout)
        old_umask = os.umask(0o117)  # the socket is born 0660: no window with wider access
        try:
            self._server = _UnixHTTPServer(str(self.path), handler, self.max_connections)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, self.mode)
        st = os.lstat(self.path)
        self._bound = (st.st_dev, st.st_ino)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="status-server", daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        # Only the socket this server bound: if another process has replaced
        # it since, the file at this path is theirs.
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if self._bound == (st.st_dev, st.st_ino):
                os.unlink(self.path)
        self._bound = None


def _make_handler(
    metrics: Callable[[], bytes], status: Callable[[], dict[str, Any]], read_timeout: float
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "compliance-agent"
        timeout = read_timeout  # StreamRequestHandler puts it on the socket

        def handle_one_request(self) -> None:
            self.close_connection = True  # one request per connection
            try:
                head = _read_head(self.connection, MAX_REQUEST_HEAD_BYTES,
                                  time.monotonic() + read_timeout)
            except TimeoutError:
                return  # silent peer: drop it
            except RequestHeadTooLarge as e:
                self.requestline, self.request_version, self.command = "", "HTTP/1.0", "GET"
                self.send_error(e.code, f"request head over {MAX_REQUEST_HEAD_BYTES} bytes")
                return
            if not head:
                return
            self.connection.settimeout(read_timeout)  # for the reply, not what was left
            self.rfile = io.BytesIO(head)  # the stdlib parser reads the capped copy
            super().handle_one_request()
            self.close_connection = True

        def do_GET(self) -> None:
            route = self.path.split("?", 1)[0]
            try:
                if route == "/metrics":
                    self._send(200, PROMETHEUS_CONTENT_TYPE, metrics())
                elif route == "/status":
                    body = json.dumps(status(), indent=2, default=str).encode()
                    self._send(200, "application/json", body)
                elif route == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /status\n")
            except Exception as e:
                log.exception("status request failed")
                self._send(500, "text/plain", f"error: {type(e).__name__}\n".encode())

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("status request: " + format, *args)

    return Handler


def _answers(path: Path) -> bool:
    """Whether a process is accepting connections on the unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True

