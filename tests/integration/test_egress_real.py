"""Egress allowlist against real nftables, a real resolver path and a real DNS server.

Two private network namespaces joined by a veth pair:

* "host": the machine under test. It has the module's egress table loaded,
  its own /etc/resolv.conf and /etc/hosts (via /etc/netns/NAME, which
  `ip netns exec` bind-mounts over /etc), and the test DNS server on
  127.0.0.1:53. The controller runs here through a Host that wraps every
  command in `ip netns exec`, so getent goes through NSS -> DNS for real.
* "net": stands in for the Internet: documentation addresses (192.0.2.0/24,
  2001:db8::/64) with TCP listeners on 443 and 8443.

Nothing leaves the namespaces. An allowed connect() completes the handshake
at once. One the output chain drops just times out (Linux ignores the error of
the first SYN and retransmits), so "dropped" is proven positively: SYN
counters in "net" show the packet never arrived.
"""

from __future__ import annotations

import json
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from controllers.egress import REASON_OUT_OF_DATE, REASON_RESOLUTION_FAILED, EgressController
from reconciler.actuator.local import LocalActuator
from specs.actions import UpdateEgressSet
from specs.drift import Drift, Remedy
from specs.kinds.egress import EgressSpec
from tests.harness.netns import NetNamespace
from tests.harness.require import require_root, require_tool
from tests.support.dns_server import Mode, Records, write_state

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODULE_TABLE = REPO / "examples" / "egress-table.nft"
FALLBACK_TABLE = REPO / "tests" / "fixtures" / "egress" / "egress-table.nft"
TABLE = "compliance_egress"

HOST_V4, HOST_V6 = "192.0.2.1", "2001:db8::1"
NET_V4 = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
NET_V6 = ["2001:db8::10", "2001:db8::11", "2001:db8::12"]
RECORDS: Records = {
    "api.egress.test": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
    "cdn.egress.test": {"A": ["192.0.2.11"]},
}
# 192.0.2.12 and 2001:db8::12 exist in "net" but no allowed name resolves to them.
SPEC = EgressSpec(hosts=["api.egress.test", "cdn.egress.test"], resolve_timeout=3.0)

LISTENER = """
import signal, socket, sys
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(128)
    socks.append(s)
print("READY", flush=True)
signal.pause()
"""

PROBE = """
import errno, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(0.5)
try:
    s.connect((addr, port))
    print("connected")
except TimeoutError:
    print("timeout")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"""


def _wait_ready(proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    """Read the child's first stdout line ("READY ...") within a deadline."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(timeout=min(left, 0.5)):
                line = proc.stdout.readline().decode()
                if line.startswith("READY"):
                    return
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
                raise AssertionError(f"{what} did not start: {line!r} {err}")
    raise AssertionError(f"{what} not ready within {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=10)


@dataclass
class Lab:
    host: NetNamespace
    net: NetNamespace
    dns_state: Path

    def dns(self, mode: Mode, records: Records = RECORDS) -> None:
        write_state(self.dns_state, mode, records)

    def connect(self, addr: str, port: int) -> str:
        """'connected', or 'dropped' when it timed out and no SYN reached "net"."""
        before = self.syns(addr, port)
        got = self.host.check([sys.executable, "-c", PROBE, addr, str(port)], 15).stdout.strip()
        arrived = self.syns(addr, port) - before
        if got == "connected":
            assert arrived >= 1, f"connected to {addr}:{port} but no SYN counted"
            return got
        if got == "timeout" and arrived == 0:
            return "dropped"
        return f"{got} ({arrived} SYNs arrived)"

    def syns(self, addr: str, port: int) -> int:
        out = self.net.check(["nft", "-j", "list", "chain", "inet", "seen", "input"]).stdout
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if rule and rule.get("comment") == f"{addr} port {port}":
                counters = [e["counter"] for e in rule["expr"] if "counter" in e]
                return int(counters[0]["packets"])
        raise AssertionError(f"no SYN counter for {addr} port {port}")

    def elements(self, set_name: str) -> list[str]:
        # read independently of the controller's parser
        out = self.host.check(["nft", "-j", "list", "set", "inet", TABLE, set_name]).stdout
        sets = [i["set"] for i in json.loads(out)["nftables"] if "set" in i]
        return sorted(str(e) for e in sets[0].get("elem", []))

    def reconcile(self, spec: EgressSpec = SPEC) -> tuple[list[Drift], list[Drift]]:
        """One runtime-style pass: observe, diff, plan, act, observe again.

        Returns (drifts before acting, drifts after acting)."""
        ctl = EgressController()
        before = ctl.observe(self.host, spec)
        drifts = ctl.diff(spec, before)
        actuator = LocalActuator(self.host)
        for action in ctl.plan(spec, before, drifts):
            result = actuator.execute(action)
            assert result.ok, result.error
        return drifts, ctl.diff(spec, ctl.observe(self.host, spec))


def _mac(ns: NetNamespace, dev: str) -> str:
    return str(json.loads(ns.check(["ip", "-j", "link", "show", dev]).stdout)[0]["address"])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_root()
    for tool in ("ip", "nft", "getent"):
        require_tool(tool)
    with ExitStack() as stack:
        host = stack.enter_context(NetNamespace("ca-egress"))
        net = stack.enter_context(NetNamespace("ca-egnet"))

        # resolver config seen only inside "host"; no test name in its hosts file
        etc = Path("/etc/netns") / host.name
        etc.mkdir(parents=True)
        stack.callback(shutil.rmtree, etc, ignore_errors=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")

        host.check(["ip", "link", "add", "eg0", "type", "veth", "peer", "name", "eg1",
                    "netns", net.name])
        host.check(["ip", "addr", "add", f"{HOST_V4}/24", "dev", "eg0"])
        host.check(["ip", "addr", "add", f"{HOST_V6}/64", "dev", "eg0", "nodad"])
        host.check(["ip", "link", "set", "eg0", "up"])
        for a in NET_V4:
            net.check(["ip", "addr", "add", f"{a}/24", "dev", "eg1"])
        for a in NET_V6:
            net.check(["ip", "addr", "add", f"{a}/64", "dev", "eg1", "nodad"])
        net.check(["ip", "link", "set", "eg1", "up"])
        seen = ["add table inet seen",
                "add chain inet seen input { type filter hook input priority 0; policy accept; }"]
        for a in NET_V4 + NET_V6:
            for port in (443, 8443):
                ip = "ip6" if ":" in a else "ip"
                seen.append(f'add rule inet seen input {ip} daddr {a} tcp dport {port} '
                            f'tcp flags syn counter comment "{a} port {port}"')
        net.check(["nft", "; ".join(seen)])
        # The drop policy also drops ICMPv6 neighbour discovery leaving "host";
        # static neighbours keep the IPv6 checks about the filter, not about ND.
        mac0, mac1 = _mac(host, "eg0"), _mac(net, "eg1")
        for a in NET_V6:
            host.check(["ip", "-6", "neigh", "replace", a, "lladdr", mac1, "dev", "eg0",
                        "nud", "permanent"])
        net.check(["ip", "-6", "neigh", "replace", HOST_V6, "lladdr", mac0, "dev", "eg1",
                   "nud", "permanent"])

        table = MODULE_TABLE if MODULE_TABLE.exists() else FALLBACK_TABLE
        host.check(["nft", "-f", str(table)])

        state = tmp_path / "dns.json"
        write_state(state, "answer", RECORDS)
        dns = subprocess.Popen(
            ["ip", "netns", "exec", host.name, sys.executable, "-m", "tests.support.dns_server",
             "--address", "127.0.0.1", "--port", "53", "--state", str(state)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        stack.callback(_stop, dns)  # before the namespaces go (LIFO)
        _wait_ready(dns, "DNS server")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", net.name, sys.executable, "-c", LISTENER, "443", "8443"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        stack.callback(_stop, listener)
        _wait_ready(listener, "TCP listener")
        yield Lab(host=host, net=net, dns_state=state)
    assert not host.exists() and not net.exists() and not etc.exists()


def _reasons(drifts: list[Drift]) -> set[tuple[str, str, Remedy]]:
    return {(d.reason, d.field, d.remedy) for d in drifts}


def test_resolver_really_goes_to_the_test_dns_server(lab: Lab) -> None:
    got = lab.host.check(["getent", "ahostsv4", "api.egress.test"]).stdout
    assert got.split()[0] == "192.0.2.10"
    lab.dns("answer", {"api.egress.test": {"A": ["198.51.100.77"]}})
    assert lab.host.check(["getent", "ahostsv4", "api.egress.test"]).stdout.split()[0] == (
        "198.51.100.77"
    )


def test_refresh_fail_closed_and_restore(lab: Lab) -> None:
    # a stale address from an earlier refresh must not survive
    lab.host.check(["nft", f"add element inet {TABLE} allowed_v4 {{ 192.0.2.12 }}"])

    drifts, after = lab.reconcile()
    assert {d.reason for d in drifts} == {REASON_OUT_OF_DATE}
    assert after == []
    assert lab.elements("allowed_v4") == ["192.0.2.10", "192.0.2.11"]
    assert lab.elements("allowed_v6") == ["2001:db8::10"]
    assert lab.reconcile() == ([], [])  # converged: nothing planned

    # one name stops resolving (NXDOMAIN): only its address goes
    lab.dns("answer", {"api.egress.test": RECORDS["api.egress.test"]})
    drifts, after = lab.reconcile()
    assert _reasons(after) == {
        (REASON_RESOLUTION_FAILED, "egress.hosts.cdn.egress.test", Remedy.alert)
    }
    assert lab.elements("allowed_v4") == ["192.0.2.10"]
    assert lab.elements("allowed_v6") == ["2001:db8::10"]

    # the server answers SERVFAIL for everything: both sets end up empty
    lab.dns("servfail")
    drifts, after = lab.reconcile()
    assert {d.reason for d in drifts if d.remedy is Remedy.remediate} == {REASON_OUT_OF_DATE}
    assert {d.field for d in after} == {"egress.hosts.api.egress.test",
                                        "egress.hosts.cdn.egress.test"}
    assert all(d.remedy is Remedy.alert for d in after)
    assert lab.elements("allowed_v4") == [] and lab.elements("allowed_v6") == []

    # DNS back: the next refresh restores every name
    lab.dns("answer")
    _, after = lab.reconcile()
    assert after == []
    assert lab.elements("allowed_v4") == ["192.0.2.10", "192.0.2.11"]
    assert lab.elements("allowed_v6") == ["2001:db8::10"]


def test_unanswered_dns_times_out_and_empties_sets(lab: Lab) -> None:
    lab.reconcile()
    lab.dns("drop")
    spec = SPEC.model_copy(update={"resolve_timeout": 0.5})
    ctl = EgressController()
    started = time.monotonic()
    observed = ctl.observe(lab.host, spec)
    assert time.monotonic() - started < 5  # lookups run in parallel, each bounded
    assert {n.v4.status for n in observed.names} == {"timeout"}
    _, after = lab.reconcile(spec)
    assert {d.reason for d in after} == {REASON_RESOLUTION_FAILED}
    assert lab.elements("allowed_v4") == [] and lab.elements("allowed_v6") == []


def test_policy_lets_https_reach_only_allowed_addresses(lab: Lab) -> None:
    lab.reconcile()
    assert lab.connect("192.0.2.10", 443) == "connected"
    assert lab.connect("192.0.2.11", 443) == "connected"
    assert lab.connect("2001:db8::10", 443) == "connected"
    assert lab.connect("192.0.2.12", 443) == "dropped"  # not allowed
    assert lab.connect("2001:db8::12", 443) == "dropped"
    assert lab.connect("192.0.2.10", 8443) == "dropped"  # allowed address, other port
    assert lab.connect("2001:db8::10", 8443) == "dropped"

    lab.dns("servfail")
    lab.reconcile()
    assert lab.connect("192.0.2.10", 443) == "dropped"  # fail closed: no egress at all
    assert lab.connect("2001:db8::10", 443) == "dropped"

    lab.dns("answer")
    lab.reconcile()
    assert lab.connect("192.0.2.10", 443) == "connected"


def test_set_update_is_one_kernel_transaction(lab: Lab) -> None:
    # A set the kernel caps at two elements: adding three fails at commit time,
    # after the flush in the same batch; the flush must be rolled back with it.
    lab.host.check(["nft", "add table inet atom; "
                    "add set inet atom s { type ipv4_addr; flags interval; size 2; }; "
                    "add element inet atom s { 192.0.2.99 }"])
    too_many = UpdateEgressSet(table="atom", set_name="s",
                               elements=["192.0.2.1", "192.0.2.2", "192.0.2.3"])
    result = LocalActuator(lab.host).execute(too_many)
    assert not result.ok
    out = lab.host.check(["nft", "-j", "list", "set", "inet", "atom", "s"]).stdout
    assert next(i["set"] for i in json.loads(out)["nftables"] if "set" in i)["elem"] == [
        "192.0.2.99"
    ]
    ok = UpdateEgressSet(table="atom", set_name="s", elements=["192.0.2.1", "192.0.2.2"])
    assert LocalActuator(lab.host).execute(ok).ok
    empty = UpdateEgressSet(table="atom", set_name="s", elements=[])
    assert LocalActuator(lab.host).execute(empty).ok


def _write_agent_files(tmp: Path) -> Path:
    baseline = tmp / "baseline.json"
    baseline.write_text(json.dumps(
        {"version": 1, "policy_version": "1.0", "egress": {"resolve_timeout": 2}}
    ))
    config = tmp / "config.json"
    config.write_text(json.dumps({
        "siteId": "clinic-1", "baselinePath": str(baseline),
        "clientCertFile": "/c", "clientKeyFile": "/k", "signingKeyFile": "/s",
        "caCertFile": "/ca", "mcpPublicKeys": ["ab" * 32],
        "mcpUrl": "https://api.egress.test",
        "allowedHosts": ["api.egress.test", "cdn.egress.test"],
        "deploymentMode": "direct",
    }))
    return config


def test_cli_refresh_exit_codes(lab: Lab, tmp_path: Path) -> None:
    config = _write_agent_files(tmp_path)
    argv = [sys.executable, "-m", "reconciler.cli.egress", "egress", "refresh",
            "--config", str(config), "--json"]

    done = lab.host.run(argv, timeout=60)
    assert done.exit_code == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"] == "ok"
    assert lab.elements("allowed_v4") == ["192.0.2.10", "192.0.2.11"]

    lab.dns("servfail")
    done = lab.host.run(argv, timeout=60)
    assert done.exit_code == 1, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["result"] == "alert"
    assert sorted(summary["egress_failed"]) == ["api.egress.test", "cdn.egress.test"]
    assert lab.elements("allowed_v4") == [] and lab.elements("allowed_v6") == []

    lab.dns("answer")
    assert lab.host.run(argv, timeout=60).exit_code == 0
    assert lab.elements("allowed_v6") == ["2001:db8::10"]
