"""The module's egress table under NixOS's nftables reloads, in real nftables.

The example configuration (examples/direct-config.nix: control plane, the
binary cache from nix.settings.substituters, a restic backup to
nas.clinic.lan over SFTP) is evaluated by nix/eval/eval.nix; what it yields
(the table content of networking.nftables.tables, the allowedHosts of the
agent's JSON config, the ExecReload lines it adds to nftables.service and
the compliance-agent-egress-keep unit bound to it) is loaded into a private network namespace and exercised.

What is emulated, and how (NixOS's nixos/modules/services/networking/nftables.nix,
as of the 25.x/26.x releases): nftables.service's start and reload run one
`nft -f` rules script, which includes the previous deletions file
(/var/lib/nftables/deletions.nft), then the current deletions (for each enabled
table of networking.nftables.tables: `table FAMILY NAME` + `delete table FAMILY
NAME`; `flush ruleset` only when flushRuleset is true, which this module no
longer causes), then each table as `table FAMILY NAME { CONTENT }`, then
networking.nftables.ruleset. ExecReload is [ensure-deletions, rules script,
save-deletions]; the module wraps it with its save (mkBefore) and restore +
refresh trigger (mkAfter). A restart is ExecStop (the saved deletions) then
start; the module's keep unit (PartOf, After nftables.service) saves on its
stop and restores on its start. Here: the deletions files live in the test's tmp
dir, `systemctl start --no-block` of the refresh is not run (no systemd in the
namespace), and the module's nix/egress-sets.sh runs from the repository with
the arguments the module passes. A table loaded by someone else (a Docker-like
`ip docker_nat` with a filled set) stands for the tables a global flush used to
wipe.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controllers.egress import EgressController
from reconciler.actuator.local import LocalActuator
from specs.kinds.egress import EgressSpec
from tests.harness.netns import NetNamespace
from tests.harness.require import require_root, require_tool
from tests.integration.test_egress_real import LISTENER, PROBE, _mac, _stop, _wait_ready
from tests.integration.test_nix_module import nix_eval
from tests.support.dns_server import Records, write_state

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SETS_SCRIPT = REPO / "nix" / "egress-sets.sh"
HOST_V4 = "192.0.2.1"
# the example's destinations, at documentation addresses in "net"
ADDRS = {
    "mcp.example-health.net": "192.0.2.20",
    "cache.nixos.org": "192.0.2.21",
    "nas.clinic.lan": "192.0.2.22",
}
OTHER = "192.0.2.23"  # reachable in "net", allowed by nothing
# Another table of networking.nftables.tables (as NixOS's nftables firewall
# declares `nixos-fw`): recreated by the same rules script.
NIXOS_FW = ("nixos-fw", "chain input {\n\ttype filter hook input priority 0; policy accept;\n}\n")
DOCKER_LIKE = (
    "table ip docker_nat {\n"
    "\tset published { type ipv4_addr; elements = { 198.51.100.7 } }\n"
    "\tchain postrouting { type nat hook postrouting priority 100; policy accept; }\n"
    "}\n"
)


@pytest.fixture(scope="module")
def example() -> Any:
    return nix_eval(f"import {REPO / 'examples' / 'direct-config.nix'}")


@dataclass
class Reload:
    """nftables.service of the example, emulated in a namespace (module docstring)."""

    host: NetNamespace
    net: NetNamespace
    tmp: Path
    table: str
    content: str
    exec_reload: list[str]
    keep_start: list[str]
    keep_stop: str

    def _rules_file(self) -> Path:
        tables = {NIXOS_FW[0]: NIXOS_FW[1], self.table: self.content}
        deletions = self.tmp / "deletions-current.nft"
        deletions.write_text("".join(f"table inet {name}\ndelete table inet {name}\n"
                                     for name in tables))
        rules = self.tmp / "nftables-rules"
        rules.write_text(
            f'include "{self.tmp / "deletions-var.nft"}"\n'
            f'include "{deletions}"\n'
            + "".join(f"table inet {name} {{\n{content}\n}}\n" for name, content in tables.items())
        )
        return rules

    def _module_step(self, line: str) -> None:
        """Run one ExecReload/ExecStartPost line the module added, from the repository."""
        m = re.fullmatch(r"-\S+/bin/env NFT=\S+/bin/nft \S+/bin/bash \S+-egress-sets\.sh "
                         r"(save|restore) (\S+) (/run/\S+)", line)
        assert m, f"unexpected module line in nftables.service: {line}"
        action, table, saved = m.groups()
        assert table == self.table
        assert saved == f"/run/nftables-{table}-sets.nft"
        self.host.check(["env", f"NFT={require_tool('nft')}", "bash", str(SETS_SCRIPT), action,
                         table, str(self.tmp / Path(saved).name)])

    def start(self) -> None:
        (self.tmp / "deletions-var.nft").touch()
        self.host.check(["nft", "-f", str(self._rules_file())])
        (self.tmp / "deletions-var.nft").write_text(
            (self.tmp / "deletions-current.nft").read_text())

    def restart(self) -> None:
        """`systemctl restart nftables`: the keep unit (PartOf, After) stops first
        (ExecStop: save), nftables' ExecStop runs the saved deletions, then
        nftables starts and the keep unit starts after it (ExecStart: restore)."""
        self._module_step(self.keep_stop)
        self.host.check(["nft", "-f", str(self.tmp / "deletions-var.nft")])
        self.start()
        self._module_step(self.keep_start[0])

    def reload(self, *, with_module_steps: bool = True) -> None:
        """ExecReload: the module's mkBefore step(s), NixOS's three, the module's mkAfter ones."""
        module = [line for line in self.exec_reload if "egress-sets.sh" in line]
        if with_module_steps:
            self._module_step(module[0])  # save
        self.host.check(["nft", "-f", str(self._rules_file())])
        (self.tmp / "deletions-var.nft").write_text(
            (self.tmp / "deletions-current.nft").read_text())
        if with_module_steps:
            self._module_step(module[1])  # restore

    def elements(self, set_name: str) -> list[str]:
        out = self.host.check(["nft", "-j", "list", "set", "inet", self.table, set_name]).stdout
        sets = [i["set"] for i in json.loads(out)["nftables"] if "set" in i]
        return sorted(str(e) for e in sets[0].get("elem", []))

    def connect(self, addr: str, port: int) -> str:
        return self.host.check([sys.executable, "-c", PROBE, addr, str(port)], 15).stdout.strip()


@pytest.fixture
def lab(tmp_path: Path, example: Any) -> Iterator[Reload]:
    require_root()
    for tool in ("ip", "nft", "getent", "bash"):
        require_tool(tool)
    table = json.loads(example["configText"])["egressTable"]
    content = example["nftables"]["tables"][table]["content"]
    assert example["nftables"]["tables"][table]["family"] == "inet"
    assert example["nftables"].get("ruleset", "") == "" and not example["nftables"].get(
        "flushRuleset", False)
    with ExitStack() as stack:
        host = stack.enter_context(NetNamespace("ca-rld"))
        net = stack.enter_context(NetNamespace("ca-rldnet"))
        etc = Path("/etc/netns") / host.name
        etc.mkdir(parents=True)
        stack.callback(lambda: subprocess.run(["rm", "-rf", str(etc)], check=False))
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        host.check(["ip", "link", "add", "rl0", "type", "veth", "peer", "name", "rl1",
                    "netns", net.name])
        host.check(["ip", "addr", "add", f"{HOST_V4}/24", "dev", "rl0"])
        host.check(["ip", "link", "set", "rl0", "up"])
        for a in [*ADDRS.values(), OTHER]:
            net.check(["ip", "addr", "add", f"{a}/24", "dev", "rl1"])
        net.check(["ip", "link", "set", "rl1", "up"])
        # static neighbours: the drop policy is about IP, not ARP
        mac1 = _mac(net, "rl1")
        for a in [*ADDRS.values(), OTHER]:
            host.check(["ip", "neigh", "replace", a, "lladdr", mac1, "dev", "rl0", "nud",
                        "permanent"])
        records: Records = {name: {"A": [a]} for name, a in ADDRS.items()}
        state = tmp_path / "dns.json"
        write_state(state, "answer", records)
        dns = subprocess.Popen(
            ["ip", "netns", "exec", host.name, sys.executable, "-m", "tests.support.dns_server",
             "--address", "127.0.0.1", "--port", "53", "--state", str(state)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        stack.callback(_stop, dns)
        _wait_ready(dns, "DNS server")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", net.name, sys.executable, "-c", LISTENER, "443", "22"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        stack.callback(_stop, listener)
        _wait_ready(listener, "TCP listener")
        service = example["nftablesService"]["serviceConfig"]
        keep = example["systemd"]["services"]["compliance-agent-egress-keep"]["serviceConfig"]
        yield Reload(host=host, net=net, tmp=tmp_path, table=table, content=content,
                     exec_reload=list(service["ExecReload"]),
                     keep_start=list(keep["ExecStart"]), keep_stop=keep["ExecStop"])


def refresh(lab: Reload, example: Any) -> None:
    """One egress refresh with the allowedHosts of the example's agent config."""
    cfg = json.loads(example["configText"])
    spec = EgressSpec(resolve_timeout=3.0).with_config_defaults(cfg["allowedHosts"], lab.table)
    ctl = EgressController()
    before = ctl.observe(lab.host, spec)
    for action in ctl.plan(spec, before, ctl.diff(spec, before)):
        assert LocalActuator(lab.host).execute(action).ok
    assert ctl.diff(spec, ctl.observe(lab.host, spec)) == []


def test_example_allows_what_its_configuration_needs(example: Any) -> None:
    cfg = json.loads(example["configText"])
    assert set(ADDRS) <= set(cfg["allowedHosts"])
    assert "tcp dport { 443, 22 } ip daddr @allowed_v4 accept" in example["egressRuleset"]
    assert example["warnings"] == [] and example["failedAssertions"] == []


def test_reload_keeps_other_tables_and_the_allowlist(lab: Reload, example: Any) -> None:
    lab.start()
    lab.host.check(["nft", DOCKER_LIKE])  # loaded by another program, not by NixOS
    refresh(lab, example)
    filled = lab.elements("allowed_v4")
    assert filled == sorted(ADDRS.values())
    assert lab.connect(ADDRS["nas.clinic.lan"], 22) == "connected"
    assert lab.connect(ADDRS["cache.nixos.org"], 443) == "connected"
    assert lab.connect(OTHER, 443) == "timeout"

    lab.reload()  # as `systemctl reload nftables` after a rebuild that touched it

    tables = lab.host.check(["nft", "list", "tables"]).stdout.split("\n")
    assert f"table inet {lab.table}" in tables and "table ip docker_nat" in tables
    assert tables.count("table inet nixos-fw") == 1
    docker = lab.host.check(["nft", "list", "set", "ip", "docker_nat", "published"]).stdout
    assert "198.51.100.7" in docker
    # right after the reload, before any DNS refresh: the sets hold their addresses
    assert lab.elements("allowed_v4") == filled
    assert lab.connect(ADDRS["nas.clinic.lan"], 22) == "connected"
    assert lab.connect(ADDRS["cache.nixos.org"], 443) == "connected"
    assert lab.connect(OTHER, 443) == "timeout"
    # and a reload is idempotent: one table, one chain, no duplicated rules
    listing = lab.host.check(["nft", "list", "table", "inet", lab.table]).stdout
    assert listing.count("chain output") == 1
    assert listing.count("@allowed_v4 accept") == 1

    lab.restart()  # stop + start, e.g. `systemctl restart nftables`
    assert lab.elements("allowed_v4") == filled
    assert "table ip docker_nat" in lab.host.check(["nft", "list", "tables"]).stdout
    assert lab.connect(ADDRS["cache.nixos.org"], 443) == "connected"


def test_without_the_module_steps_a_reload_empties_the_sets(lab: Reload, example: Any) -> None:
    """Why the module wraps ExecReload: NixOS recreates the table, sets and all."""
    lab.start()
    refresh(lab, example)
    assert lab.connect(ADDRS["nas.clinic.lan"], 22) == "connected"
    lab.reload(with_module_steps=False)
    assert lab.elements("allowed_v4") == []
    assert lab.connect(ADDRS["nas.clinic.lan"], 22) == "timeout"
