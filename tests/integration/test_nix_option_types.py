"""NixOS's and sops-nix's option types, as the stub evaluation now enforces them.

nix/eval/nixos-options.nix declares the NixOS options the module sets with
NixOS's types, and nix/tests/sops-stub.nix sops-nix's options: a value NixOS
or sops-nix would reject fails the evaluation here too, with their messages.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_nix_module import BASE, REPO, evaluate, module_with, nix_eval

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_eval() -> Any:
    return evaluate()


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
