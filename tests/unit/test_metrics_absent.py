"""Unknown values are absent from the exposition, never a fake 0 or -1."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from reconciler.ops.metrics import AgentMetrics
from reconciler.service import new_agent
from specs.status import Condition, ConditionStatus, ConditionType, ResourceStatus
from tests.unit.conftest import make_config, write_baseline
from tests.unit.test_runtime import NoHost, RecordingActuator, ScriptedController

T = datetime(2026, 3, 1, tzinfo=UTC)


def samples(m: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = m.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def status(kind: str, ready: ConditionStatus, drifted: ConditionStatus) -> ResourceStatus:
    return ResourceStatus(kind=kind, conditions=[
        Condition(type=ConditionType.Ready, status=ready, reason="Test", last_transition_time=T),
        Condition(type=ConditionType.Drifted, status=drifted, reason="Test",
                  last_transition_time=T)])


def test_clock_offset_absent_until_a_time_source_is_known() -> None:
    m = AgentMetrics("test")
    assert not re.search(rb"^compliance_agent_clock_offset_seconds ", m.exposition(), re.M)
    m.ntp_offset.set(-0.25)
    assert samples(m)[("compliance_agent_clock_offset_seconds", ())] == -0.25
    m.ntp_offset.clear()
    assert ("compliance_agent_clock_offset_seconds", ()) not in samples(m)


def test_unknown_conditions_have_no_ready_sample_but_say_unknown() -> None:
    m = AgentMetrics("test")
    m.observe_status(status("backup", ConditionStatus.unknown, ConditionStatus.unknown))
    m.observe_status(status("firewall", ConditionStatus.true, ConditionStatus.false))
    s = samples(m)
    assert ("compliance_agent_resource_ready", (("kind", "backup"),)) not in s
    assert ("compliance_agent_resource_drifted", (("kind", "backup"),)) not in s
    assert s[("compliance_agent_resource_ready", (("kind", "firewall"),))] == 1
    assert s[("compliance_agent_resource_drifted", (("kind", "firewall"),))] == 0
    cond = "compliance_agent_resource_condition"
    assert s[(cond, (("kind", "backup"), ("status", "Unknown"), ("type", "Ready")))] == 1
    assert s[(cond, (("kind", "backup"), ("status", "True"), ("type", "Ready")))] == 0
    assert all(v >= 0 for (name, _), v in s.items() if name.startswith("compliance_agent_res"))
    # known -> unknown again: the stale 1 must not linger
    m.observe_status(status("firewall", ConditionStatus.unknown, ConditionStatus.unknown))
    assert ("compliance_agent_resource_ready", (("kind", "firewall"),)) not in samples(m)


def test_a_kind_that_leaves_the_baseline_leaves_the_metrics(tmp_path: Path) -> None:
    """Its Ready/Drifted/condition/fact series go with its status: a removed check
    must not keep reporting its last state forever."""
    world = {"state": "active"}
    write_baseline(tmp_path, {"services": {"units": [{"name": "a.service"}]}, "time": {}})
    agent = new_agent(make_config(tmp_path), host=NoHost(), actuator=RecordingActuator(world),
                      controllers={"time": ScriptedController(world),
                                   "services": ScriptedController(world)})
    agent.run_pass()
    agent.metrics.observe_facts("services", {"units": 1})
    kinds = {dict(labels).get("kind") for (_, labels) in samples(agent.metrics)}
    assert "services" in kinds
    write_baseline(tmp_path, {"time": {}})
    agent.run_pass()
    left = {(name, labels) for (name, labels) in samples(agent.metrics)
            if dict(labels).get("kind") == "services"
            and not name.endswith(("_total", "_created"))}  # counters are history
    assert left == set()
    agent.close()
