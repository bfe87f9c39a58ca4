"""A real nats-server (TLS, client certificates, JetStream) beside the demo
control plane and an agent service wired for order wake-ups."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from demo.control_plane.dsse import ORDER_TYPE, sign
from demo.control_plane.fanout import FanOut, client_tls
from demo.natsd import NatsServer
from reconciler.delivery.loop import ControlPlaneLoop
from reconciler.delivery.wakeup import WakeupWatcher
from reconciler.service import Service, build_service
from reconciler.trust.keys import generate_key_file
from specs.config import AgentConfig, parse_config
from tests.harness.require import require_tool
from tests.support.control_plane import ControlPlaneThread
from tests.support.tls import TlsFiles, make_tls

SITE, HOST = "clinic-1", "host-a"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def signed_order(key: SigningKey, action: str = "reconcile_now") -> dict[str, Any]:
    body = json.dumps({
        "order_id": f"ord-{secrets.token_hex(4)}", "site_id": SITE, "host_id": HOST,
        "nonce": secrets.token_hex(16),
        "issued_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ttl_seconds": 600, "action": action, "params": {},
    }).encode()
    return sign(key, body, ORDER_TYPE)


def start_nats(workdir: Path, tls: TlsFiles) -> NatsServer:
    binary = require_tool("nats-server")
    return NatsServer(workdir, cert=tls.server_pem, key=tls.server_pem, ca=tls.ca_cert,
                      binary=binary).start()


@dataclass
class WakeupStack:
    tls: TlsFiles
    nats: NatsServer
    cp: ControlPlaneThread
    fanout: FanOut
    cfg: AgentConfig
    svc: Service
    loop: ControlPlaneLoop
    watcher: WakeupWatcher

    def queue_order(self) -> None:
        self.cp.storage.add_order(SITE, HOST, signed_order(self.cp.signing_key))


@contextmanager
def wakeup_stack(tmp: Path, *, poll_interval: int,
                 nats_url: str | None = None) -> Iterator[WakeupStack]:
    """The agent dials `nats_url` if given (a fake server), else the real one."""
    tls = make_tls(tmp / "tls")
    nats = start_nats(tmp / "nats", tls)
    try:
        signer = generate_key_file(tmp / "signing.key")
        (tmp / "baseline.json").write_text(json.dumps({"version": 1, "policy_version": "1.0"}))
        with ControlPlaneThread(tls, tmp / "cp.db", [signer.public_key_hex]) as cp:
            fanout = FanOut(cp.storage, nats.url, client_tls(tls.ca_cert, tls.server_pem, None))
            fanout.start()
            cfg = parse_config({
                "siteId": SITE, "hostId": HOST, "deploymentMode": "direct",
                "baselinePath": str(tmp / "baseline.json"),
                "clientCertFile": str(tls.client_cert), "clientKeyFile": str(tls.client_key),
                "signingKeyFile": str(tmp / "signing.key"), "caCertFile": str(tls.ca_cert),
                "mcpPublicKeys": [bytes(cp.signing_key.verify_key).hex()],
                "mcpUrl": cp.url(), "allowedHosts": ["localhost"],
                "natsUrl": nats_url or nats.url_for("localhost"),
                "pollInterval": poll_interval,
                "stateDirectory": str(tmp / "state"), "statusSocket": None,
            })
            svc = build_service(cfg)
            loop = svc.control_plane
            assert loop is not None
            watcher = svc.wakeups
            assert watcher is not None
            loop.start()
            watcher.start()
            try:
                yield WakeupStack(tls, nats, cp, fanout, cfg, svc, loop, watcher)
            finally:
                watcher.stop()
                loop.stop()
                fanout.stop()
                svc.close()
    finally:
        nats.stop()
