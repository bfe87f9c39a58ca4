from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.cli.main import main
from tests.unit.conftest import TRUSTED_KEY
from tests.unit.test_runtime import ScriptedController, make_agent


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "siteId": "clinic-1", "hostId": "host-1", "resellerId": "msp-1",
        "baselinePath": str(tmp_path / "baseline.json"),
        "clientCertFile": "/c", "clientKeyFile": "/k", "signingKeyFile": "/s",
        "caCertFile": "/ca", "mcpPublicKeys": [TRUSTED_KEY],
        "stateDirectory": str(tmp_path / "state"), "statusSocket": None,
    }))
    return path


def test_status_table_and_json_while_writer_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = {"state": "masked"}
    agent, _ = make_agent(tmp_path, {"services": ScriptedController(world),
                                     "firewall": ScriptedController({"state": "active"})}, world)
    agent.run_pass()
    cfg = write_config(tmp_path)
    # the writer (daemon) still holds the database open: reads must work read-only
    assert main(["status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "READY", "DRIFTED", "REASON", "LAST", "TRANSITION",
                                "LAST", "PASS", "OUTCOME"]
    services = next(line for line in lines if line.startswith("services"))
    assert services.split()[:4] == ["services", "False", "True", "UnitFailed"]
    firewall = next(line for line in lines if line.startswith("firewall"))
    assert firewall.split()[:4] == ["firewall", "True", "False", "InSync"]
    assert "HOST Failed" in out  # alert-only drift = stalled
    assert "evidence: 0 queued, 0 dead letter(s)" in out

    assert main(["status", "-o", "json", "--config", str(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    svc = next(r for r in doc["resources"] if r["kind"] == "services")
    assert {c["type"] for c in svc["conditions"]} == {"Ready", "Drifted", "Reconciling", "Stalled"}
    assert all({"reason", "message", "last_transition_time", "observed_generation"} <= set(c)
               for c in svc["conditions"])
    agent.close()


def test_describe_shows_history_and_observation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = {"state": "failed"}
    agent, _ = make_agent(tmp_path, {"services": ScriptedController(world),
                                     "firewall": ScriptedController({"state": "active"})}, world)
    agent.run_pass()
    agent.close()
    cfg = write_config(tmp_path)
    assert main(["describe", "services", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "Conditions:" in out and "Reconciled" in out
    assert "RestartUnit: systemctl restart a.service -> ok" in out
    assert '"state": "active"' in out
    assert main(["describe", "nope", "--config", str(cfg)]) == 2


def test_status_without_state_db_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    assert main(["status", "--config", str(cfg)]) == 2
    assert "no state database yet" in capsys.readouterr().err
