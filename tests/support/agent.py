"""Agent-side fixtures: a config file pointing at a test control plane, keys, bundles."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from specs.config import AgentConfig, load_config
from tests.support.tls import TlsFiles

EVIDENCE_TYPE = "application/vnd.in-toto+json"
MINIMAL_BASELINE = {"version": 1, "policy_version": "1.0"}


def write_agent_config(
    directory: Path,
    tls: TlsFiles,
    mcp_url: str,
    mcp_public_keys: list[str],
    **overrides: Any,
) -> tuple[Path, SigningKey]:
    """Write keys, a local baseline and config.json; returns (config path, evidence key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    seed = directory / "signing.key"
    seed.write_text(bytes(key).hex() + "\n")
    seed.chmod(0o600)
    baseline = directory / "baseline.json"
    if not baseline.exists():
        baseline.write_text(json.dumps(MINIMAL_BASELINE))
    host = mcp_url.split("//", 1)[1].rsplit(":", 1)[0]
    cfg: dict[str, Any] = {
        "siteId": "clinic-1",
        "hostId": "host-a",
        "baselinePath": str(baseline),
        "clientCertFile": str(tls.client_cert),
        "clientKeyFile": str(tls.client_key),
        "signingKeyFile": str(seed),
        "caCertFile": str(tls.ca_cert),
        "mcpPublicKeys": mcp_public_keys,
        "mcpUrl": mcp_url,
        "allowedHosts": [host],
        "deploymentMode": "direct",
        "stateDirectory": str(directory / "state"),
        "statusSocket": None,
    }
    cfg.update(overrides)
    path = directory / "config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path, key


def load(path: Path) -> AgentConfig:
    return load_config(path)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def pae(ptype: str, body: bytes) -> bytes:
    t = ptype.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(body), body)


class ChainedBundles:
    """Minimal evidence maker for transport tests (the real writer is reconciler.evidence.writer)."""

    def __init__(self, key: SigningKey, site_id: str = "clinic-1", host_id: str = "host-a") -> None:
        self.key = key
        self.site_id, self.host_id = site_id, host_id
        self.sequence = 0
        self.prev = "0" * 64
        self.keyid = hashlib.sha256(bytes(key.verify_key)).hexdigest()

    def next(self, **predicate: Any) -> tuple[str, bytes]:
        self.sequence += 1
        bundle_id = str(uuid.uuid4())
        statement = {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": f"host:{self.host_id}", "digest": {"sha256": "0" * 64}}],
            "predicateType": "https://compliance-agent.dev/evidence/v1",
            "predicate": {
                "bundle_id": bundle_id, "site_id": self.site_id, "host_id": self.host_id,
                "sequence": self.sequence, "prev_digest": self.prev, "check": "firewall",
                "outcome": "success", "timestamp_start": "2026-01-01T00:00:00Z",
                **predicate,
            },
        }
        body = canonical(statement)
        sig = self.key.sign(pae(EVIDENCE_TYPE, body)).signature
        env = canonical({
            "payloadType": EVIDENCE_TYPE,
            "payload": base64.b64encode(body).decode(),
            "signatures": [{"keyid": self.keyid, "sig": base64.b64encode(sig).decode()}],
        })
        self.prev = hashlib.sha256(env).hexdigest()
        return bundle_id, env
