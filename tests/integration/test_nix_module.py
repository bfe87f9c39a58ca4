"""The NixOS module, evaluated for real by nix-instantiate against the stub lib.

No nixpkgs is available offline, so nix/eval/eval.nix evaluates nix/module.nix
with nix/eval/stub-lib.nix (a small module-system evaluator). What is checked
is the module's own logic: the option list agrees with `specs.config.AgentConfig`
(names, defaults, descriptions), every assertion fires for a config that
breaks it and stays quiet for the examples, and the generated JSON config is
exactly what the agent parses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from specs.config import AgentConfig, option_names, parse_config
from tests.harness.require import require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EVAL_NIX = REPO / "nix" / "eval" / "eval.nix"
KEY = "ab" * 32
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".pytest_cache",
             ".nixpkgs-emulation"}

BASE: dict[str, Any] = {
    "enable": True,
    "siteId": "clinic-1",
    "baselinePath": "/etc/compliance-agent/baseline.json",
    "clientCertFile": "/run/secrets/compliance-agent/client.crt",
    "clientKeyFile": "/run/secrets/compliance-agent/client.key",
    "signingKeyFile": "/run/secrets/compliance-agent/signing.key",
    "caCertFile": "/etc/compliance-agent/ca.pem",
    "mcpPublicKeys": [KEY],
    "deploymentMode": "direct",
}

# Options whose module default deliberately differs from AgentConfig's, and why.
MODULE_DEFAULTS = {
    "hostId": "testhost",  # config.networking.hostName (AgentConfig: the running hostname)
    "actuatorSocket": "/run/compliance-agent/actuator.sock",  # the module runs the actuator
}
# Options AgentConfig requires: the module declares them null/empty + an assertion.
REQUIRED: dict[str, Any] = {
    "siteId": None, "baselinePath": None, "clientCertFile": None, "clientKeyFile": None,
    "signingKeyFile": None, "caCertFile": None, "mcpPublicKeys": [],
}


def to_nix(value: Any) -> str:
    """A Python value as a Nix expression (strings escaped; None is null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[ " + " ".join(to_nix(v) for v in value) + " ]"
    if isinstance(value, dict):
        return "{ " + " ".join(f'"{k}" = {to_nix(v)};' for k, v in value.items()) + " }"
    raise TypeError(f"cannot express {value!r} in Nix")


def nix_eval(configuration: str, *, check: bool = True) -> Any:
    """Evaluate the module with `configuration` (a Nix module expression) via the stub lib."""
    nix = require_tool("nix-instantiate")
    proc = subprocess.run(
        [nix, "--eval", "--strict", "--json", "--readonly-mode", str(EVAL_NIX),
         "--arg", "configuration", configuration],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "NIX_PATH": ""},
    )
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def module_with(options: dict[str, Any], extra: str = "") -> str:
    body = to_nix(options)
    return "{ config, lib, ... }: { services.compliance-agent = " + body + "; " + extra + " }"


def evaluate(
    over: dict[str, Any] | None = None, drop: tuple[str, ...] = (), extra: str = ""
) -> Any:
    options = {k: v for k, v in {**BASE, **(over or {})}.items() if k not in drop}
    return nix_eval(module_with(options, extra))


@pytest.fixture(scope="module")
def base_eval() -> Any:
    return evaluate()


def test_every_nix_file_parses() -> None:
    nix = require_tool("nix-instantiate")
    files = [
        p for p in REPO.rglob("*.nix")
        if not any(part in SKIP_DIRS for part in p.relative_to(REPO).parts)
    ]
    assert REPO / "flake.nix" in files and REPO / "nix" / "module.nix" in files
    for f in files:
        proc = subprocess.run([nix, "--parse", str(f)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{f.relative_to(REPO)}: {proc.stderr}"


def _agent_defaults() -> dict[str, Any]:
    """AgentConfig's defaults, JSON-shaped like the module's, for the non-required options."""
    required = {k: v for k, v in BASE.items() if k in REQUIRED}
    # The default mode (reseller) needs a resellerId to validate; its own default is null.
    dumped = parse_config({**required, "resellerId": "x"}).model_dump(mode="json", by_alias=True)
    dumped["resellerId"] = AgentConfig.model_fields["reseller_id"].default
    return {k: v for k, v in dumped.items() if k not in REQUIRED}


def test_every_agent_option_is_declared_with_the_models_default(base_eval: Any) -> None:
    declared = base_eval["options"]
    missing = [n for n in option_names() if n not in declared]
    assert not missing, f"AgentConfig options the module does not declare: {missing}"
    defaults = _agent_defaults()
    for name in option_names():
        opt = declared[name]
        assert opt["hasDescription"], f"{name} has no description"
        # required ones default to null/[] and have an assertion
        assert opt["hasDefault"], f"{name} has no default"
        if name in REQUIRED:
            assert opt["default"] == REQUIRED[name], name
        elif name in MODULE_DEFAULTS:
            assert opt["default"] == MODULE_DEFAULTS[name], name
        else:
            assert opt["default"] == defaults[name], (
                f"{name}: module default {opt['default']!r} != AgentConfig {defaults[name]!r}"
            )
    extra = set(declared) - set(option_names())
    assert {"package"} <= extra
    assert all(declared[n]["hasDescription"] for n in extra)


def test_generated_config_has_exactly_the_agents_keys_and_parses(base_eval: Any) -> None:
    assert base_eval["failedAssertions"] == []
    data = json.loads(base_eval["configText"])
    assert list(data) == sorted(option_names()) or set(data) == set(option_names())
    assert set(data) == set(option_names())
    cfg = parse_config(data)
    assert isinstance(cfg, AgentConfig)
    assert cfg.enable and cfg.site_id == "clinic-1" and cfg.host_id == "testhost"
    assert str(cfg.actuator_socket) == "/run/compliance-agent/actuator.sock"
    assert data["resellerId"] is None and data["metricsTextfile"] is None


def test_hostid_defaults_to_the_hostname() -> None:
    out = nix_eval(
        module_with(BASE, 'networking.hostName = "reception-pc";')
    )
    assert json.loads(out["configText"])["hostId"] == "reception-pc"


BREAKERS: list[tuple[dict[str, Any], tuple[str, ...], str]] = [
    ({}, ("siteId",), "siteId is not set"),
    ({}, ("baselinePath",), "baselinePath is not set"),
    ({}, ("caCertFile",), "caCertFile is not set"),
    ({}, ("signingKeyFile",), "signingKeyFile is not set"),
    ({"maintenanceWindow": "25:00-01:00"}, (), "maintenanceWindow"),
    ({"maintenanceWindow": "02:00-02:00"}, (), "non-empty UTC window"),
    ({"deploymentMode": "reseller"}, (), "resellerId is required"),
    ({"deploymentMode": "reseller", "resellerId": ""}, (), "resellerId is required"),
    ({"mcpUrl": "https://cp.example.net"}, (), "not in allowedHosts"),
    ({"mcpUrl": "http://mcp.local"}, (), "must be an https:// URL"),
    ({"mcpPublicKeys": []}, (), "at least one trusted"),
    ({"clientKeyFile": "/nix/store/" + "a" * 32 + "-client.key"}, (), "outside /nix/store"),
    ({"signingKeyFile": "keys/signing.key"}, (), "absolute path outside /nix/store"),
    ({"webhookSecretFile": "/nix/store/x-secret"}, (), "webhookSecretFile"),
    ({"rmmWebhookUrl": "https://rmm.example.net/hook"}, (), "needs webhookSecretFile"),
    ({"syslogTarget": "siem:514"}, (), "syslogTarget"),
    ({"syslogTarget": "tcp://siem.example.net:514", "egressAllowConfiguredHosts": False}, (),
     "would drop syslog"),
    ({"stateDirectory": "/srv/agent"}, (), "under /var/lib/"),
]


@pytest.mark.parametrize(("over", "drop", "fragment"), BREAKERS)
def test_each_assertion_fires_with_an_actionable_message(
    over: dict[str, Any], drop: tuple[str, ...], fragment: str
) -> None:
    failed = evaluate(over, drop)["failedAssertions"]
    assert any(fragment in m for m in failed), failed
    assert all(m.startswith("services.compliance-agent.") for m in failed), failed


def test_assertions_pass_for_valid_variants() -> None:
    ok = evaluate({
        "egressAllowConfiguredHosts": False,
        "deploymentMode": "reseller", "resellerId": "msp-7",
        "mcpUrl": "https://cp.example.net:8443/base",
        "allowedHosts": ["cp.example.net", "siem.example.net"],
        "maintenanceWindow": "22:00-02:00", "syslogTarget": "tcp://siem.example.net:514",
        "rmmWebhookUrl": "https://rmm.example.net/h", "webhookSecretFile": "/run/secrets/hmac",
    })
    assert ok["failedAssertions"] == []
    parse_config(json.loads(ok["configText"]))
    rules = ok["egressRuleset"]
    assert "\t\ttcp dport { 443 } ip daddr @allowed_v4 accept\n" in rules
    # hosts the configuration needs but allowedHosts lacks: warned, not allowed
    assert any("binary cache https://cache.nixos.org/" in w and "cache.nixos.org" in w
               for w in ok["warnings"]), ok["warnings"]
    assert "cache.nixos.org" not in json.loads(ok["configText"])["allowedHosts"]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"workers": 17}, "workers"),
        ({"pollInterval": 0}, "pollInterval"),
        ({"deploymentMode": "cloud"}, "deploymentMode"),
        ({"mcpPublicKeys": ["nothex"]}, "mcpPublicKeys"),
        ({"egressTable": "bad-name"}, "egressTable"),
        ({"logLevel": "TRACE"}, "logLevel"),
    ],
)
def test_option_types_reject_bad_values(over: dict[str, Any], message: str) -> None:
    options = {**BASE, **over}
    proc = nix_eval(module_with(options), check=False)
    assert proc.returncode != 0
    assert f"services.compliance-agent.{message}" in proc.stderr


def test_disabled_module_defines_nothing() -> None:
    out = nix_eval(module_with({"enable": False}))
    assert out["systemd"]["services"] == {} and out["failedAssertions"] == []
    assert out["configText"] is None


@pytest.mark.parametrize("example", ["direct-config.nix", "reseller-config.nix"])
def test_examples_evaluate_without_failed_assertions(example: str) -> None:
    out = nix_eval(f"import {REPO / 'examples' / example}")
    assert out["failedAssertions"] == []
    cfg = parse_config(json.loads(out["configText"]))
    for secret in (cfg.client_key_file, cfg.signing_key_file, cfg.client_cert_file):
        assert str(secret).startswith("/run/secrets/"), secret
    secrets = out["sopsSecrets"]
    for name, spec in secrets.items():
        assert spec["owner"] == "compliance-agent", name
        assert spec["mode"] == "0400", name
    if example.startswith("reseller"):
        assert cfg.deployment_mode == "reseller" and cfg.reseller_id
    else:
        assert cfg.deployment_mode == "direct"


def test_egress_table_matches_the_shipped_example(base_eval: Any) -> None:
    ruleset = base_eval["egressRuleset"]
    nft = base_eval["nftables"]
    assert nft["enable"] is True
    # our own table, no global ruleset (which would turn flushRuleset on in NixOS)
    assert set(nft["tables"]) == {"compliance_egress"}
    assert nft["ruleset"] == "" and nft["flushRuleset"] is False
    assert nft["tables"]["compliance_egress"]["family"] == "inet"
    assert ruleset == (REPO / "examples" / "egress-table.nft").read_text()
    for needle in (
        "table inet compliance_egress {",
        "set allowed_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval",
        "set allowed_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval",
        "type filter hook output priority 0; policy drop;",
        "tcp dport { 443 } ip daddr @allowed_v4 accept",
        "tcp dport { 443 } ip6 daddr @allowed_v6 accept",
        "udp dport 123 accept",
    ):
        assert needle in ruleset, needle


def test_dns_is_confined_to_known_resolvers() -> None:
    out = evaluate({"dnsResolvers": ["192.0.2.53", "2001:db8::53"], "egressTable": "egress_x"})
    rs = out["egressRuleset"]
    assert "table inet egress_x {" in rs
    assert "ip daddr { 192.0.2.53 } udp dport 53 accept" in rs
    assert "ip6 daddr { 2001:db8::53 } tcp dport 53 accept" in rs
    assert "\t\tudp dport 53 accept" not in rs


def test_timers_and_time_sync(base_eval: Any) -> None:
    timers = base_eval["systemd"]["timers"]
    assert timers["compliance-agent-egress-refresh"]["timerConfig"]["OnCalendar"] == "hourly"
    assert timers["compliance-agent-evidence-prune"]["timerConfig"]["OnCalendar"] == "daily"
    services = base_eval["systemd"]["services"]
    assert re.search(r"/bin/compliance-agent egress refresh --config /nix/store/\S+\.json$",
                     services["compliance-agent-egress-refresh"]["serviceConfig"]["ExecStart"])
    assert re.search(r"/bin/compliance-agent evidence prune --config ",
                     services["compliance-agent-evidence-prune"]["serviceConfig"]["ExecStart"])
    assert base_eval["timesyncd"] is True
    chrony = evaluate(extra="services.chrony.enable = true; services.timesyncd.enable = false;")
    assert chrony["timesyncd"] is False


def test_node_exporter_textfile_is_wired_when_enabled() -> None:
    # node_exporter's textfile collector is on by default: no enabledCollectors needed
    out = evaluate(extra="services.prometheus.exporters.node.enable = true;")
    data = json.loads(out["configText"])
    assert data["metricsTextfile"] == "/var/lib/prometheus-node-exporter-text/compliance_agent.prom"
    assert "--collector.textfile.directory=/var/lib/prometheus-node-exporter-text" in out[
        "nodeExporterFlags"]
    rw = out["systemd"]["services"]["compliance-agent"]["serviceConfig"]["ReadWritePaths"]
    assert rw == ["-/var/lib/prometheus-node-exporter-text"]


def test_privilege_separation_layout(base_eval: Any) -> None:
    services = base_eval["systemd"]["services"]
    agent = services["compliance-agent"]["serviceConfig"]
    assert agent["User"] == agent["Group"] == "compliance-agent"
    assert agent["Type"] == "notify" and agent["NotifyAccess"] == "main"
    assert agent["CapabilityBoundingSet"] == "" and agent["AmbientCapabilities"] == ""
    assert agent["StateDirectoryMode"] == "0700" and agent["UMask"] == "0077"
    assert agent["RuntimeDirectory"] == "compliance-agent"
    assert re.fullmatch(r"/nix/store/\S+/bin/compliance-agent run --config /nix/store/\S+\.json",
                        agent["ExecStart"])
    actuator = services["compliance-agent-actuator"]["serviceConfig"]
    assert "User" not in actuator  # root
    assert " actuator --config " in actuator["ExecStart"]
    socket = base_eval["systemd"]["sockets"]["compliance-agent-actuator"]
    assert socket["listenStreams"] == ["/run/compliance-agent/actuator.sock"]
    assert socket["socketConfig"]["SocketMode"] == "0660"
    assert socket["socketConfig"]["SocketGroup"] == "compliance-agent"
    assert base_eval["users"]["users"]["compliance-agent"]["isSystemUser"] is True


def test_stub_evaluator_follows_module_system_priorities() -> None:
    """mkDefault < plain < mkForce; mkIf false contributes nothing; plain conflicts fail."""
    base = module_with(BASE)
    merged = nix_eval(
        "{ imports = [ (" + base + ") "
        "({ lib, ... }: { services.compliance-agent.pollInterval = lib.mkDefault 30; }) "
        "({ lib, ... }: { services.compliance-agent.pollInterval = 45; "
        "  services.compliance-agent.workers = lib.mkIf false 9; }) "
        "({ lib, ... }: { services.compliance-agent.orderTtl = lib.mkForce 120; }) "
        "({ lib, ... }: { services.compliance-agent.orderTtl = 600; }) ]; }"
    )
    data = json.loads(merged["configText"])
    assert (data["pollInterval"], data["workers"], data["orderTtl"]) == (45, 2, 120)
    conflict = nix_eval(
        "{ imports = [ (" + base + ") "
        "{ services.compliance-agent.policyVersion = \"a\"; } "
        "{ services.compliance-agent.policyVersion = \"b\"; } ]; }",
        check=False,
    )
    assert conflict.returncode != 0 and "conflicting definition values" in conflict.stderr


def test_flake_outputs_have_the_promised_shape(tmp_path: Path) -> None:
    """flake.nix's outputs, called with a stub nixpkgs: names only, nothing built."""
    nix = require_tool("nix-instantiate")
    expr = tmp_path / "flake-shape.nix"
    expr.write_text(f"""
      let
        flake = import {REPO / "flake.nix"};
        lib = import {REPO / "nix" / "eval" / "stub-lib.nix"};
        nixpkgs = {{ inherit lib; legacyPackages = {{ x86_64-linux = {{ }}; aarch64-linux = {{ }}; }}; }};
        self = flake.outputs {{ inherit self nixpkgs; }} // {{ outPath = "{REPO}"; }};
        names = builtins.mapAttrs (_: builtins.attrNames);
      in {{
        packages = names self.packages;
        checks = names self.checks;
        devShells = names self.devShells;
        apps = builtins.mapAttrs (_: builtins.mapAttrs (_: a: a.type)) self.apps;
        formatter = builtins.attrNames self.formatter;
        nixosModules = builtins.attrNames self.nixosModules;
      }}
    """)
    proc = subprocess.run([nix, "--eval", "--strict", "--json", str(expr)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    systems = ["aarch64-linux", "x86_64-linux"]
    assert sorted(out["packages"]) == systems and out["formatter"] == systems
    for system in systems:
        assert set(out["packages"][system]) == {"compliance-agent", "default"}
        assert {"package", "module-eval-stub", "vm"} <= set(out["checks"][system])
        assert out["devShells"][system] == ["default"]
        assert out["apps"][system]["demo"] == "app"
    assert set(out["nixosModules"]) == {"compliance-agent", "default"}


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


# --- NixOS's option types in the stub (nix/eval/nixos-options.nix) ---------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # a unit name where NixOS wants a list of unit names
        ('systemd.services.compliance-agent.wantedBy = "multi-user.target";',
         "systemd.services.compliance-agent.wantedBy' is not of type"),
        # not a unit name at all
        ('systemd.services.compliance-agent.after = [ "network online" ];',
         "systemd.services.compliance-agent.after' is not of type"),
        # a typo: systemd units are submodules without freeform attributes
        ("systemd.services.compliance-agent.serviceConfg = { };",
         "systemd.services.compliance-agent.serviceConfg' does not exist"),
        # serviceConfig.Type is checked like NixOS's checkService
        ('systemd.services.compliance-agent.serviceConfig.Type = "notifyy";',
         "systemd.services.compliance-agent.serviceConfig' is not of type"),
        # a list and a string for one unit option (the mistake of merging into
        # NixOS's ExecStartPost of nftables.service)
        ('systemd.services.compliance-agent.serviceConfig.SupplementaryGroups = "wheel";',
         "should be either all lists, representing repeatable options, or all non-lists"),
        ('networking.nftables.tables.compliance_egress.family = "inet4";',
         "networking.nftables.tables.compliance_egress.family' is not of type"),
        ("users.users.compliance-agent.isSystemUser = 1;",
         "users.users.compliance-agent.isSystemUser' is not of type"),
        ('users.users.compliance-agent.home = "var/lib/x";',
         "users.users.compliance-agent.home' is not of type"),
        ('environment.systemPackages = [ "compliance-agent" ];',
         "environment.systemPackages' is not of type"),
    ],
)
def test_nixos_option_types_reject_what_nixos_rejects(extra: str, message: str) -> None:
    proc = nix_eval(module_with(BASE, extra), check=False)
    assert proc.returncode != 0, "evaluated, but NixOS would reject it"
    assert message in proc.stderr, proc.stderr[-2000:]


def test_unit_option_lists_merge_in_mkBefore_mkAfter_order() -> None:
    """NixOS's nftables.service: ExecReload a list, ExecStartPost a string; ours wrap the list."""
    nixos_nftables = (
        "systemd.services.nftables.serviceConfig = { Type = \"oneshot\"; "
        'ExecReload = [ "/ensure" "/rules" "/save-deletions" ]; ExecStartPost = "/save-deletions"; };'
    )
    out = evaluate(extra=nixos_nftables)
    svc = out["nftablesService"]["serviceConfig"]
    assert svc["ExecStartPost"] == "/save-deletions"
    reload = svc["ExecReload"]
    assert reload[1:4] == ["/ensure", "/rules", "/save-deletions"], reload
    assert "egress-sets.sh save" in reload[0] and "egress-sets.sh restore" in reload[4]
    assert reload[5].endswith("start --no-block compliance-agent-egress-refresh.service")


def test_submodule_defaults_are_nixos_defaults(base_eval: Any) -> None:
    agent = base_eval["systemd"]["services"]["compliance-agent"]
    assert agent["enable"] is True and agent["restartIfChanged"] is True
    assert agent["script"] == "" and agent["documentation"] == []
    user = base_eval["users"]["users"]["compliance-agent"]
    assert user["name"] == "compliance-agent" and user["group"] == "compliance-agent"
    table = base_eval["nftables"]["tables"]["compliance_egress"]
    assert table["name"] == "compliance_egress" and table["enable"] is True


# --- sops-nix's option semantics (nix/tests/sops-stub.nix) -----------------------------------

SOPS_SECRET = 'sops.secrets."compliance-agent/client.key" = { owner = "compliance-agent"; };'


def test_sops_string_default_file_is_rejected_like_sops_nix() -> None:
    out = evaluate(extra=SOPS_SECRET + ' sops.defaultSopsFile = "/etc/nixos/secrets.yaml"; '
                   'sops.age.keyFile = "/var/lib/sops-nix/key.txt";')
    assert any("'/etc/nixos/secrets.yaml' is not in the Nix store" in m
               for m in out["failedAssertions"]), out["failedAssertions"]


def test_sops_needs_a_key_source() -> None:
    example = REPO / "examples" / "secrets" / "compliance-agent.yaml"
    out = evaluate(extra=SOPS_SECRET + f" sops.defaultSopsFile = {example};")
    assert any(m.startswith("No key source configured for sops") for m in out["failedAssertions"])
    ok = evaluate(extra=SOPS_SECRET + f" sops.defaultSopsFile = {example}; "
                  'sops.age.keyFile = "/var/lib/sops-nix/key.txt";')
    assert ok["failedAssertions"] == []
    key = ok["sopsSecrets"]["compliance-agent/client.key"]
    assert key["path"] == "/run/secrets/compliance-agent/client.key" and key["mode"] == "0400"


def test_sops_key_file_must_not_be_in_the_store() -> None:
    example = REPO / "examples" / "secrets" / "compliance-agent.yaml"
    proc = nix_eval(module_with(BASE, SOPS_SECRET + f" sops.defaultSopsFile = {example}; "
                                'sops.age.keyFile = "/nix/store/abc-key.txt";'), check=False)
    assert proc.returncode != 0 and "sops.age.keyFile' is not of type" in proc.stderr
