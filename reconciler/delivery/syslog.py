"""RFC 5424 syslog copies of evidence summaries, for the reseller's collector.

Transports (`syslogTarget`):
* `udp://host:port`: one datagram per message (RFC 5426).
* `tcp://host:port`: octet-counting framing, `MSG-LEN SP SYSLOG-MSG` (RFC 6587).
* `tls://host:port`: the same framing inside TLS (RFC 5425; its port is 6514).
  TLS 1.2 or later, the collector's certificate must chain to the pinned CA in
  `syslogCaFile` (never the system trust store: an MSP's collector usually has
  a certificate from the MSP's own CA) and name the target's host (DNS name or
  IP address SAN). A certificate that fails either check is refused before a
  byte of the message is written.

A collector does not write to its clients, so before each message a readable
stream is drained: end of stream (FIN, TLS close_notify) or an error means the
collector went away, and the connection is re-dialled instead of writing into
a dead one (where the first message would be lost without an error). Failures raise
IntegrationError; the caller's bounded retry loop (EvidenceSink) re-dials.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from reconciler.delivery.summary import EvidenceSummary, IntegrationError

APP_NAME = "compliance-agent"
SD_ID = "evidence@32473"  # 32473: the IANA example enterprise number (RFC 5612)
FACILITY_LOCAL0 = 16
SEVERITY = {
    "success": 6,
    "deferred": 5,
    "expired": 5,
    "reverted": 4,
    "rejected": 4,
    "alert": 4,
    "failed": 3,
}
SCHEMES = ("tcp", "udp", "tls")


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _token(value: str, limit: int) -> str:
    # HOSTNAME/APP-NAME etc. are PRINTUSASCII without spaces; "-" is NILVALUE.
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def format_rfc5424(summary: EvidenceSummary, pid: int | None = None) -> bytes:
    """One RFC 5424 message: header, one SD element, BOM + JSON summary as MSG."""
    pri = FACILITY_LOCAL0 * 8 + SEVERITY.get(summary.outcome, 5)
    ts = summary.timestamp or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    params = " ".join(
        f'{k}="{_sd_escape(v)}"'
        for k, v in (
            ("bundle_id", summary.bundle_id),
            ("check", summary.check),
            ("outcome", summary.outcome),
            ("site", summary.site),
            ("host", summary.host),
        )
    )
    header = (
        f"<{pri}>1 {_token(ts, 64)} {_token(summary.host, 255)} {APP_NAME} "
        f"{pid if pid is not None else os.getpid()} EVIDENCE [{SD_ID} {params}] "
    )
    return header.encode() + b"\xef\xbb\xbf" + summary.to_json()


def octet_counted(msg: bytes) -> bytes:
    """RFC 6587 / RFC 5425 framing: MSG-LEN SP SYSLOG-MSG."""
    return b"%d " % len(msg) + msg


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """Client context trusting only `ca_file`: TLS 1.2+, certificate and name checked."""
    try:
        # With cafile given, the system's default CAs are not loaded.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or e
        raise IntegrationError(
            f"syslogCaFile {ca_file}: cannot load the CA certificate: {reason}", retryable=False
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class SyslogSender:
    name = "syslog"

    def __init__(self, target: str, timeout: float = 5.0, ca_file: Path | None = None) -> None:
        parts = urlsplit(target)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in SCHEMES or not parts.hostname or not port:
            raise IntegrationError(
                f"syslogTarget {target!r}: use tcp://host:port, udp://host:port or "
                "tls://host:port",
                retryable=False,
            )
        if parts.scheme == "tls" and ca_file is None:
            raise IntegrationError(
                f"syslogTarget {target!r}: tls:// needs syslogCaFile (the CA that signs the "
                "collector's certificate)",
                retryable=False,
            )
        self.target = target
        self.proto = parts.scheme
        self.host = parts.hostname
        self.addr = (parts.hostname, port)
        self.timeout = timeout
        self._tls = tls_context(ca_file) if parts.scheme == "tls" and ca_file else None
        self._sock: socket.socket | None = None

    def __repr__(self) -> str:
        return f"SyslogSender({self.target!r})"

    def _dial(self) -> socket.socket:
        if self.proto == "udp":
            info = socket.getaddrinfo(*self.addr, type=socket.SOCK_DGRAM)[0]
            s = socket.socket(info[0], socket.SOCK_DGRAM)
            s.settimeout(self.timeout)
            s.connect(info[4])
            return s
        raw = socket.create_connection(self.addr, timeout=self.timeout)
        if self._tls is None:
            return raw
        try:
            # Handshake here (do_handshake_on_connect): verification happens
            # before any message byte is written.
            return self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _closed_by_peer(self, sock: socket.socket) -> bool:
        """True when the collector has closed the stream (EOF, close_notify, reset).

        Readable is not enough: a TLS 1.3 server sends session tickets after
        the handshake, which the read below consumes without data."""
        if self.proto == "udp":
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            sock.setblocking(False)
            try:
                while sock.recv(4096):
                    pass  # nothing is expected from a collector: discard
                return True  # b"": end of stream
            finally:
                sock.settimeout(self.timeout)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False  # only protocol records (tickets), or nothing more yet
        except (OSError, ValueError):
            return True

    def _connect(self) -> socket.socket:
        if self._sock is not None and self._closed_by_peer(self._sock):
            self.close()
        if self._sock is None:
            self._sock = self._dial()
        return self._sock

    def send(self, summary: EvidenceSummary) -> None:
        msg = format_rfc5424(summary)
        try:
            sock = self._connect()
            if self.proto == "udp":
                sock.send(msg)
            else:
                sock.sendall(octet_counted(msg))
        except ssl.SSLCertVerificationError as e:
            self.close()
            # A configuration problem (wrong CA or name): retrying now cannot help;
            # the next bundle dials again.
            raise IntegrationError(
                f"syslog {self.target}: collector certificate refused "
                f"({e.verify_message or e.reason}); check syslogCaFile and the target host name",
                retryable=False,
            ) from None
        except ssl.SSLError as e:
            self.close()
            raise IntegrationError(f"syslog {self.target}: TLS error: {e.reason or e}") from None
        except OSError as e:
            self.close()  # reconnect on the next try
            raise IntegrationError(f"syslog {self.target}: {e.strerror or e}") from None

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
