"""The module's egress allowlist and neighbours, evaluated by nix-instantiate (stub lib).

What the configuration itself needs (caches, webhook, syslog, backup
repositories and flake target of a Nix-path baseline) is allowed or warned
about; extra ports and local networks; the nftables reload/restart wiring; the
boot ordering of the refresh; NIX_REMOTE for the actuator; the iptables
assertion; the node exporter's textfile directory. The same table under real
nft: test_egress_reload.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_nix_module import BASE, evaluate, module_with, nix_eval

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_eval() -> Any:
    return evaluate()


def test_node_exporter_with_textfile_disabled_is_left_alone() -> None:
    out = evaluate(extra=(
        "services.prometheus.exporters.node.enable = true; "
        'services.prometheus.exporters.node.disabledCollectors = [ "textfile" ];'
    ))
    assert json.loads(out["configText"])["metricsTextfile"] is None
    assert out["nodeExporterFlags"] == []


def test_iptables_only_firewall_options_fail_with_a_clear_message() -> None:
    failed = evaluate(extra='networking.firewall.extraCommands = "iptables -A INPUT -j ACCEPT";')[
        "failedAssertions"]
    assert any("enforceEgress" in m and "extraCommands" in m for m in failed), failed
    off = evaluate({"enforceEgress": False},
                   extra='networking.firewall.extraCommands = "iptables -A INPUT -j ACCEPT";')
    assert off["failedAssertions"] == [] and off["nftables"]["tables"] == {}
    assert off["nftables"]["enable"] is False


def test_configured_hosts_and_ports_are_allowed() -> None:
    out = evaluate(
        {"deploymentMode": "reseller", "resellerId": "msp-7",
         "rmmWebhookUrl": "https://rmm.example.net:8443/h", "webhookSecretFile": "/run/secrets/h",
         "syslogTarget": "udp://siem.example.net:514",
         "egressExtraTcpPorts": [587], "egressLocalNetworks": ["192.168.10.0/24", "fd00:10::/64"],
         "flakeInputHosts": ["github.com"]},
        extra='nix.settings.substituters = [ "https://cache.nixos.org/" "http://cache.lan:5000" ];',
    )
    assert out["failedAssertions"] == [] and out["warnings"] == []
    hosts = json.loads(out["configText"])["allowedHosts"]
    assert hosts == ["mcp.local", "cache.nixos.org", "cache.lan", "rmm.example.net",
                     "siem.example.net", "github.com"]
    rs = out["egressRuleset"]
    assert "tcp dport { 443, 587, 5000, 8443 } ip daddr @allowed_v4 accept" in rs
    assert "udp dport { 514 } ip6 daddr @allowed_v6 accept" in rs
    assert "\t\tip daddr 192.168.10.0/24 accept\n" in rs
    assert "\t\tip6 daddr fd00:10::/64 accept\n" in rs


@pytest.mark.parametrize(
    ("repository", "host", "port"),
    [
        ("sftp:backup@nas.clinic.lan:/srv/restic/ehr", "nas.clinic.lan", 22),
        ("sftp://backup@nas.clinic.lan:2222//srv/x", "nas.clinic.lan", 2222),
        ("rest:https://restic.example.net:8000/clinic", "restic.example.net", 8000),
        ("s3:https://s3.example.net/bucket", "s3.example.net", 443),
        ("ssh://borg@backup.example.net:23/./repo", "backup.example.net", 23),
        ("borg@backup.example.net:repo", "backup.example.net", 22),
    ],
)
def test_backup_repository_hosts_come_from_a_nix_path_baseline(
    tmp_path: Path, repository: str, host: str, port: int
) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"version": 1, "policy_version": "1", "backup": {"jobs": [
        {"name": "j", "tool": "restic", "repository": repository, "password_file": "/run/p",
         "max_snapshot_age": 26}]}}))
    out = nix_eval(module_with({k: v for k, v in BASE.items() if k != "baselinePath"},
                               f"services.compliance-agent.baselinePath = {baseline};"))
    assert host in json.loads(out["configText"])["allowedHosts"]
    assert re.search(rf"tcp dport {{ [0-9, ]*\b{port}\b[0-9, ]* }} ip daddr @allowed_v4", out[
        "egressRuleset"]), out["egressRuleset"]
    assert out["warnings"] == []


def test_unknown_destinations_and_flake_targets_are_warned_about(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({
        "version": 1, "policy_version": "1",
        "patching": {"target": "github:clinic/infra#reception"},
        "backup": {"jobs": [{"name": "b2", "tool": "restic", "repository": "b2:bucket:/x",
                             "password_file": "/run/p", "max_snapshot_age": 26}]}}))
    out = nix_eval(module_with({k: v for k, v in BASE.items() if k != "baselinePath"},
                               f"services.compliance-agent.baselinePath = {baseline};"))
    hosts = json.loads(out["configText"])["allowedHosts"]
    assert {"github.com", "api.github.com", "codeload.github.com"} <= set(hosts)
    warnings = "\n".join(out["warnings"])
    assert "backup repository of job b2 (b2:bucket:/x" in warnings
    assert "flakeInputHosts" in warnings


def test_nftables_reload_keeps_the_sets(base_eval: Any) -> None:
    svc = base_eval["nftablesService"]["serviceConfig"]
    reload = svc["ExecReload"]
    assert re.search(r"egress-sets\.sh save compliance_egress ", reload[0]), reload
    assert re.search(r"egress-sets\.sh restore compliance_egress ", reload[-2]), reload
    assert reload[-1].endswith("systemctl start --no-block compliance-agent-egress-refresh.service")
    assert all(line.startswith("-") for line in reload)
    # NixOS's ExecStartPost is one string: nothing of ours may be merged into it
    assert "ExecStartPost" not in svc
    keep = base_eval["systemd"]["services"]["compliance-agent-egress-keep"]
    assert keep["partOf"] == keep["after"] == keep["wantedBy"] == ["nftables.service"]
    assert re.search(r"egress-sets\.sh restore ", keep["serviceConfig"]["ExecStart"][0])
    assert re.search(r"egress-sets\.sh save ", keep["serviceConfig"]["ExecStop"])


def test_refresh_runs_at_boot_before_the_agent(base_eval: Any) -> None:
    services = base_eval["systemd"]["services"]
    refresh = services["compliance-agent-egress-refresh"]
    assert "multi-user.target" in refresh["wantedBy"]
    assert "network-online.target" in refresh["after"] and "nftables.service" in refresh["after"]
    assert "compliance-agent.service" in refresh["before"]
    assert "compliance-agent-egress-refresh.service" in services["compliance-agent"]["after"]
    timer = base_eval["systemd"]["timers"]["compliance-agent-egress-refresh"]["timerConfig"]
    assert "OnBootSec" not in timer


def test_actuator_runs_nix_through_the_daemon(base_eval: Any) -> None:
    actuator = base_eval["systemd"]["services"]["compliance-agent-actuator"]
    assert actuator["environment"]["NIX_REMOTE"] == "daemon"
