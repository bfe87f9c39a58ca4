from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from specs.config import AgentConfig, parse_config

TRUSTED_KEY = "ab" * 32


def make_config(tmp_path: Path, **overrides: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "siteId": "clinic-1",
        "hostId": "host-1",
        "baselinePath": str(tmp_path / "baseline.json"),
        "clientCertFile": str(tmp_path / "client.pem"),
        "clientKeyFile": str(tmp_path / "client.key"),
        "signingKeyFile": str(tmp_path / "signing.key"),
        "caCertFile": str(tmp_path / "ca.pem"),
        "mcpPublicKeys": [TRUSTED_KEY],
        "resellerId": "msp-1",
        "stateDirectory": str(tmp_path / "state"),
        "statusSocket": None,
    }
    data.update(overrides)
    return parse_config(data)


def write_baseline(tmp_path: Path, body: dict[str, Any]) -> Path:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"version": 1, "policy_version": "1.0", **body}))
    return path


@pytest.fixture
def config_factory(tmp_path: Path) -> Any:
    return lambda **kw: make_config(tmp_path, **kw)
