"""The assembled service against real parts: nftables in a network namespace,
the demo control plane over mutual TLS on 127.0.0.1, SQLite, signed evidence.

Covers the paths only the wiring can show: an admitted order becomes a
trigger that the next pass acts on; refused orders change nothing and are
evidence; evidence written during an outage is queued and delivered once, in
an unbroken chain, when the control plane is back.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from controllers.firewall import FirewallController
from demo.control_plane.app import build_summary
from demo.control_plane.dsse import sign
from reconciler.actuator.local import LocalActuator
from reconciler.actuator.nft_sandbox import script_argv
from reconciler.service import build_service
from reconciler.trust.keys import generate_key_file
from specs.config import parse_config
from specs.status import Outcome
from tests.harness.netns import NetNamespace
from tests.support.control_plane import ControlPlaneThread, wait_for
from tests.support.tls import make_tls

pytestmark = pytest.mark.integration
ORDER_TYPE = "application/vnd.compliance-agent.order+json"
RULESET = """flush ruleset
table inet filter {
  chain input { type filter hook input priority 0; policy drop; iif lo accept; }
}
"""


def order(
    key: SigningKey, action: str, params: dict[str, Any], host: str = "host-1",
    nonce: str | None = None,
) -> dict[str, Any]:
    body = json.dumps({
        "order_id": f"ord-{secrets.token_hex(4)}", "site_id": "clinic-1", "host_id": host,
        "nonce": nonce or secrets.token_hex(16),
        "issued_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ttl_seconds": 600, "action": action, "params": params,
    }).encode()
    return sign(key, body, ORDER_TYPE)


def test_orders_evidence_and_outage_through_the_real_service(
    netns: NetNamespace, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path / "tls")
    signer = generate_key_file(tmp_path / "signing.key")
    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text(RULESET)
    netns.run(["nft", "-f", str(ruleset)])
    (tmp_path / "baseline.json").write_text(json.dumps({
        "version": 1, "policy_version": "1.0",
        "firewall": {"ruleset_path": str(ruleset),
                     "ruleset_sha256": hashlib.sha256(RULESET.encode()).hexdigest()},
    }))
    cp_key = SigningKey.generate()
    with ControlPlaneThread(tls, tmp_path / "cp.db", [signer.public_key_hex],
                            signing_key=cp_key) as cp:
        cfg = parse_config({
            "siteId": "clinic-1", "hostId": "host-1", "deploymentMode": "direct",
            "baselinePath": str(tmp_path / "baseline.json"),
            "clientCertFile": str(tls.client_cert), "clientKeyFile": str(tls.client_key),
            "signingKeyFile": str(tmp_path / "signing.key"), "caCertFile": str(tls.ca_cert),
            "mcpPublicKeys": [bytes(cp_key.verify_key).hex()],
            "mcpUrl": cp.url(), "allowedHosts": ["localhost"],
            "stateDirectory": str(tmp_path / "state"), "statusSocket": None,
        })
        svc = build_service(cfg, host=netns, actuator=LocalActuator(netns),
                            controllers={"firewall": FirewallController(sandbox_argv=script_argv())})
        loop = svc.control_plane
        assert loop is not None
        try:
            first = svc.agent.run_pass()
            assert first.all_ready
            loop.deliver_once()
            assert svc.outbox.stats().depth == 0

            # drift + a valid restore_firewall order + a foreign-host order
            netns.run(["nft", "add", "rule", "inet", "filter", "input", "tcp", "dport", "8080",
                       "accept"])
            good = order(cp_key, "restore_firewall", {})
            foreign = order(cp_key, "restore_firewall", {}, host="front-desk-9")
            forged = order(SigningKey.generate(), "restore_firewall", {})
            for env in (good, foreign, forged):
                cp.storage.add_order("clinic-1", "host-1", env)
            loop.poll_once()
            cp.storage.add_order("clinic-1", "host-1", good)  # served again: not an attack
            nonce = json.loads(_payload(json.dumps(good)))["nonce"]
            replay = order(cp_key, "restore_firewall", {}, nonce=nonce)  # another order, same nonce
            cp.storage.add_order("clinic-1", "host-1", replay)
            loop.poll_once()
            reasons = [v.reason for v in loop.recent_verdicts]
            assert reasons == ["Admitted", "WrongHost", "UnknownKey", "AlreadyAdmitted",
                               "Replayed"]
            triggers = svc.triggers.active(datetime.now(UTC))
            assert [t.action for t in triggers["firewall"]] == ["restore_firewall"]

            second = svc.agent.run_pass()
            fw = second.results[0]
            assert [a.action.type for a in fw.results] == ["ApplyNftRuleset"]
            assert fw.outcome is Outcome.success

            # outage: bundles queue durably, nothing lost
            cp.set_outage(True)
            svc.recorder.request_snapshot()
            svc.agent.run_pass()
            loop.deliver_once()
            queued = svc.outbox.stats().depth
            assert queued >= 1
            cp.set_outage(False)
            # One failed round: the queue's backoff is at most its base (1 s).
            wait_for(lambda: (loop.deliver_once(), svc.outbox.stats().depth == 0)[1], 10,
                     "the queue to drain after the outage")
            stats = svc.outbox.stats()
            assert stats.depth == 0 and stats.dead == 0

            summary = build_summary(cp.storage)
            assert summary["chain_intact"] is True and summary["gaps"] == 0
            assert summary["bundles_stored"] == stats.delivered
            checks = {json.loads(_payload(e.envelope))["predicate"]["check"]
                      for e in cp.storage.evidence()}
            assert {"firewall", "order"} <= checks
        finally:
            svc.close()
            if loop is not None:
                loop.client.close()


def _payload(envelope: bytes | str) -> bytes:
    import base64

    env = json.loads(envelope)
    return base64.b64decode(env["payload"])
