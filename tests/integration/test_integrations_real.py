"""Reseller integrations against real receivers on loopback, end to end with
EvidenceWriter + Outbox + Deliverer + the mTLS demo control plane."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.delivery.client import ControlPlaneClient
from reconciler.delivery.deliverer import Deliverer
from reconciler.delivery.integrations import IntegrationHook, build_integrations
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.store.outbox import Outbox
from reconciler.trust.keys import load_signing_key
from tests.support.agent import load, write_agent_config
from tests.support.control_plane import ControlPlaneThread, wait_for
from tests.support.tls import make_tls

pytestmark = pytest.mark.integration

SECRET = "whsec-" + "q" * 32
RFC5424 = re.compile(
    rb"^<(\d{1,3})>1 (\S+) (\S+) compliance-agent (\d+) EVIDENCE (\[evidence@32473 [^\]]*\]) "
    rb"\xef\xbb\xbf(.*)$", re.S,
)


class Webhook:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests += 1
                if outer.requests == 1:  # first delivery fails: the sink must retry
                    self.send_response(503)
                    self.end_headers()
                    return
                want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(want, self.headers.get("X-Signature-256", "")):
                    outer.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                outer.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpSyslog:
    """Reads RFC 6587 octet-counted frames."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        buf = b""
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b" " in buf:
                    length, rest = buf.split(b" ", 1)
                    n = int(length)
                    if len(rest) < n:
                        break
                    self.messages.append(rest[:n])
                    buf = rest[n:]


def check_syslog(msg: bytes, bundle_ids: set[str]) -> str:
    m = RFC5424.match(msg)
    assert m, msg
    assert m[3] == b"host-a"
    body = json.loads(m[6])
    assert body["bundle_id"] in bundle_ids
    assert f'bundle_id="{body["bundle_id"]}"'.encode() in m[5]
    return str(body["bundle_id"])


def test_reseller_integrations_end_to_end_and_no_secret_leaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tls = make_tls(tmp_path / "tls")
    hook_srv = Webhook()
    tcp = TcpSyslog()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(10)
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    agent_dir = tmp_path / "agent"
    try:
        cfg_path, key = write_agent_config(
            agent_dir, tls, "https://localhost:1", ["00" * 32], deploymentMode="reseller",
            resellerId="msp-1", rmmWebhookUrl=hook_srv.url, webhookSecretFile=str(secret_file),
            syslogTarget=f"tcp://127.0.0.1:{tcp.port}",
        )
        with ControlPlaneThread(tls, tmp_path / "cp.db", [bytes(key.verify_key).hex()]) as cp:
            raw = json.loads(cfg_path.read_text())
            raw["mcpUrl"] = cp.url()
            cfg_path.write_text(json.dumps(raw))
            cfg = load(cfg_path)
            store = open_store(cfg.database_path)
            outbox = Outbox(store)
            sinks = build_integrations(cfg, initial_wait=0.01, max_wait=0.1)
            # a second syslog sink over UDP, same code path
            udp_cfg = cfg.model_copy(
                update={"syslog_target": f"udp://127.0.0.1:{udp.getsockname()[1]}",
                        "rmm_webhook_url": None})
            sinks += build_integrations(udp_cfg)
            hook = IntegrationHook(sinks)
            writer = EvidenceWriter(store, load_signing_key(cfg.signing_key_file),
                                    cfg.evidence_directory, EvidenceIdentity.from_config(cfg),
                                    on_stored=[outbox.on_stored, hook])
            ids = {writer.record(check="firewall", outcome="success") for _ in range(5)}
            ids.add(writer.record(check="services", outcome="failed", error="unit down"))

            with ControlPlaneClient(cfg) as client:
                assert Deliverer(outbox, client).deliver_once().delivered == 6
            wait_for(lambda: len(hook_srv.received) == 6, 20, "6 signed webhook calls")
            assert hook_srv.bad_signatures == 0 and hook_srv.requests == 7  # one retry
            assert {r["bundle_id"] for r in hook_srv.received} == ids
            assert all(r["site"] == "clinic-1" and r["host"] == "host-a"
                       for r in hook_srv.received)
            wait_for(lambda: len(tcp.messages) == 6, 20, "6 syslog frames over TCP")
            assert {check_syslog(m, ids) for m in tcp.messages} == ids
            got = {check_syslog(udp.recv(65536), ids) for _ in range(6)}
            assert got == ids
            hook.close()

            # No secret anywhere: logs, stored envelopes at the receiver, outbox rows.
            secrets = [SECRET, cfg.signing_key_file.read_text().strip(),
                       tls.client_key.read_text().split("\n")[1]]
            logs = caplog.text
            delivered = b"".join(e.envelope for e in cp.storage.evidence())
            import base64
            decoded = b"".join(
                base64.b64decode(json.loads(e.envelope)["payload"])
                for e in cp.storage.evidence()
            )
            for s in secrets:
                assert s and s not in logs
                assert s.encode() not in delivered and s.encode() not in decoded
            assert str(secret_file) not in decoded.decode()  # not even the path in evidence
            writer.close()
            store.close()
    finally:
        hook_srv.close()
        udp.close()
        tcp.sock.close()
