"""What the built wheel installs besides code: the alert rules and the dashboard
under share/compliance-agent/, and the HIPAA -> NIST SP 800-53 crosswalk the
OSCAL report reads at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_installs_rules_dashboard_and_crosswalk(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("compliance_agent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".data"))
    assert f"{data}/data/share/compliance-agent/prometheus/compliance-agent.rules.yml" in names
    assert f"{data}/data/share/compliance-agent/grafana/compliance-agent-dashboard.json" in names
    assert "reconciler/evidence/data/hipaa-sp800-53r5.json" in names
    rules = zipfile.ZipFile(wheel).read(
        f"{data}/data/share/compliance-agent/prometheus/compliance-agent.rules.yml")
    assert rules == (REPO / "examples/prometheus/compliance-agent.rules.yml").read_bytes()
