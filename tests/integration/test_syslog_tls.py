"""Syslog over TLS (RFC 5425) against a real TLS receiver on loopback.

The receiver is a plain `ssl` server with trustme certificates: it records
every octet-counted frame it reads and every handshake it refuses or that
the client aborts. The agent's side is the production SyslogSender behind an
EvidenceSink (its bounded retry loop), as build_integrations wires it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
from pathlib import Path

import pytest
import trustme

from reconciler.delivery.integrations import (
    EvidenceSink,
    EvidenceSummary,
    IntegrationError,
    SyslogSender,
    build_integrations,
)
from tests.support.agent import load, write_agent_config
from tests.support.control_plane import wait_for
from tests.support.tls import make_tls

pytestmark = pytest.mark.integration

RFC5424 = re.compile(
    rb"^<(\d{1,3})>1 (\S+) (\S+) compliance-agent (\d+) EVIDENCE (\[evidence@32473 [^\]]*\]) "
    rb"\xef\xbb\xbf(.*)$", re.S,
)


def summary(n: int, outcome: str = "success") -> EvidenceSummary:
    return EvidenceSummary(
        bundle_id=f"b-{n}", check="firewall", outcome=outcome, site="clinic-1",
        host="host-a", timestamp="2026-11-30T18:00:00Z",
    )


class TlsSyslogReceiver:
    """RFC 5425 receiver: TLS, then `MSG-LEN SP SYSLOG-MSG` frames."""

    def __init__(self, ca: trustme.CA, names: tuple[str, ...], directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        pem = directory / "server.pem"
        ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(pem))
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(pem))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self.raw_bytes_after_handshake = 0
        self.handshake_failures: list[str] = []
        self.connections = 0
        self._conns: list[ssl.SSLSocket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self._lock:
                self.handshake_failures.append(str(e))
            raw.close()
            return
        with self._lock:
            self.connections += 1
            self._conns.append(conn)
        buf = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                with self._lock:
                    self.raw_bytes_after_handshake += len(chunk)
                buf += chunk
                while b" " in buf:
                    length, rest = buf.split(b" ", 1)
                    n = int(length)  # a malformed frame fails the test loudly
                    if len(rest) < n:
                        break
                    with self._lock:
                        self.messages.append(rest[:n])
                    buf = rest[n:]
        except (ssl.SSLError, OSError):
            return
        finally:
            conn.close()

    def drop_connections(self) -> None:
        """Close every accepted connection (a collector restart, as the agent sees it)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            # FIN from under the serving thread (SSL objects are not shared
            # across threads); that thread then sees EOF and closes.
            with contextlib.suppress(OSError, ValueError):
                socket.socket.shutdown(c, socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()
        self.drop_connections()


def check(msg: bytes) -> str:
    m = RFC5424.match(msg)
    assert m, msg
    assert m[3] == b"host-a"
    return m[5].decode()


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    path = tmp_path / "syslog-ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


def test_tls_frames_arrive_octet_counted_and_survive_a_collector_restart(
    tmp_path: Path, ca: tuple[trustme.CA, Path]
) -> None:
    authority, ca_file = ca
    rx = TlsSyslogReceiver(authority, ("localhost", "127.0.0.1"), tmp_path / "rx")
    sink = EvidenceSink(SyslogSender(f"tls://127.0.0.1:{rx.port}", ca_file=ca_file),
                        initial_wait=0.01, max_wait=0.05)
    try:
        for n in range(3):
            assert sink.submit(summary(n))
        wait_for(lambda: len(rx.messages) == 3, 20, "3 frames over TLS")
        sds = [check(m) for m in rx.messages]
        assert [f'bundle_id="b-{n}"' in sd for n, sd in enumerate(sds)] == [True] * 3
        assert rx.connections == 1  # one connection carries every frame

        rx.drop_connections()
        for n in range(3, 5):
            assert sink.submit(summary(n, "failed"))
        wait_for(lambda: len(rx.messages) == 5, 20, "2 more frames after the restart")
        assert rx.connections == 2
        assert rx.messages[3].startswith(b"<131>1 ")  # local0.err for "failed"
        assert sink.failed == 0 and sink.sent == 5
    finally:
        sink.close()
        rx.close()


def test_tls_by_host_name(tmp_path: Path, ca: tuple[trustme.CA, Path]) -> None:
    authority, ca_file = ca
    rx = TlsSyslogReceiver(authority, ("localhost",), tmp_path / "rx")
    sender = SyslogSender(f"tls://localhost:{rx.port}", ca_file=ca_file)
    try:
        sender.send(summary(1))
        wait_for(lambda: len(rx.messages) == 1, 20, "1 frame to tls://localhost")
    finally:
        sender.close()
        rx.close()


@pytest.mark.parametrize("case", ["other CA", "wrong name"])
def test_untrusted_collector_is_refused_and_gets_nothing(
    tmp_path: Path, ca: tuple[trustme.CA, Path], case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    authority, ca_file = ca
    if case == "other CA":
        rx = TlsSyslogReceiver(trustme.CA(), ("localhost", "127.0.0.1"), tmp_path / "rx")
    else:  # the pinned CA, but a certificate for some other host
        rx = TlsSyslogReceiver(authority, ("siem.other.example",), tmp_path / "rx")
    good = TlsSyslogReceiver(authority, ("127.0.0.1",), tmp_path / "good")
    bad_sink = EvidenceSink(SyslogSender(f"tls://127.0.0.1:{rx.port}", ca_file=ca_file),
                            initial_wait=0.01, max_wait=0.05)
    good_sink = EvidenceSink(SyslogSender(f"tls://127.0.0.1:{good.port}", ca_file=ca_file),
                             initial_wait=0.01, max_wait=0.05)
    try:
        with caplog.at_level(logging.WARNING):
            assert bad_sink.submit(summary(1))
            wait_for(lambda: bad_sink.failed == 1, 20, "the refused send to be recorded")
            wait_for(lambda: len(rx.handshake_failures) == 1, 20, "the aborted handshake")
        assert bad_sink.last_error is not None
        assert "certificate refused" in bad_sink.last_error
        want = "IP address mismatch" if case == "wrong name" else "unable to get local issuer"
        assert want in bad_sink.last_error, bad_sink.last_error
        assert "giving up on bundle b-1" in caplog.text
        # Refused at the handshake: not a single application byte reached it,
        # and a configuration error is not retried into a storm.
        assert rx.connections == 0 and rx.raw_bytes_after_handshake == 0 and rx.messages == []
        assert len(rx.handshake_failures) == 1

        # The sink's thread lives on; the other sink and the next bundle are unaffected.
        assert good_sink.submit(summary(2))
        assert bad_sink.submit(summary(3))
        wait_for(lambda: len(good.messages) == 1, 20, "the trusted collector's frame")
        wait_for(lambda: bad_sink.failed == 2, 20, "the second refusal")
        assert rx.messages == []
    finally:
        bad_sink.close()
        good_sink.close()
        rx.close()
        good.close()


def test_config_wires_tls_with_the_pinned_ca(tmp_path: Path, ca: tuple[trustme.CA, Path]) -> None:
    authority, ca_file = ca
    rx = TlsSyslogReceiver(authority, ("127.0.0.1",), tmp_path / "rx")
    tls = make_tls(tmp_path / "tls")
    try:
        cfg_path, _ = write_agent_config(
            tmp_path / "agent", tls, "https://localhost:1", ["00" * 32],
            deploymentMode="reseller", resellerId="msp-1",
            syslogTarget=f"tls://127.0.0.1:{rx.port}", syslogCaFile=str(ca_file),
        )
        sinks = build_integrations(load(cfg_path), initial_wait=0.01, max_wait=0.05)
        assert [s.name for s in sinks] == ["syslog"]
        sinks[0].submit(summary(7))
        wait_for(lambda: len(rx.messages) == 1, 20, "the configured sink's frame")
        for s in sinks:
            s.close()
    finally:
        rx.close()


def test_unreadable_ca_file_is_a_clear_start_up_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    for path in (bad, tmp_path / "missing.pem"):
        with pytest.raises(IntegrationError, match="syslogCaFile") as err:
            SyslogSender("tls://127.0.0.1:6514", ca_file=path)
        assert not err.value.retryable
    with pytest.raises(IntegrationError, match="needs syslogCaFile"):
        SyslogSender("tls://127.0.0.1:6514")
