"""The module's syslogTarget/syslogCaFile assertions (syslog over TLS) and the
config it writes, evaluated like the rest of tests/integration/test_nix_module.py."""

from __future__ import annotations

import json

import pytest

from specs.config import parse_config
from tests.integration.test_nix_module import evaluate

pytestmark = pytest.mark.integration


def test_tls_syslog_target_with_ca_evaluates_and_parses() -> None:
    ok = evaluate({
        "deploymentMode": "reseller", "resellerId": "msp-7",
        "syslogTarget": "tls://siem.example.net:6514",
        "syslogCaFile": "/run/secrets/compliance-agent/syslog-ca.pem",
    })
    assert ok["failedAssertions"] == []
    cfg = parse_config(json.loads(ok["configText"]))
    assert cfg.syslog_target == "tls://siem.example.net:6514"
    assert str(cfg.syslog_ca_file) == "/run/secrets/compliance-agent/syslog-ca.pem"


@pytest.mark.parametrize(("over", "fragment"), [
    ({"syslogTarget": "tls://siem.example.net:6514"}, "set syslogCaFile"),
    ({"syslogTarget": "tcp://siem.example.net:514", "syslogCaFile": "/etc/ca.pem"},
     "only used with a tls://"),
    ({"syslogTarget": "ssl://siem.example.net:6514"}, "\"tls://host:6514\""),
])
def test_syslog_assertions(over: dict[str, object], fragment: str) -> None:
    failed = evaluate(over)["failedAssertions"]
    assert any(fragment in m for m in failed), failed
