from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main
from specs.config import AgentConfig, ConfigError, load_config, option_names, parse_config
from tests.unit.conftest import TRUSTED_KEY

REQUIRED: dict[str, Any] = {
    "siteId": "clinic-1",
    "baselinePath": "/etc/compliance-agent/baseline.json",
    "clientCertFile": "/run/secrets/client.pem",
    "clientKeyFile": "/run/secrets/client.key",
    "signingKeyFile": "/run/secrets/signing.key",
    "caCertFile": "/etc/compliance-agent/ca.pem",
    "mcpPublicKeys": [TRUSTED_KEY],
    "resellerId": "msp-1",
}

# The seed option table (issue: core reconciler), verbatim defaults.
SEED_DEFAULTS: dict[str, Any] = {
    "enable": False,
    "mcpUrl": "https://mcp.local",
    "allowedHosts": ["mcp.local"],
    "deploymentMode": "reseller",
    "policyVersion": "1.0",
    "pollInterval": 60,
    "orderTtl": 900,
    "maintenanceWindow": "02:00-04:00",
    "allowDisruptiveOutsideWindow": False,
    "evidenceRetention": 200,
    "pruneRetentionDays": 90,
    "ntpMaxSkewMs": 5000,
    "rebuildHealthCheckTimeout": 60,
    "rmmWebhookUrl": None,
    "syslogTarget": None,
    "webhookSecretFile": None,
    "logLevel": "INFO",
}


def test_seed_defaults_exactly() -> None:
    cfg = parse_config(dict(REQUIRED, resellerId="msp-1"))
    dumped = cfg.model_dump(mode="json", by_alias=True)
    for key, value in SEED_DEFAULTS.items():
        assert dumped[key] == value, key
    assert cfg.host_id == socket.gethostname()


def test_every_seed_option_exists() -> None:
    names = set(option_names())
    seed = set(SEED_DEFAULTS) | {"siteId", "hostId", "baselinePath", "clientCertFile",
                                 "clientKeyFile", "signingKeyFile", "resellerId"}
    assert seed <= names


def test_unknown_key_is_rejected_not_ignored() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(dict(REQUIRED, pollIntervall=30))
    assert any(p.startswith("pollIntervall: unknown option") for p in e.value.problems)


def test_snake_case_names_are_not_accepted() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(dict(REQUIRED, poll_interval=30))
    assert "poll_interval" in " ".join(e.value.problems)


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ({"maintenanceWindow": "2-4"}, "maintenanceWindow", "HH:MM-HH:MM"),
        ({"maintenanceWindow": "03:00-03:00"}, "maintenanceWindow", "empty window"),
        ({"pollInterval": 0}, "pollInterval", "greater than 0"),
        ({"mcpUrl": "http://mcp.local"}, "mcpUrl", "https://"),
        ({"mcpPublicKeys": ["xyz"]}, "mcpPublicKeys", "64 hex"),
        ({"mcpPublicKeys": []}, "mcpPublicKeys", "at least 1"),
        ({"logLevel": "TRACE"}, "logLevel", "DEBUG"),
        ({"deploymentMode": "msp"}, "deploymentMode", "reseller"),
        ({"syslogTarget": "syslog.local"}, "syslogTarget", "tcp://"),
    ],
)
def test_field_errors_name_the_key(override: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(dict(REQUIRED, **override))
    line = next(p for p in e.value.problems if p.startswith(key + ":"))
    assert fragment in line


def test_reseller_mode_requires_reseller_id() -> None:
    data = dict(REQUIRED)
    del data["resellerId"]
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert "resellerId is required" in str(e.value)
    assert parse_config(dict(data, deploymentMode="direct")).reseller_id is None


def test_mcp_host_must_be_allowed() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(dict(REQUIRED, mcpUrl="https://cp.example.net"))
    assert "allowedHosts" in str(e.value)
    cfg = parse_config(dict(REQUIRED, mcpUrl="https://cp.example.net",
                            allowedHosts=["cp.example.net"]))
    assert cfg.mcp_url == "https://cp.example.net"


def test_load_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"siteId": "", "bogus": 1, "maintenanceWindow": "x"}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    keys = {p.split(":")[0] for p in e.value.problems}
    assert {"siteId", "bogus", "maintenanceWindow", "baselinePath"} <= keys


def test_load_bad_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_config_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(REQUIRED))
    # valid options, but the key files they name do not exist: the daemon would refuse
    assert main(["config", "check", str(good)]) == 2
    assert "signingKeyFile: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(REQUIRED, orderTTL=5)))
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "orderTTL: unknown option" in err


def test_model_is_frozen() -> None:
    cfg = parse_config(REQUIRED)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        cfg.poll_interval = 5  # type: ignore[misc]
    assert isinstance(cfg, AgentConfig)
