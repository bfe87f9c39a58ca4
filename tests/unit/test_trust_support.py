"""Shared helpers for the trust/orders/evidence tests (no tests here).

Named test_trust_* only because that is the file pattern this area owns.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from reconciler.trust.dsse import Signer, envelope_bytes
from specs.orders import ORDER_PAYLOAD_TYPE, format_rfc3339

SITE = "clinic-1"
HOST = "host-1"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

# Fixed seeds so failures reproduce; never real keys.
MCP_SIGNER = Signer(SigningKey(bytes.fromhex("11" * 32)))
AGENT_SIGNER = Signer(SigningKey(bytes.fromhex("22" * 32)))
OTHER_SIGNER = Signer(SigningKey(bytes.fromhex("33" * 32)))


def order_payload(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": "ord-1",
        "site_id": SITE,
        "host_id": HOST,
        "nonce": secrets.token_hex(16),
        "issued_at": format_rfc3339(T0),
        "ttl_seconds": 600,
        "action": "run_backup",
        "params": {"job": "daily"},
    }
    body.update(overrides)
    return body


def sign_order(payload: dict[str, Any] | bytes, signer: Signer = MCP_SIGNER) -> bytes:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return envelope_bytes(signer.sign_envelope(raw, ORDER_PAYLOAD_TYPE))


def write_config(tmp_path: Path, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "siteId": SITE,
        "hostId": HOST,
        "baselinePath": str(tmp_path / "baseline.json"),
        "clientCertFile": str(tmp_path / "client.pem"),
        "clientKeyFile": str(tmp_path / "client.key"),
        "signingKeyFile": str(tmp_path / "signing.key"),
        "caCertFile": str(tmp_path / "ca.pem"),
        "mcpPublicKeys": [MCP_SIGNER.public_key_hex],
        "deploymentMode": "direct",
        "stateDirectory": str(tmp_path / "state"),
        "statusSocket": None,
        "orderTtl": 900,
        "ntpMaxSkewMs": 5000,
    }
    data.update(overrides)
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(data))
    return path


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)
