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
    "actuatorSocket": "/run/compliance-agent-actuator/actuator.sock",  # root-owned dir
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
    assert str(cfg.actuator_socket) == "/run/compliance-agent-actuator/actuator.sock"
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
    ({"natsUrl": "nats://mcp.local:4222"}, (), "natsUrl"),
    ({"natsUrl": "tls://nats.example.net:4222", "egressAllowConfiguredHosts": False}, (),
     "would block order wake-ups"),
    ({"actuatorSocket": "/run/compliance-agent/actuator.sock"}, (), "directory the agent can"),
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
    assert out["configText"] is None and out["etcConfigText"] is None


def test_cli_finds_the_config_in_etc(base_eval: Any) -> None:
    """/etc/compliance-agent/config.json (every command's default) is the units' file."""
    assert base_eval["etcConfigText"] is not None
    assert base_eval["etcConfigText"] == base_eval["configText"]


@pytest.mark.parametrize("example", ["direct-config.nix", "reseller-config.nix"])
def test_examples_evaluate_without_failed_assertions(example: str) -> None:
    out = nix_eval(f"import {REPO / 'examples' / example}")
    assert out["failedAssertions"] == []
    cfg = parse_config(json.loads(out["configText"]))
    for secret in (cfg.client_key_file, cfg.signing_key_file, cfg.client_cert_file):
        assert str(secret).startswith("/run/secrets/"), secret
    secrets = out["sopsSecrets"]
    for name, spec in secrets.items():
        # the agent's own secrets are its; a backup password stays root's (the
        # actuator runs the backup reads), never readable by the agent
        owner = "compliance-agent" if name.startswith("compliance-agent/") else "root"
        assert spec["owner"] == owner, name
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


def test_nats_wakeups_open_their_port_to_the_allowlist_only() -> None:
    out = evaluate({"natsUrl": "tls://nats.example.net:7422",
                    "allowedHosts": ["mcp.local", "nats.example.net"]})
    assert out["failedAssertions"] == []
    assert parse_config(json.loads(out["configText"])).nats_url == "tls://nats.example.net:7422"
    rules = out["egressRuleset"]
    assert "tcp dport { 443, 7422 } ip daddr @allowed_v4 accept" in rules
    assert "tcp dport { 443, 7422 } ip6 daddr @allowed_v6 accept" in rules
    default_port = evaluate({"natsUrl": "tls://mcp.local"})["egressRuleset"]
    assert "tcp dport { 443, 4222 } ip daddr @allowed_v4 accept" in default_port


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
    assert socket["listenStreams"] == ["/run/compliance-agent-actuator/actuator.sock"]
    assert socket["socketConfig"]["SocketMode"] == "0660"
    assert socket["socketConfig"]["SocketGroup"] == "compliance-agent"
    assert base_eval["users"]["users"]["compliance-agent"]["isSystemUser"] is True
    # The socket's directory is root's (the agent may enter it, never write it), and
    # the actuator keeps its verified signed baseline in its own 0700 state directory.
    assert "d /run/compliance-agent-actuator 0750 root compliance-agent -" in \
        base_eval["systemd"]["tmpfiles"]
    assert actuator["StateDirectory"] == "compliance-agent-actuator"
    assert actuator["StateDirectoryMode"] == "0700"
    assert "RuntimeDirectoryPreserve" not in agent


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

