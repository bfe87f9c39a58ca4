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


def test_direct_example_declares_the_backup_password_root_only_and_ships_restic() -> None:
    from tests.integration.test_nix_module import REPO, nix_eval

    out = nix_eval(f"import {REPO / 'examples' / 'direct-config.nix'}")
    assert out["failedAssertions"] == []
    baseline = json.loads((REPO / "examples" / "clinic-baseline.json").read_text())
    by_path = {s["path"]: s for s in out["sopsSecrets"].values()}
    for job in baseline["backup"]["jobs"]:
        secret = by_path[job["password_file"]]  # declared, at the path the baseline names
        assert (secret["owner"], secret["group"], secret["mode"]) == ("root", "root", "0400")
    # the actuator, which runs the backup reads as root, has restic on its PATH
    path = out["systemd"]["services"]["compliance-agent-actuator"]["path"]
    assert any(str(p).endswith("-restic-0.18.0") for p in path), path
