"""Firewall controller with the real nft, in a throwaway network namespace.

The controller's default sandbox (`python -m reconciler.actuator.nft_sandbox`) runs for
real too, inside the test namespace, so the expected digest comes from the
kernel exactly as in production.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from controllers.firewall import FirewallController
from reconciler.actuator.local import LocalActuator
from reconciler.actuator.nft_sandbox import script_argv
from specs.actions import Action, ApplyNftRuleset
from specs.drift import Remedy
from specs.host import Host
from specs.kinds.firewall import FirewallSpec
from tests.harness.netns import NetNamespace
from tests.harness.require import require_tool, unavailable

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "nft"
UDP_TRAFFIC = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(20): s.sendto(b'x' * 200, ('127.0.0.1', 9999))\n"
)


@pytest.fixture
def baseline(tmp_path: Path) -> FirewallSpec:
    require_tool("nft")
    path = tmp_path / "nftables.rules"
    shutil.copy(FIX / "baseline.nft", path)
    return FirewallSpec(
        ruleset_path=str(path), ruleset_sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )


def apply(ns: Host, action: Action) -> None:
    result = LocalActuator(ns).execute(action)
    assert result.ok, result


def drift_reasons(ctrl: FirewallController, ns: Host, spec: FirewallSpec) -> list[str]:
    return [d.reason for d in ctrl.diff(spec, ctrl.observe(ns, spec))]


def test_baseline_applied_matches(netns: NetNamespace, baseline: FirewallSpec) -> None:
    netns.check(["nft", "-f", baseline.ruleset_path])
    ctrl = FirewallController(sandbox_argv=script_argv())
    obs = ctrl.observe(netns, baseline)
    assert obs.expected_digest is not None
    assert obs.live_digest == obs.expected_digest
    assert ctrl.diff(baseline, obs) == []
    assert ctrl.facts(baseline, obs)["ruleset_hash"] == obs.live_digest


def test_empty_ruleset_drifts_and_apply_repairs_it(
    netns: NetNamespace, baseline: FirewallSpec
) -> None:
    ctrl = FirewallController(sandbox_argv=script_argv())
    obs = ctrl.observe(netns, baseline)
    drifts = ctrl.diff(baseline, obs)
    assert [d.reason for d in drifts] == ["RulesetDrifted"]
    # observing (which loads the file into the sandbox) left the live ruleset alone
    assert netns.check(["nft", "list", "ruleset"]).stdout.strip() == ""
    (action,) = ctrl.plan(baseline, obs, drifts)
    assert isinstance(action, ApplyNftRuleset)
    apply(netns, action)
    assert drift_reasons(ctrl, netns, baseline) == []


def test_added_and_removed_rules_drift_and_are_repaired(
    netns: NetNamespace, baseline: FirewallSpec
) -> None:
    ctrl = FirewallController(sandbox_argv=script_argv())
    netns.check(["nft", "-f", baseline.ruleset_path])
    assert drift_reasons(ctrl, netns, baseline) == []

    netns.check(["nft", "add", "rule", "inet", "filter", "input", "tcp", "dport", "3389",
                 "accept"])
    obs = ctrl.observe(netns, baseline)
    drifts = ctrl.diff(baseline, obs)
    assert [d.reason for d in drifts] == ["RulesetDrifted"]
    assert "chain inet filter input" in drifts[0].message
    (action,) = ctrl.plan(baseline, obs, drifts)
    apply(netns, action)
    assert drift_reasons(ctrl, netns, baseline) == []

    listing = json.loads(netns.check(["nft", "-j", "list", "chain", "inet", "filter",
                                      "input"]).stdout)
    handle = next(i["rule"]["handle"] for i in listing["nftables"]
                  if "rule" in i and "ct" in json.dumps(i["rule"]["expr"]))
    netns.check(["nft", "delete", "rule", "inet", "filter", "input", "handle", str(handle)])
    obs = ctrl.observe(netns, baseline)
    drifts = ctrl.diff(baseline, obs)
    assert [d.reason for d in drifts] == ["RulesetDrifted"]
    apply(netns, ctrl.plan(baseline, obs, drifts)[0])
    assert drift_reasons(ctrl, netns, baseline) == []

    netns.check(["nft", "chain", "inet", "filter", "input", "{ policy accept; }"])
    assert drift_reasons(ctrl, netns, baseline) == ["RulesetDrifted"]


def test_traffic_changes_counters_but_is_not_drift(
    netns: NetNamespace, baseline: FirewallSpec
) -> None:
    ctrl = FirewallController(sandbox_argv=script_argv())
    netns.check(["nft", "-f", baseline.ruleset_path])
    before = ctrl.observe(netns, baseline)
    netns.check([sys.executable, "-c", UDP_TRAFFIC])
    counters = netns.check(["nft", "list", "chain", "inet", "filter", "output"]).stdout
    assert "packets 20 " in counters  # the traffic really hit the ruleset
    seen = netns.check(["nft", "list", "set", "inet", "filter", "seen"]).stdout
    assert "127.0.0.1" in seen  # and filled the dynamic set
    after = ctrl.observe(netns, baseline)
    assert after.live_digest == before.live_digest == after.expected_digest
    assert ctrl.diff(baseline, after) == []


def test_tampered_file_is_never_applied(netns: NetNamespace, baseline: FirewallSpec) -> None:
    ctrl = FirewallController(sandbox_argv=script_argv())
    Path(baseline.ruleset_path).write_text(
        Path(baseline.ruleset_path).read_text().replace("policy drop", "policy accept")
    )
    obs = ctrl.observe(netns, baseline)
    drifts = ctrl.diff(baseline, obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("RulesetFileMismatch", Remedy.alert)]
    assert ctrl.plan(baseline, obs, drifts) == []
    # even a hand-made action for the tampered file is refused by the actuator
    result = LocalActuator(netns).execute(
        ApplyNftRuleset(path=baseline.ruleset_path, sha256=baseline.ruleset_sha256)
    )
    assert not result.ok
    assert netns.check(["nft", "list", "ruleset"]).stdout.strip() == ""


def test_invalid_ruleset_is_alert_only(netns: NetNamespace, tmp_path: Path) -> None:
    require_tool("nft")
    bad = tmp_path / "bad.rules"
    bad.write_text("table inet filter { chain input { this is not nft } }\n")
    spec = FirewallSpec(ruleset_path=str(bad),
                        ruleset_sha256=hashlib.sha256(bad.read_bytes()).hexdigest())
    ctrl = FirewallController(sandbox_argv=script_argv())
    obs = ctrl.observe(netns, spec)
    drifts = ctrl.diff(spec, obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("RulesetInvalid", Remedy.alert)]
    assert "syntax error" in drifts[0].message
    assert ctrl.plan(spec, obs, drifts) == []


def test_sandbox_works_unprivileged_too(baseline: FirewallSpec) -> None:
    """Without CAP_SYS_ADMIN the helper falls back to a user namespace."""
    require_tool("setpriv")
    from reconciler.actuator.host import LocalHost

    # pytest's tmp_path is private to root; "nobody" needs a readable copy
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)
        path = Path(tmp) / "nftables.rules"
        shutil.copy(baseline.ruleset_path, path)
        path.chmod(0o644)
        # so is the checkout (a CI clone may live in a 0700 directory): run a copy
        # of the stdlib-only helper by path, as the controller does
        helper = Path(tmp) / "nft_sandbox.py"
        shutil.copy(Path(__file__).resolve().parents[2] / "reconciler" / "actuator" / "nft_sandbox.py", helper)
        helper.chmod(0o644)
        done = LocalHost().run([
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            os.path.realpath(sys.executable), "-I", str(helper),
            "--sha256", baseline.ruleset_sha256, str(path),
        ], timeout=30)
    if done.exit_code == 4:
        unavailable(f"unprivileged user namespaces are disabled here: {done.stderr.strip()}")
    assert done.exit_code == 0, done.stderr
    assert '"name": "admin_v4"' in done.stdout


def test_in_a_systemd_container_with_its_own_network(
    systemd_rootfs: Path, tmp_path: Path
) -> None:
    """The same flow on a booted system: file in /etc, sandbox helper run inside it."""
    require_tool("nft")
    from tests.harness.sdbox import Bind, SystemdContainer

    reconciler_dir = Path(__file__).resolve().parents[2] / "reconciler"
    with SystemdContainer(
        tmp_path / "box", rootfs=systemd_rootfs, private_network=True,
        binds=[Bind(reconciler_dir, "/opt/ca/reconciler")],
    ) as box:
        text = (FIX / "baseline.nft").read_text()
        box.write_file("/etc/nftables.rules", text)
        spec = FirewallSpec(ruleset_path="/etc/nftables.rules",
                            ruleset_sha256=hashlib.sha256(text.encode()).hexdigest())
        ctrl = FirewallController(
            sandbox_argv=["python3", "-I", "/opt/ca/reconciler/actuator/nft_sandbox.py"]
        )
        obs = ctrl.observe(box, spec)
        drifts = ctrl.diff(spec, obs)
        assert [d.reason for d in drifts] == ["RulesetDrifted"], drifts
        apply(box, ctrl.plan(spec, obs, drifts)[0])
        assert "policy drop" in box.check(["nft", "list", "chain", "inet", "filter",
                                           "input"]).stdout
        assert drift_reasons(ctrl, box, spec) == []
