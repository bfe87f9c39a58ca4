"""The rebuild transaction survives restarts of the actuator and the agent (real systemd 252).

The module's own units run in a booted container: the actuator socket-activated
as root with its StateDirectory (where the transaction is journaled), and a
stand-in agent under the agent's sandbox that asks for the rebuild over the
socket with the agent's ActuatorClient (which re-sends a rebuild request whose
connection broke, to learn that transaction's result), as the agent's
patching controller does: while /run/current-system is not the baseline's
target, it requests the rebuild; once it gets a result it prints it and
stops asking.

The system generations (tests/integration/nixos_standin) carry the actuator's
and the agent's unit files. A generation whose copy of them differs makes its
switch restart both (as NixOS's switch-to-configuration restarts changed
units), from inside the transient switch unit; one with identical copies
leaves them alone, and the test kills the actuator with SIGKILL mid-switch.
Each test asserts what systemd and the profile show afterwards, how often
the old system was activated again (the rollback count), the journaled
transaction, and what the agent learned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from tests.harness.sdbox import Bind, SystemdContainer
from tests.integration.nixos_standin import StandinGeneration, install_nixos_standin
from tests.integration.test_unit_hardening import (
    PY_IN_BOX,
    PYENV,
    REPO_IN_BOX,
    SITE_IN_BOX,
    _boxed_service,
    _python_in_box,
    evaluate,
    render_unit,
)

REPO = Path(__file__).resolve().parents[2]
ACTUATOR = "compliance-agent-actuator.service"
AGENT = "compliance-agent.service"
JOURNAL = "/var/lib/compliance-agent-actuator/rebuild-transaction.json"
TARGET_FILE = "/etc/compliance-agent/rebuild-target"
ACTIVATIONS = "/run/nixos-standin/activations"
WAIT = 120.0  # seconds any one scenario may take before the test fails

AGENT_STANDIN = """
import os, signal, sys, time
from reconciler.actuator.client import ActuatorClient, ActuatorError
from specs.actions import NixosRebuild

target = open(sys.argv[1]).read().strip() if os.path.exists(sys.argv[1]) else ""
client = ActuatorClient("/run/compliance-agent-actuator/actuator.sock")
deadline = time.monotonic() + 120
last = None
while target and time.monotonic() < deadline:
    if os.readlink("/run/current-system") == target:
        if last != "in-sync":
            print("AGENT in-sync", flush=True)
        last = "in-sync"
        time.sleep(0.5)
        continue
    try:
        res = client.execute(NixosRebuild(target=target, health_timeout=20))
    except ActuatorError as e:
        print("AGENT unavailable", type(e).__name__, flush=True)
        last = "unavailable"
        time.sleep(1)
        continue
    outcome = res.outcome.value if res.outcome else ("success" if res.ok else "failed")
    print("AGENT result", outcome, res.rollback_generation, flush=True)
    break
signal.pause()
"""

APP = "[Unit]\nDescription=clinic app {v}\n[Service]\nExecStart=/bin/sleep infinity\n"
FAILING = "[Unit]\nDescription=migration that fails\n[Service]\nType=oneshot\nExecStart=/bin/false\n"
# A migration that takes a while: the switch is still running when the actuator is killed.
SLOW = ("[Unit]\nDescription=slow migration\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStart=/bin/sleep 4\n")


def _units(actuator: str, agent: str, marker: str, **extra: str) -> dict[str, str]:
    """A generation's units; `marker` changes the agent's and actuator's unit files."""
    tag = f"# generation {marker}\n" if marker else ""
    return {ACTUATOR: tag + actuator, AGENT: tag + agent, **extra}


def _generations(actuator: str, agent: str) -> list[StandinGeneration]:
    return [
        StandinGeneration("old", units=_units(actuator, agent, "", **{
            "clinic-app.service": APP.format(v="1")})),
        # the switch restarts the actuator and the agent
        StandinGeneration("good", units=_units(actuator, agent, "good", **{
            "clinic-app.service": APP.format(v="2")})),
        # the switch reports success: only the health check sees the failed unit
        StandinGeneration("bad", units=_units(actuator, agent, "bad", **{
            "clinic-app.service": APP.format(v="3"),
            "broken-migration.service": FAILING}), switch_exit=0),
        # the switch leaves the actuator and the agent alone, and takes ~4 s
        StandinGeneration("slow-good", units=_units(actuator, agent, "", **{
            "clinic-app.service": APP.format(v="4"), "clinic-db-migration.service": SLOW})),
        StandinGeneration("slow-bad", units=_units(actuator, agent, "", **{
            "clinic-app.service": APP.format(v="5"), "clinic-db-migration.service": SLOW,
            "broken-migration.service": FAILING})),
    ]


class Host:
    """The booted container with the module's units and the stand-in NixOS profile."""

    def __init__(self, box: SystemdContainer, paths: dict[str, str]) -> None:
        self.box = box
        self.paths = paths

    def out(self, *argv: str) -> str:
        return self.box.check(list(argv)).stdout.strip()

    def invocation(self, unit: str) -> str:
        return self.out("systemctl", "show", "-p", "InvocationID", "--value", unit)

    def journal(self) -> dict[str, Any] | None:
        done = self.box.run(["cat", JOURNAL])
        return json.loads(done.stdout) if done.exit_code == 0 else None

    def agent_lines(self) -> list[str]:
        log = self.out("journalctl", "--no-pager", "-o", "cat", "-u", AGENT)
        return [line for line in log.splitlines() if line.startswith("AGENT ")]

    def activations(self) -> list[str]:
        names = {p: n for n, p in self.paths.items()}
        return [names[p] for p in self.out("cat", ACTIVATIONS).split()]

    def wait_for(self, what: str, check: Any) -> Any:
        deadline = time.monotonic() + WAIT
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                log = self.out("journalctl", "--no-pager", "-o", "cat", "-u", ACTUATOR,
                               "-u", AGENT, "-u", "compliance-agent-switch-*",
                               "-u", "compliance-agent-rollback-*")
                raise AssertionError(f"timed out waiting for {what}:\n{log[-6000:]}")
            time.sleep(0.2)  # polling real systemd, with a deadline

    def done_transaction(self) -> dict[str, Any] | None:
        tx = self.journal()
        return tx if tx is not None and tx["phase"] == "done" else None

    def request(self, generation: str) -> None:
        """Point the baseline and the stand-in agent at `generation` and start the agent."""
        self.box.write_file(TARGET_FILE, self.paths[generation] + "\n")
        self.box.write_file("/etc/compliance-agent/baseline.json", json.dumps({
            "version": 1, "policy_version": "1",
            "patching": {"target": self.paths[generation]},
        }))
        self.box.check(["systemctl", "restart", AGENT])

    def settled(self) -> str:
        return self.out("systemctl", "is-system-running", "--wait")


@pytest.fixture
def host(systemd_rootfs: Path, tmp_path: Path) -> Iterator[Host]:
    site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
    binds = [Bind(PYENV, PY_IN_BOX), Bind(site, SITE_IN_BOX),
             *(Bind(REPO / pkg, f"{REPO_IN_BOX}/{pkg}")
               for pkg in ("specs", "controllers", "reconciler"))]
    with SystemdContainer(tmp_path / "box", rootfs=systemd_rootfs, binds=binds) as box:
        evaluated = evaluate()
        services = evaluated["systemd"]["services"]
        assert services["compliance-agent-actuator"]["serviceConfig"]["Restart"] == "on-failure"
        box.check(["useradd", "--system", "--user-group", "--no-create-home",
                   "--home-dir", "/var/lib/compliance-agent", "compliance-agent"])
        config = json.loads(evaluated["configText"])
        config.update(baselinePath="/etc/compliance-agent/baseline.json",
                      allowDisruptiveOutsideWindow=True, rebuildHealthCheckTimeout=20,
                      mcpPublicKeys=[SigningKey.generate().verify_key.encode().hex()])
        box.write_file("/etc/compliance-agent/config.json", json.dumps(config))
        box.write_file("/etc/tmpfiles.d/compliance-agent.conf",
                       "\n".join(evaluated["systemd"]["tmpfiles"]) + "\n")
        box.check(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/compliance-agent.conf"])
        box.write_file("/etc/compliance-agent/agent.py", AGENT_STANDIN)
        py = _python_in_box()
        box.install_unit("compliance-agent-actuator.socket", render_unit(
            "socket", evaluated["systemd"]["sockets"]["compliance-agent-actuator"]))
        actuator = _boxed_service(
            services["compliance-agent-actuator"],
            f"{py} -m reconciler.actuator.server --config /etc/compliance-agent/config.json "
            "--allow-user compliance-agent --idle-exit 600")
        agent = _boxed_service(
            services["compliance-agent"], f"{py} /etc/compliance-agent/agent.py {TARGET_FILE}",
            Type="simple", WatchdogSec="0", NotifyAccess="none", Restart="no")
        gens = _generations(actuator, agent)
        # The first activation installs and starts the actuator and the agent (idle: no target).
        paths = install_nixos_standin(box, gens, active="old")
        box.check(["systemctl", "start", "compliance-agent-actuator.socket"])
        h = Host(box, paths)
        assert h.settled() == "running"
        yield h


def test_switch_restarting_actuator_and_agent_is_kept_when_healthy(host: Host) -> None:
    before = {u: host.invocation(u) for u in (ACTUATOR, AGENT)}
    host.request("good")
    tx = host.wait_for("the transaction to finish", host.done_transaction)
    assert tx["result"]["ok"] is True, tx["result"]
    assert tx["rollback_activations"] == 0
    assert [r["action"] for r in tx["result"]["records"]] == [
        "NixosRebuild", "NixosRebuild", "HealthCheck"]
    assert tx["result"]["records"][-1]["detail"] == "running"
    # the switch really restarted both mid-transaction, and the new generation stayed
    after = {u: host.invocation(u) for u in (ACTUATOR, AGENT)}
    assert all(after[u] != before[u] for u in before), (before, after)
    assert host.out("readlink", "/run/current-system") == host.paths["good"]
    assert host.out("readlink", "/nix/var/nix/profiles/system") == "system-2-link"
    assert host.activations() == ["old", "good"]
    assert host.settled() == "running"
    # the transient switch unit was discarded once its status was journaled
    assert host.out("systemctl", "list-units", "--all", "--plain", "--no-legend",
                    "compliance-agent-switch-*") == ""
    # the restarted agent observes the target active: nothing left to ask
    assert host.wait_for("the agent to see the target", lambda: "AGENT in-sync" in
                         host.agent_lines())
    assert not any(line.startswith("AGENT result") for line in host.agent_lines())


def test_unhealthy_switch_restarting_both_is_rolled_back_once(host: Host) -> None:
    host.request("bad")
    # the rollback restarts both again; the agent, seeing the old system, asks
    # again and is handed the journaled outcome instead of a second switch
    line = host.wait_for("the agent to learn the outcome", lambda: next(
        (ln for ln in host.agent_lines() if ln.startswith("AGENT result")), None))
    assert line == "AGENT result reverted 1"
    tx = host.done_transaction()
    assert tx is not None and tx["delivered"] is True
    assert tx["result"]["outcome"] == "reverted" and tx["rollback_activations"] == 1
    health = [r for r in tx["result"]["records"] if r["action"] == "HealthCheck"]
    assert [h["result"] for h in health] == ["failed", "ok"]
    assert "broken-migration.service" in health[0]["detail"]
    assert host.activations() == ["old", "bad", "old"]  # rolled back exactly once
    assert host.out("readlink", "/run/current-system") == host.paths["old"]
    assert host.out("readlink", "/nix/var/nix/profiles/system") == "system-1-link"
    assert host.settled() == "running"
    assert host.out("systemctl", "list-units", "--all", "--plain", "--no-legend",
                    "compliance-agent-switch-*", "compliance-agent-rollback-*") == ""


@pytest.mark.parametrize(("generation", "outcome"), [("slow-good", None),
                                                     ("slow-bad", "reverted")])
def test_actuator_killed_mid_switch_resumes_and_finishes_once(
    host: Host, generation: str, outcome: str | None,
) -> None:
    before = host.invocation(ACTUATOR)
    host.request(generation)
    agent_before = host.invocation(AGENT)

    def switching() -> bool:
        units = host.out("systemctl", "list-units", "--plain", "--no-legend",
                         "--state=activating,active", "compliance-agent-switch-*")
        return "running" in units

    host.wait_for("the switch unit to run", switching)
    host.box.check(["systemctl", "kill", "--signal=SIGKILL", ACTUATOR])
    # systemd restarts it (Restart=on-failure); it resumes the journaled transaction
    tx = host.wait_for("the transaction to finish", host.done_transaction)
    assert host.invocation(ACTUATOR) != before
    assert host.invocation(AGENT) == agent_before  # this generation leaves the agent alone
    assert tx["result"]["outcome"] == outcome, tx["result"]
    log = host.out("journalctl", "--no-pager", "-o", "cat", "-u", ACTUATOR)
    assert "resuming rebuild transaction" in log
    assert log.count(f"rebuild transaction {tx['txid']} to") == 1  # finished once
    # The agent's request lost its connection; the client asked the restarted
    # actuator again and was handed this transaction's result, once.
    line = host.wait_for("the agent to learn the outcome", lambda: next(
        (ln for ln in host.agent_lines() if ln.startswith("AGENT result")), None))
    if outcome is None:
        assert tx["result"]["ok"] is True and tx["rollback_activations"] == 0
        assert host.activations() == ["old", generation]
        assert host.out("readlink", "/run/current-system") == host.paths[generation]
        assert line == "AGENT result success None"
    else:
        assert tx["rollback_activations"] == 1
        assert host.activations() == ["old", generation, "old"]
        assert host.out("readlink", "/run/current-system") == host.paths["old"]
        assert line == "AGENT result reverted 1"
    assert host.wait_for("the result to be marked delivered",
                         lambda: (host.journal() or {}).get("delivered"))
    assert host.settled() == "running"
