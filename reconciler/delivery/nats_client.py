"""A minimal NATS subscriber over TLS: the part of the text protocol an order
wake-up needs (INFO, CONNECT, SUB, PING/PONG, MSG, +OK/-ERR), and nothing else.

Why not nats-py: it is asyncio-only and costs several times the import time
and memory of this module (bench/bench_nats.py prints both), while the agent
only ever subscribes to one subject and ignores what the messages say.

One blocking socket, used by one thread. Everything a server sends is bounded:
a control line longer than `MAX_CONTROL_LINE`, a payload larger than
`max_payload` or anything unparsable is a `NatsProtocolError`, and the caller
drops the connection. A server that stops answering PINGs is a `NatsTimeout`.
TLS is mandatory: the server's certificate must chain to the pinned CA and
match the host name; the client certificate authenticates the agent.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from specs.errors import ComplianceAgentError

DEFAULT_PORT = 4222
MAX_CONTROL_LINE = 4096  # nats-server's own default limit for a protocol line
MAX_INFO_LINE = 64 * 1024  # INFO can list many cluster URLs
CLIENT_VERSION = "0.1"


class NatsError(ComplianceAgentError):
    """Base of every error of this client; the connection is unusable after it."""


class NatsProtocolError(NatsError):
    """The server sent something this client will not accept (or said -ERR)."""


class NatsTimeout(NatsError):
    """The server did not answer in time (connect, handshake or PING)."""


@dataclass(frozen=True)
class NatsMessage:
    subject: str
    sid: str
    size: int  # the payload itself is read and dropped: its content never matters here


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of a `tls://host[:port]` URL."""
    parts = urlsplit(url)
    if parts.scheme != "tls" or not parts.hostname:
        raise NatsError(f"{url!r}: expected tls://host[:port]")
    return parts.hostname, parts.port or DEFAULT_PORT


class NatsConnection:
    """One connection: `open` does INFO -> TLS -> CONNECT -> PING/PONG."""

    def __init__(self, sock: ssl.SSLSocket, server_info: dict[str, object],
                 max_payload: int) -> None:
        self._sock = sock
        self._buf = bytearray()
        self.server_info = server_info
        self.max_payload = max_payload
        self.pings_outstanding = 0
        self.last_received = time.monotonic()

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        name: str = "compliance-agent",
        timeout: float = 5.0,
        max_payload: int = 64 * 1024,
    ) -> NatsConnection:
        deadline = time.monotonic() + timeout
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise NatsTimeout(f"connect to {host}:{port}: timed out") from None
        except OSError as e:
            raise NatsError(f"connect to {host}:{port}: {e.strerror or e}") from None
        try:
            info = _read_info(raw, deadline)
            if not info.get("tls_required") and not info.get("tls_available"):
                raise NatsProtocolError(f"{host}:{port} does not offer TLS; refusing plaintext")
            raw.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                sock = context.wrap_socket(raw, server_hostname=host)
            except TimeoutError:
                raise NatsTimeout(f"TLS handshake with {host}:{port}: timed out") from None
            except (ssl.SSLError, ssl.CertificateError) as e:
                raise NatsError(f"TLS handshake with {host}:{port}: {e}") from None
        except BaseException:
            raw.close()
            raise
        server_max = info.get("max_payload")
        limit = min(max_payload, server_max) if isinstance(server_max, int) and server_max > 0 \
            else max_payload
        conn = cls(sock, info, limit)
        try:
            conn._send(b"CONNECT " + json.dumps({
                "verbose": False, "pedantic": False, "tls_required": True, "name": name,
                "lang": "python-minimal", "version": CLIENT_VERSION, "protocol": 1,
                "echo": False, "headers": False, "no_responders": False,
            }, separators=(",", ":")).encode() + b"\r\n")
            conn.flush(max(0.1, deadline - time.monotonic()))
        except BaseException:
            conn.close()
            raise
        return conn

    # -- requests ------------------------------------------------------------------
    def subscribe(self, subject: str, sid: str = "1") -> None:
        if not subject or any(c in subject for c in " \t\r\n"):
            raise NatsError(f"bad subject {subject!r}")
        self._send(f"SUB {subject} {sid}\r\n".encode())

    def ping(self) -> None:
        self.pings_outstanding += 1
        self._send(b"PING\r\n")

    def flush(self, timeout: float) -> None:
        """PING and wait for its PONG: the server has processed everything sent before
        (CONNECT accepted, a SUB registered). Messages that arrive meanwhile are dropped,
        so call it before subscribing or accept that."""
        self.ping()
        deadline = time.monotonic() + timeout
        while self.pings_outstanding:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NatsTimeout("no PONG from the server in time")
            if self._parse_one() is False:
                self._fill(left)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    # -- reading -------------------------------------------------------------------
    def next_message(self, timeout: float) -> NatsMessage | None:
        """The next MSG within `timeout` seconds, or None. Answers the server's PINGs,
        counts PONGs, takes INFO updates; -ERR and anything malformed raise."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._parse_one()
            if isinstance(event, NatsMessage):
                return event
            if event:
                continue  # a control line was handled; look for more in the buffer
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._fill(left)

    def _parse_one(self) -> NatsMessage | bool:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_INFO_LINE:
                raise NatsProtocolError("protocol line too long")
            return False
        line = bytes(self._buf[:end])
        op = line.split(b" ", 1)[0].upper()
        if op != b"INFO" and end > MAX_CONTROL_LINE:
            raise NatsProtocolError("protocol line too long")
        if op == b"MSG":
            return self._parse_msg(line, end)
        del self._buf[:end + 2]
        if op == b"PING":
            self._send(b"PONG\r\n")
        elif op == b"PONG":
            self.pings_outstanding = max(0, self.pings_outstanding - 1)
        elif op == b"+OK":
            pass
        elif op == b"INFO":
            self.server_info = _json_object(line[5:])
        elif op == b"-ERR":
            raise NatsProtocolError(f"server error: {line[5:200].decode(errors='replace')}")
        else:
            raise NatsProtocolError(f"unexpected protocol line {line[:40]!r}")
        return True

    def _parse_msg(self, line: bytes, end: int) -> NatsMessage | bool:
        fields = line.split()
        if len(fields) not in (4, 5):
            raise NatsProtocolError("malformed MSG line")
        try:
            size = int(fields[-1])
        except ValueError:
            raise NatsProtocolError("malformed MSG size") from None
        if size < 0 or size > self.max_payload:
            raise NatsProtocolError(f"MSG of {size} bytes exceeds max_payload {self.max_payload}")
        total = end + 2 + size + 2
        if len(self._buf) < total:
            return False  # wait for the payload
        if self._buf[total - 2:total] != b"\r\n":
            raise NatsProtocolError("MSG payload not terminated by CRLF")
        del self._buf[:total]
        return NatsMessage(fields[1].decode(errors="replace"), fields[2].decode(errors="replace"),
                           size)

    def _fill(self, timeout: float) -> None:
        self._sock.settimeout(timeout)
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError:
            return
        except ssl.SSLWantReadError:
            return
        except OSError as e:
            raise NatsError(f"connection lost: {e}") from None
        if not chunk:
            raise NatsError("connection closed by the server")
        self.last_received = time.monotonic()
        self._buf += chunk

    def _send(self, data: bytes) -> None:
        self._sock.settimeout(5.0)
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise NatsTimeout("write to the server timed out") from None
        except OSError as e:
            raise NatsError(f"connection lost: {e}") from None


def _read_info(sock: socket.socket, deadline: float) -> dict[str, object]:
    """The plaintext INFO line a server sends before the TLS upgrade."""
    buf = bytearray()
    while b"\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NatsTimeout("no INFO from the server in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            raise NatsTimeout("no INFO from the server in time") from None
        except OSError as e:
            raise NatsError(f"connection lost before INFO: {e}") from None
        if not chunk:
            raise NatsError("connection closed before INFO")
        buf += chunk
        if len(buf) > MAX_INFO_LINE:
            raise NatsProtocolError("INFO line too long")
    line, rest = bytes(buf).split(b"\r\n", 1)
    if not line.startswith(b"INFO "):
        raise NatsProtocolError(f"expected INFO, got {line[:40]!r}")
    if rest:
        raise NatsProtocolError("server spoke before the TLS upgrade")
    return _json_object(line[5:])


def _json_object(raw: bytes) -> dict[str, object]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise NatsProtocolError("INFO is not JSON") from None
    if not isinstance(data, dict):
        raise NatsProtocolError("INFO is not a JSON object")
    return data
