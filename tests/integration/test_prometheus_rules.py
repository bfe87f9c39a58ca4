from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness.require import require_tool

pytestmark = pytest.mark.integration
RULES = Path(__file__).resolve().parents[2] / "examples" / "prometheus" / "compliance-agent.rules.yml"


def test_shipped_alert_rules_pass_promtool() -> None:
    promtool = require_tool("promtool")
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 9 rules found" in out.stdout


def test_rules_only_reference_metrics_the_agent_exports() -> None:
    import re

    from reconciler.ops.metrics import AgentMetrics

    exported = AgentMetrics("test").exposition().decode()
    names = set(re.findall(r"^# TYPE (\S+)", exported, re.M))
    names |= {n + "_total" for n in names}
    used = set(re.findall(r"\b(compliance_agent_[a-z_]+)", RULES.read_text()))
    assert used <= names, f"rules use unknown metrics: {used - names}"
